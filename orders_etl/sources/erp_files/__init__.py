"""ERP flat-file exports (CSV and friends), described by a dialect file, read as orders.

``ErpFileReader(path, dialect).fetch(start, end, log)`` streams raw records out of a file
or a folder of files; :func:`normalize` maps them to orders (``OrderRow`` from the fast path,
``fast.py``, for ordinary rows; ``OrderRecord`` otherwise) or ``Reject``.
"""

from orders_etl.sources.erp_files.dialect import Dialect, DialectError, load_dialect
from orders_etl.sources.erp_files.mapping import normalize
from orders_etl.sources.erp_files.reader import ErpFileReader

__all__ = ["Dialect", "DialectError", "ErpFileReader", "load_dialect", "normalize"]
