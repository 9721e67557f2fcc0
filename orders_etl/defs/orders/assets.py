"""The golden record: ``orders``, one row per order across every source."""

import dagster as dg
import sqlalchemy as sa

from orders_etl.defs import sync
from orders_etl.defs.erp.assets import erp_source_orders
from orders_etl.defs.shopify.assets import shopify_source_orders
from orders_etl.defs.store.resources import StoreResource
from orders_etl.store.engine import reading
from orders_etl.store.schema import orders as orders_table

GROUP = "orders"


@dg.asset(
    key="orders",
    deps=[shopify_source_orders, erp_source_orders],
    group_name=GROUP,
    kinds={"sqlalchemy", "table"},
    owners=sync.OWNERS,
    retry_policy=sync.TRANSIENT_RETRY,
)
def orders(context: dg.AssetExecutionContext, store: StoreResource) -> dg.MaterializeResult:
    """The golden record (`orders`): one row per `external_id`, merged from every source's
    `source_orders`. The source that owns the order wins each field; the others only fill
    what it leaves empty; `id` (`ord_` + ULID) is minted once and never changes; orders
    deleted at the source keep their row with `deleted_at` set.

    The merge happens inside each upsert transaction, so this asset writes nothing: it
    reports the whole table (counts, what this run changed) and carries the data checks.
    Not partitioned: it is one table over every day, refreshed once per sync of any range.
    """
    db = store.store
    since = sync.run_created_at(context)
    this_run = orders_table.c.synced_at >= since
    with reading(db.engine).connect() as conn:
        by_origin = dict(
            conn.execute(
                sa.select(orders_table.c.origin, sa.func.count()).group_by(orders_table.c.origin)
            ).all()
        )
        recent = conn.execute(
            sa.select(
                orders_table.c.id,
                orders_table.c.external_id,
                orders_table.c.number,
                orders_table.c.origin,
                orders_table.c.status,
                orders_table.c.payment_status,
                orders_table.c.total_amount,
                orders_table.c.currency,
                orders_table.c.updated_at,
            )
            .order_by(orders_table.c.synced_at.desc(), orders_table.c.updated_at.desc())
            .limit(sync.PREVIEW_ROWS)
        ).all()
    preview = [
        {
            "id": row.id,
            "external_id": row.external_id,
            "number": row.number,
            "origin": row.origin,
            "status": row.status,
            "payment_status": row.payment_status or "",
            "total": f"{row.total_amount} {row.currency}",
            "updated_at": row.updated_at.isoformat(),
        }
        for row in recent
    ]
    columns = ["id", "external_id", "number", "origin", "status", "payment_status", "total", "updated_at"]
    return dg.MaterializeResult(
        metadata={
            "dagster/row_count": sum(by_origin.values()),
            "written_by_this_run": sync.count_rows(db, orders_table, this_run),
            "deleted_at_source": sync.count_rows(db, orders_table, orders_table.c.deleted_at.is_not(None)),
            **{f"origin_{origin}": count for origin, count in sorted(by_origin.items())},
            "store": db.masked_url,
            "preview": dg.MetadataValue.md(sync.markdown_table(columns, preview)),
        }
    )
