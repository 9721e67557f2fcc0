"""Builders of valid normalized orders for tests (one place for sensible defaults)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from orders_etl.model import OrderRecord, parse_order

BASE_TIME = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


def order(external_id: str | int, **fields: Any) -> OrderRecord:
    data: dict[str, Any] = {
        "external_id": str(external_id),
        "number": f"#{external_id}",
        "created_at": BASE_TIME,
        "currency": "USD",
        "total_amount": "100.00",
        "tax_amount": "8.00",
        "payment_status": "captured",
        "status": "processing",
        "updated_at": BASE_TIME,
    }
    data.update(fields)
    return parse_order(data)
