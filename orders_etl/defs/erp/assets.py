"""ERP: land raw records per day, then normalize them (resolving Shopify references)."""

import dagster as dg

from orders_etl.defs import sync
from orders_etl.defs.erp.resources import ErpSource
from orders_etl.defs.partitions import daily_partitions
from orders_etl.defs.shopify.assets import shopify_source_orders
from orders_etl.defs.store.resources import StoreResource

GROUP = "erp"
POOL = "erp_api"


@dg.asset(
    key=["erp", "raw_orders"],
    group_name=GROUP,
    kinds={"erp", "csv", "sqlalchemy"},
    owners=sync.OWNERS,
    partitions_def=daily_partitions,
    backfill_policy=dg.BackfillPolicy.single_run(),
    pool=POOL,
    retry_policy=sync.TRANSIENT_RETRY,
)
def erp_raw_orders(
    context: dg.AssetExecutionContext, erp: ErpSource, store: StoreResource
) -> dg.MaterializeResult:
    """ERP sales orders updated in the partitions' days (plus an overlap on both sides),
    landed as received in `raw_orders`.

    Reads Business Central's API v2.0 (orders, invoices, credit memos), or the CSV export
    files when no Business Central URL is set.
    """
    window = sync.sync_window(context, erp.overlap_minutes)
    outcome = sync.land(context, store.store, erp.source, erp.reader, window)
    return sync.raw_result(store.store, erp.source, window, outcome, erp.source_label)


@dg.asset(
    key=["erp", "source_orders"],
    # Shopify first: ERP records refer to Shopify orders by name, resolved from the store.
    deps=[erp_raw_orders, shopify_source_orders],
    group_name=GROUP,
    kinds={"erp", "sqlalchemy"},
    owners=sync.OWNERS,
    partitions_def=daily_partitions,
    backfill_policy=dg.BackfillPolicy.single_run(),
    retry_policy=sync.TRANSIENT_RETRY,
)
def erp_source_orders(
    context: dg.AssetExecutionContext, config: sync.NormalizeConfig, erp: ErpSource, store: StoreResource
) -> dg.MaterializeResult:
    """The ERP's normalized orders (`source_orders`, source `business_central` or `erp_files`):
    records landed and not normalized yet (all of the window's with `renormalize`), and those
    still keyed on their ERP number, each keyed on the Shopify order it refers to (or on its
    ERP number when it refers to none), newest version wins; records that cannot be mapped quarantined in
    `order_rejects`. The golden `orders` rows are merged in the same transaction. Moves the
    ERP's high-water mark once all of it is committed.
    """
    window = sync.sync_window(context, erp.overlap_minutes)
    db = store.store
    sync.queue_provisional(context, db, erp.source, window)
    outcome = sync.normalize_window(
        context,
        db,
        erp.source,
        window,
        lambda records: erp.normalize(records, db.shopify_ids_by_name),
        renormalize=config.renormalize,
    )
    mark = sync.advance_cursor(context, db, erp.source, window)
    return sync.normalized_result(db, erp.source, window, outcome, mark)
