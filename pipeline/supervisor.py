"""Supervision of `run`'s children: each in its own process group, stopped in order, none left."""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click


@dataclass
class Child:
    """A supervised child process leading its own process group."""

    name: str
    proc: subprocess.Popen[bytes]
    log_path: Path | None


def spawn(name: str, argv: list[str], env: dict[str, str], log_path: Path | None) -> Child:
    """Start a child in its own session so a terminal's Ctrl-C reaches only the supervisor,
    which then stops children in order (simulator, worker, servers)."""
    stdout: Any = None
    if log_path is not None:
        log_path.parent.mkdir(parents=True, exist_ok=True)
        stdout = log_path.open("ab")
    try:
        proc = subprocess.Popen(
            argv,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=stdout,
            stderr=subprocess.STDOUT if stdout is not None else None,
            start_new_session=True,
        )
    finally:
        if stdout is not None:
            stdout.close()  # the child holds its own descriptor
    return Child(name, proc, log_path)


def _signal_group(pgid: int, sig: signal.Signals) -> bool:
    """Send `sig` to a process group; False if the group no longer exists."""
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        return False
    return True


def _group_alive(pgid: int) -> bool:
    return _signal_group(pgid, 0)  # type: ignore[arg-type]


def stop_child(child: Child, timeout: float, hurry: threading.Event | None = None) -> int:
    """SIGTERM the child's process group, SIGKILL it after `timeout` (or as soon as `hurry` is
    set: a second Ctrl-C); returns the exit code."""
    pgid = child.proc.pid
    if child.proc.poll() is None:
        _signal_group(pgid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while child.proc.poll() is None and time.monotonic() < deadline:
            if hurry is not None and hurry.is_set():
                break
            time.sleep(0.05)
        if child.proc.poll() is None:
            click.echo(f"{child.name}: still running after SIGTERM, killing", err=True)
            _signal_group(pgid, signal.SIGKILL)
        child.proc.wait()
    # The leader may be gone while its own children linger in the group: sweep them too.
    if _group_alive(pgid):
        _signal_group(pgid, signal.SIGTERM)
        deadline = time.monotonic() + min(timeout, 5.0)
        while _group_alive(pgid) and time.monotonic() < deadline:
            time.sleep(0.1)
        _signal_group(pgid, signal.SIGKILL)
    return child.proc.returncode


class StopFlag:
    """Set by SIGINT/SIGTERM; the supervisor polls it instead of dying mid-cleanup.

    A second signal sets `hurry`: children still stopping are killed at once.
    """

    def __init__(self) -> None:
        self.event = threading.Event()
        self.hurry = threading.Event()
        self.signame: str | None = None

    def install(self) -> None:
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, self._handle)

    def _handle(self, signum: int, _frame: Any) -> None:
        if self.event.is_set():
            self.hurry.set()
            return
        self.signame = signal.Signals(signum).name
        self.event.set()


def stop_all(children: list[Child], timeout: float, hurry: threading.Event) -> None:
    for child in reversed(children):
        code = stop_child(child, timeout, hurry)
        click.echo(f"{child.name} stopped (exit {code})")


def supervise(children: list[Child], stop: StopFlag, duration: float | None) -> int:
    """Wait for a signal, the duration, or a child dying; returns the run's exit code."""
    deadline = None if duration is None else time.monotonic() + duration
    while True:
        timeout = 0.5 if deadline is None else max(0.0, min(0.5, deadline - time.monotonic()))
        if stop.event.wait(timeout):
            click.echo(f"{stop.signame}: stopping ...")
            return 0  # a requested stop is a clean stop
        if deadline is not None and time.monotonic() >= deadline:
            click.echo(f"duration of {duration:g} s reached: stopping ...")
            return 0
        for child in children:
            code = child.proc.poll()
            if code is not None:
                where = f" (see {child.log_path})" if child.log_path else ""
                click.echo(f"{child.name} exited unexpectedly with code {code}{where}", err=True)
                return 1
