"""The client's model of Shopify's cost bucket, so it waits *before* it would be throttled.

Shopify limits the GraphQL Admin API with a leaky bucket of points per app and shop: each
query needs ``requestedQueryCost`` points available when it starts, is charged its
``actualQueryCost`` when done, and the bucket refills at ``restoreRate`` points per second
up to ``maximumAvailable``. Every response reports the bucket in
``extensions.cost.throttleStatus``; this class remembers the last report and the time it
arrived, and from them tells how long to wait before the next query can run.

The estimate is deliberately conservative: the server took its snapshot before the response
travelled to us, so the real bucket is slightly fuller than we assume.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

# Waiting a hair longer than the arithmetic says absorbs rounding in the server's figures.
SAFETY_S = 0.005


@dataclass
class BucketState:
    maximum_available: float
    currently_available: float
    restore_rate: float
    observed_at: float


class CostBucket:
    def __init__(self) -> None:
        self.state: BucketState | None = None
        # Requested cost last reported per query (and page size): the best guess of what
        # the next run of the same query will ask for.
        self._requested: dict[object, float] = {}

    def observe(self, cost: Any, now: float, query_key: object) -> None:
        """Remember ``extensions.cost`` of a response received at ``now`` (ignores junk)."""
        if not isinstance(cost, dict):
            return
        requested = _number(cost.get("requestedQueryCost"))
        if requested is not None:
            self._requested[query_key] = requested
        status = cost.get("throttleStatus")
        if not isinstance(status, dict):
            return
        maximum = _number(status.get("maximumAvailable"))
        available = _number(status.get("currentlyAvailable"))
        rate = _number(status.get("restoreRate"))
        if maximum is None or available is None or rate is None or rate <= 0:
            return
        self.state = BucketState(maximum, available, rate, now)

    def available(self, now: float) -> float | None:
        if self.state is None:
            return None
        s = self.state
        return min(s.maximum_available, s.currently_available + (now - s.observed_at) * s.restore_rate)

    def wait_before(self, query_key: object, now: float) -> float:
        """Seconds to wait so that the query's requested cost is available when it arrives."""
        requested = self._requested.get(query_key)
        if requested is None or self.state is None:
            return 0.0  # nothing known yet: the first response will tell
        requested = min(requested, self.state.maximum_available)
        available = self.available(now)
        assert available is not None
        if available >= requested:
            return 0.0
        return (requested - available) / self.state.restore_rate + SAFETY_S

    def wait_after_throttled(self, cost: Any, now: float, query_key: object) -> float | None:
        """After a THROTTLED answer: how long until the bucket holds the requested cost.

        None when the answer carried no bucket figures (the caller then backs off).
        """
        self.observe(cost, now, query_key)
        requested = self._requested.get(query_key)
        if self.state is None:
            return None
        if requested is None:
            # Estuary's rule of thumb: a full refill always suffices.
            return self.state.maximum_available / self.state.restore_rate
        return max(self.wait_before(query_key, now), SAFETY_S)


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or value is None:
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        return None
