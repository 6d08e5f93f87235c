"""pipeline.diagnostics: the task dump names where each task waits, and only code locations."""

from __future__ import annotations

import asyncio
import io
from types import SimpleNamespace

from pipeline import diagnostics


async def _parked(event: asyncio.Event, secret: str) -> None:
    payload = {"patientName": secret}  # a local holding a value: must never be printed
    await _deeper(event, payload)


async def _deeper(event: asyncio.Event, payload: dict[str, str]) -> None:
    done: asyncio.Future[dict[str, str]] = asyncio.get_running_loop().create_future()
    done.set_result(payload)  # a finished future's repr shows its result
    await asyncio.wait([asyncio.ensure_future(event.wait()), done])


async def test_the_dump_walks_each_task_down_to_where_it_waits() -> None:
    event = asyncio.Event()
    secret = "patient-name-do-not-log"
    task = asyncio.create_task(_parked(event, secret), name=f"parked-{len(secret)}")
    await asyncio.sleep(0)
    out = io.StringIO()
    diagnostics.dump(SimpleNamespace(), out)
    text = out.getvalue()
    event.set()
    await task
    section = text.split("--- parked-23", 1)[1].split("---", 1)[0]
    assert "in _parked" in section and "in _deeper" in section and "in _wait" in section
    assert section.index("in _parked") < section.index("in _deeper")
    assert secret not in text  # locations only, never locals
    assert text.rstrip().endswith("=== wo diagnostics: end ===")


def test_the_worker_routes_sigusr2_to_the_dump(monkeypatch) -> None:
    from pipeline import app as app_module

    seen: list[object] = []
    monkeypatch.setattr(diagnostics, "dump", seen.append)
    worker = app_module._Worker.__new__(app_module._Worker)  # only the handler is exercised
    worker.app = SimpleNamespace(name="wo")
    worker._on_sigusr2()
    assert seen == [worker.app]
