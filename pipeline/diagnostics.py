"""SIGUSR2 dumps every thread's stack and every asyncio task's await chain to stderr.

For a worker that is alive but not progressing (a stuck rebalance, seek or flush): ``kill
-USR2 <pid>`` prints, for the main loop and the consumer thread's loop, each pending task with
the coroutine chain it waits in (``cr_await`` walked down to the innermost frame), which
``mode``'s own SIGUSR1 dump does not show for the consumer thread. ``pipeline.app.run_worker``
routes SIGUSR2 here instead of ``mode``'s pdb (useless in a detached worker). Only code
locations and future states are printed, never local variables or results, so no payload value
can reach the log.
"""

from __future__ import annotations

import asyncio
import sys
import threading
import traceback
from collections.abc import Iterator
from types import CoroutineType, FrameType, GeneratorType
from typing import IO, Any

__all__ = ["dump"]


def _chain(awaitable: Any) -> Iterator[str]:
    """``file:line in function`` for each coroutine/generator down an await chain."""
    seen = 0
    while awaitable is not None and seen < 64:
        seen += 1
        frame: FrameType | None = getattr(awaitable, "cr_frame", None) or getattr(
            awaitable, "gi_frame", None
        )
        if frame is not None:
            code = frame.f_code
            yield f"{code.co_filename}:{frame.f_lineno} in {code.co_name}"
        elif isinstance(awaitable, asyncio.Future):
            # never its repr: a finished future's shows its result (payload values)
            state = "cancelled" if awaitable.cancelled() else "done" if awaitable.done() else ""
            yield f"<{type(awaitable).__name__} {state or 'pending'}>"
            return
        else:
            yield f"<{type(awaitable).__name__}>"
        if isinstance(awaitable, CoroutineType):
            awaitable = awaitable.cr_await
        elif isinstance(awaitable, GeneratorType):
            awaitable = awaitable.gi_yieldfrom
        else:
            awaitable = getattr(awaitable, "cr_await", None) or getattr(awaitable, "ag_await", None)


def _loops(app: Any) -> list[tuple[str, asyncio.AbstractEventLoop]]:
    loops: list[tuple[str, asyncio.AbstractEventLoop]] = []
    try:
        loops.append(("main", asyncio.get_running_loop()))
    except RuntimeError:
        pass
    for name in ("consumer", "producer"):
        # the private attributes: Faust's properties would create a missing consumer/producer
        part = getattr(app, f"_{name}", None)
        thread = getattr(part, "_thread", None)
        loop = getattr(thread, "thread_loop", None)
        if loop is not None:
            loops.append((f"{name} thread", loop))
    return loops


def dump(app: Any, file: IO[str] | None = None) -> None:
    """Print thread stacks and each loop's pending tasks with their await chains."""
    out = file or sys.stderr
    names = {t.ident: t.name for t in threading.enumerate()}
    print("=== wo diagnostics: threads ===", file=out)
    for ident, frame in sys._current_frames().items():
        print(f"--- thread {names.get(ident, ident)}", file=out)
        traceback.print_stack(frame, file=out)
    for name, loop in _loops(app):
        tasks = asyncio.all_tasks(loop)
        print(f"=== wo diagnostics: {name} loop, {len(tasks)} tasks ===", file=out)
        for task in sorted(tasks, key=lambda t: t.get_name()):
            print(f"--- {task.get_name()}", file=out)
            for line in _chain(task.get_coro()):
                print(f"    {line}", file=out)
    print("=== wo diagnostics: end ===", file=out, flush=True)
