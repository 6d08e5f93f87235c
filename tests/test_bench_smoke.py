"""Smoke run of bench/bridge_throughput.py with a handful of messages (not a timed test)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[1]
RATIO_LINE = re.compile(
    r"^ratio bridge/slower_raw = \d+\.\d\d \(target >= 0\.70\) (PASS|FAIL)$", re.MULTILINE
)


def test_bridge_throughput_bench_prints_the_ratio() -> None:
    proc = subprocess.run(
        [
            sys.executable, str(ROOT / "bench" / "bridge_throughput.py"),
            "--messages", "300", "--repeat", "1", "--warmup", "50", "--sim",
        ],
        cwd=ROOT, capture_output=True, text=True, timeout=180,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    assert RATIO_LINE.search(out), out
    for row in ("raw_nats_pull_ack", "raw_kafka_produce", "bridge", "bridge_sim"):
        # run 1, median, best
        assert re.search(rf"^{row}(\s+[\d,]+){{3}}$", out, re.MULTILINE), (row, out)
    for label in ("command: ", "machine: ", "versions: ", "sizes: ", "contention: "):
        assert label in out, (label, out)
