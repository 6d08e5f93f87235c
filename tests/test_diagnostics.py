"""pipeline.diagnostics: the task dump names where each task waits, and only code locations."""

from __future__ import annotations

import asyncio
import io
import os
import signal
from types import SimpleNamespace

from pipeline import diagnostics


async def _parked(event: asyncio.Event) -> None:
    await _deeper(event)


async def _deeper(event: asyncio.Event) -> None:
    await event.wait()


async def test_the_dump_walks_each_task_down_to_where_it_waits() -> None:
    event = asyncio.Event()
    secret = "patient-name-do-not-log"
    task = asyncio.create_task(_parked(event), name=f"parked-{len(secret)}")
    await asyncio.sleep(0)
    out = io.StringIO()
    diagnostics.dump(SimpleNamespace(), out)
    text = out.getvalue()
    event.set()
    await task
    section = text.split("--- parked-23", 1)[1].split("---", 1)[0]
    assert "in _parked" in section and "in _deeper" in section and "in wait" in section
    assert section.index("in _parked") < section.index("in _deeper")
    assert secret not in text  # locations only, never locals
    assert text.rstrip().endswith("=== wo diagnostics: end ===")


async def test_sigusr2_triggers_the_dump(capsys) -> None:
    diagnostics.install(SimpleNamespace())
    loop = asyncio.get_running_loop()
    try:
        os.kill(os.getpid(), signal.SIGUSR2)
        for _ in range(100):  # the handler runs on a later loop iteration
            await asyncio.sleep(0)
            if "wo diagnostics: end" in capsys.readouterr().err:
                break
        else:
            raise AssertionError("no dump after SIGUSR2")
    finally:
        loop.remove_signal_handler(signal.SIGUSR2)
