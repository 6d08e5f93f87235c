"""Web views of the worker: ``/wo/status/`` (progress, clock, counters) next to ``/metrics``."""

from __future__ import annotations

from typing import Any

import faust

from pipeline.agents.runner import Runner


def status(runner: Runner) -> dict[str, Any]:
    """What tests and operators poll: how far each source partition is processed.

    ``positions[topic][partition]`` is the next offset to process: the larger of the offset
    after the last record this process completed and the group's committed offset (a partition
    whose records were all committed before this process started shows its committed offset).
    ``inflight`` counts sends not yet acknowledged by the broker; ``first_done`` and
    ``last_done`` are the wall-clock times (Unix seconds) of the first and the latest record
    this process completed (None before the first).
    """
    positions: dict[str, dict[str, int]] = {}
    sources = set(runner.topics.sources())
    committed = getattr(runner.app.consumer, "_committed_offset", {}) or {}
    actives = runner.app.assignor.assigned_actives()
    for tp in actives:
        offset = committed.get(tp)
        if tp.topic in sources and offset is not None:
            positions.setdefault(tp.topic, {})[str(tp.partition)] = offset
    for (topic, partition), offset in runner.positions.items():
        known = positions.setdefault(topic, {}).get(str(partition), 0)
        positions[topic][str(partition)] = max(known, offset)
    return {
        "clock": runner.clock.mode,
        "assigned": sorted(tp.partition for tp in actives if tp.topic == runner.control_name),
        "positions": positions,
        "inflight": runner.inflight,
        "first_done": runner.first_done,
        "last_done": runner.last_done,
        "signals": dict(runner.signals),
    }


def register_views(app: faust.App, runner: Runner) -> None:
    @app.page("/wo/status/")
    async def status_view(web: Any, request: Any) -> Any:
        return web.json(status(runner))
