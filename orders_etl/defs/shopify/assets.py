"""Shopify: land raw order payloads per day, then normalize them into ``source_orders``."""

import dagster as dg

from orders_etl.defs import sync
from orders_etl.defs.partitions import daily_partitions
from orders_etl.defs.shopify.resources import ShopifySource
from orders_etl.defs.store.resources import StoreResource
from orders_etl.model import Source

GROUP = "shopify"
POOL = "shopify_api"


@dg.asset(
    key=["shopify", "raw_orders"],
    group_name=GROUP,
    kinds={"shopify", "sqlalchemy"},
    owners=sync.OWNERS,
    partitions_def=daily_partitions,
    backfill_policy=dg.BackfillPolicy.single_run(),
    pool=POOL,
    retry_policy=sync.TRANSIENT_RETRY,
)
def shopify_raw_orders(
    context: dg.AssetExecutionContext, shopify: ShopifySource, store: StoreResource
) -> dg.MaterializeResult:
    """Shopify orders updated in the partitions' days (plus an overlap on both sides), landed
    as received in `raw_orders`, so any day can be normalized again without calling Shopify.

    Reads the Admin GraphQL API, or a bulk-operation JSONL file when no shop URL is set.
    """
    window = sync.sync_window(context, shopify.overlap_minutes)
    outcome = sync.land(context, store.store, Source.SHOPIFY, shopify.reader, window)
    return sync.raw_result(store.store, Source.SHOPIFY, window, outcome, shopify.source_label)


@dg.asset(
    key=["shopify", "source_orders"],
    deps=[shopify_raw_orders],
    group_name=GROUP,
    kinds={"shopify", "sqlalchemy"},
    owners=sync.OWNERS,
    partitions_def=daily_partitions,
    backfill_policy=dg.BackfillPolicy.single_run(),
    # It asks Shopify which orders were deleted, so it shares the API's pool.
    pool=POOL,
    retry_policy=sync.TRANSIENT_RETRY,
)
def shopify_source_orders(
    context: dg.AssetExecutionContext,
    config: sync.NormalizeConfig,
    shopify: ShopifySource,
    store: StoreResource,
) -> dg.MaterializeResult:
    """Shopify's normalized orders (`source_orders`, source `shopify`): payloads landed and
    not normalized yet (all of the window's with `renormalize`) mapped onto the canonical
    Order, newest version per order wins; test orders skipped and counted,
    records that cannot be mapped quarantined in `order_rejects` with the reason, orders
    deleted in Shopify kept with `deleted_at`. The golden `orders` rows are merged in the
    same transaction. Moves Shopify's high-water mark once all of it is committed.
    """
    window = sync.sync_window(context, shopify.overlap_minutes)
    db = store.store
    outcome = sync.normalize_window(
        context, db, Source.SHOPIFY, window, shopify.normalize, renormalize=config.renormalize
    )
    outcome.deleted = sync.mark_deleted(context, db, Source.SHOPIFY, shopify.reader, window)
    mark = sync.advance_cursor(context, db, Source.SHOPIFY, window)
    return sync.normalized_result(db, Source.SHOPIFY, window, outcome, mark)
