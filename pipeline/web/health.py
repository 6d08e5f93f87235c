"""``/health`` (the process serves) and ``/ready`` (tables recovered, no rebalance running)."""

from __future__ import annotations

from typing import Any

from pipeline.web.cluster import Cluster


def health(app: Any) -> tuple[int, dict[str, Any]]:
    """200 while the worker runs; 503 once it crashed."""
    crashed = bool(getattr(app, "crashed", False))
    return (503 if crashed else 200), {"status": "crashed" if crashed else "ok"}


def ready(cluster: Cluster) -> tuple[int, dict[str, Any]]:
    """200 once Faust's table recovery completed and while no rebalance or recovery runs."""
    reason = cluster.busy()
    if reason is not None:
        return 503, {"ready": False, "reason": reason}
    return 200, {"ready": True}
