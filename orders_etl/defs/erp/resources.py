"""Where ERP orders come from: Business Central's API v2.0, or CSV export files.

Both resources offer ``reader()`` and ``normalize()``; the ERP's records refer to Shopify
orders by id or by name, so ``normalize`` takes a resolver of Shopify names (the store's).
The file-backed one is the default when no Business Central URL is configured. Source
packages are imported inside the methods so the Dagster layer loads without them.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator
from datetime import timedelta
from typing import TYPE_CHECKING, ClassVar, Literal

import dagster as dg

from orders_etl.model import Source
from orders_etl.sources.base import SourceError

if TYPE_CHECKING:
    from orders_etl.defs.sync import Reader
    from orders_etl.sources.base import NameResolver, Normalized
    from orders_etl.sources.erp_files import Dialect
    from orders_etl.store import LandedRecord


class ErpSource(dg.ConfigurableResource, ABC):
    """ERP orders: a reader of raw records and their mapping onto the canonical Order."""

    source: ClassVar[Source]

    overlap_minutes: int = 60

    @abstractmethod
    def reader(self) -> Reader: ...

    @abstractmethod
    def normalize(
        self, records: Iterable[LandedRecord], resolve_names: NameResolver
    ) -> Iterator[Normalized]: ...

    @property
    def source_label(self) -> str:
        """Where the orders come from, safe to show (no credential)."""
        return type(self).__name__


class BusinessCentralResource(ErpSource):
    """Microsoft Dynamics 365 Business Central API v2.0 (bearer token or OAuth client credentials)."""

    source: ClassVar[Source] = Source.BUSINESS_CENTRAL

    base_url: str
    company_id: str
    access_token: str | None = None
    tenant_id: str | None = None
    client_id: str | None = None
    client_secret: str | None = None
    token_url: str | None = None
    local_currency: str | None = None
    ref_field: str = "externalDocumentNumber"
    ref_kind: Literal["id", "name"] = "name"

    @property
    def source_label(self) -> str:
        return f"Business Central {self.base_url}"

    def reader(self) -> Reader:
        from orders_etl.sources.business_central import BusinessCentralReader

        # The asset widens the window by the configured overlap itself: no second overlap.
        return BusinessCentralReader(
            self.base_url,
            self.company_id,
            access_token=self.access_token,
            tenant_id=self.tenant_id,
            client_id=self.client_id,
            client_secret=self.client_secret,
            token_url=self.token_url,
            local_currency=self.local_currency,
            overlap=timedelta(0),
        )

    def normalize(self, records: Iterable[LandedRecord], resolve_names: NameResolver) -> Iterator[Normalized]:
        from orders_etl.sources.business_central import normalize

        return normalize(
            records, ref_field=self.ref_field, ref_kind=self.ref_kind, resolve_names=resolve_names
        )


class ErpFilesResource(ErpSource):
    """ERP CSV exports (a file or a folder of files) read with their dialect file."""

    source: ClassVar[Source] = Source.ERP_FILES

    path: str
    dialect_path: str

    @property
    def source_label(self) -> str:
        return f"ERP export {self.path}"

    def dialect(self) -> Dialect:
        """The export's dialect; a missing or invalid file fails as the source's error."""
        from orders_etl.sources.erp_files import DialectError, load_dialect

        try:
            return load_dialect(self.dialect_path)
        except DialectError as exc:
            raise SourceError(self.source.value, f"{exc} (set ERP_DIALECT_PATH)") from None

    def reader(self) -> Reader:
        from orders_etl.sources.erp_files import ErpFileReader

        return ErpFileReader(self.path, self.dialect())

    def normalize(self, records: Iterable[LandedRecord], resolve_names: NameResolver) -> Iterator[Normalized]:
        from orders_etl.sources.erp_files import normalize

        return normalize(records, dialect=self.dialect(), resolve_names=resolve_names)
