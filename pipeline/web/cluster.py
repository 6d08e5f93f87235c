"""Which worker answers: key lookups go to the key's owner, tenant-wide reads to every worker.

A table key ``{tenant}:{id}`` lives in partition ``murmur2(key) % partitions`` of every topic
(``pipeline.topics.partition_of``: the raw key string, as the runner writes it). Faust's own
``table_route`` hashes the *JSON-serialised* key and would pick the wrong worker, so the owner
is found here: the partition, then the worker the group assignment gives it to (the
assignor's changelog distribution, shared with every member). A routed request carries
:data:`ROUTED`; a worker receiving one answers from its own store or says 503, never routes
again (no loops while a rebalance settles).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import aiohttp
import faust
import orjson
from yarl import URL

from pipeline.web.errors import unavailable
from pipeline.web.store import TableReader

ROUTED = "X-WO-Routed"
TIMEOUT = aiohttp.ClientTimeout(total=10)


@dataclass(frozen=True, slots=True)
class Reply:
    """A response to send as is: status and JSON bytes."""

    status: int
    body: bytes


class Cluster:
    """The group's view of who owns which partition, and HTTP to the other workers."""

    def __init__(self, app: faust.App, reader: TableReader) -> None:
        self.app = app
        self.reader = reader

    def me(self) -> str:
        """This worker's URL as the other members know it."""
        return str(self.app.conf.canonical_url)

    def busy(self) -> str | None:
        """Why tables cannot be read right now (rebalance, recovery), or None."""
        app: Any = self.app
        if getattr(app, "rebalancing", False):
            return "the worker group is rebalancing"
        if getattr(app, "in_recovery", False):
            return "tables are being recovered"
        if not app.tables.recovery.completed.is_set():
            return "tables are not recovered yet"
        return None

    def check_ready(self) -> None:
        """503 while :meth:`busy`."""
        reason = self.busy()
        if reason is not None:
            raise unavailable(reason)

    def members(self, table: str) -> dict[str, set[int]]:
        """Worker URL -> partitions of ``table`` it owns actively (the last assignment)."""
        topic = self.reader.changelog(table)
        out: dict[str, set[int]] = {}
        for url, topics in self.app.assignor.changelog_distribution.items():
            parts = set(topics.get(topic, ()))
            if parts:
                out[str(url)] = parts
        return out

    def owner(self, table: str, key: str) -> str | None:
        """None if ``key`` is in an active partition here, else the owner's URL (503 if none)."""
        partition = self.reader.partition_of(table, key)
        if partition in self.reader.active_partitions(table):
            return None
        for url, parts in self.members(table).items():
            if partition in parts and url != self.me():
                return url
        raise unavailable("no worker owns the partition of this key yet")

    def missing(self, table: str, covered: set[int]) -> bool:
        """True if ``covered`` lacks a partition of ``table``."""
        return covered != set(range(self.reader.partitions(table)))

    async def get(self, url: str, path_qs: str, authorization: str) -> Reply:
        """GET ``path_qs`` from the worker at ``url`` as a routed request (503 if unreachable)."""
        target = URL(url.rstrip("/") + path_qs, encoded=True)
        headers = {"Authorization": authorization, ROUTED: "1", "Accept": "application/json"}
        try:
            async with self.app.http_client.get(target, headers=headers,
                                                timeout=TIMEOUT) as response:  # fmt: skip
                return Reply(response.status, await response.read())
        except (TimeoutError, aiohttp.ClientError) as exc:
            raise unavailable("another worker did not answer") from exc

    async def get_json(self, url: str, path_qs: str, authorization: str) -> Any:
        """:meth:`get`, decoded; any non-200 answer becomes 503 (partial data is never served)."""
        reply = await self.get(url, path_qs, authorization)
        if reply.status != 200:
            raise unavailable("another worker could not answer")
        return orjson.loads(reply.body)
