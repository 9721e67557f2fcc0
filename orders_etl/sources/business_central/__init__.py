"""Microsoft Dynamics 365 Business Central (API v2.0): order bundles in, Orders out.

* :class:`BusinessCentralReader` (``reader.py``) fetches each changed order with its
  invoices and credit memos as one raw bundle;
* :func:`normalize` (``mapping.py``) maps bundles to :class:`~orders_etl.model.OrderRecord`
  or :class:`~orders_etl.model.Reject`, deriving payment status (``payment_status.py``);
* ``config.py`` builds both from the ``BC_*`` environment variables (DESIGN.md §6).
"""

from orders_etl.sources.business_central.config import reader_from_env, reference_from_env
from orders_etl.sources.business_central.mapping import normalize
from orders_etl.sources.business_central.reader import BusinessCentralReader

__all__ = ["BusinessCentralReader", "normalize", "reader_from_env", "reference_from_env"]
