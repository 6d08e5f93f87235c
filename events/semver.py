"""Schema version strings "MAJOR.MINOR" (catalog §9): parsing and ordering."""

from __future__ import annotations

import re
from functools import lru_cache
from typing import NamedTuple

# No leading zeros, so every version has exactly one spelling ("1.01" is malformed, not 1.1).
# Always used with fullmatch: a bare "$" would also accept a trailing newline.
VERSION_PATTERN = r"^(0|[1-9][0-9]{0,8})\.(0|[1-9][0-9]{0,8})$"
_VERSION_RE = re.compile(VERSION_PATTERN)


class Version(NamedTuple):
    """A parsed schema version; tuples order like versions do."""

    major: int
    minor: int

    def __str__(self) -> str:
        return f"{self.major}.{self.minor}"


def parse_version(value: object) -> Version:
    """Parse "MAJOR.MINOR"; raise ValueError for anything else."""
    if not isinstance(value, str):
        raise ValueError("schema version must be a string 'MAJOR.MINOR'")
    match = _VERSION_RE.fullmatch(value)
    if match is None:
        raise ValueError("schema version must be 'MAJOR.MINOR' with decimal numbers, e.g. '1.0'")
    return Version(int(match.group(1)), int(match.group(2)))


def try_parse_version(value: object) -> Version | None:
    """Like parse_version, but None instead of an exception (for hot paths)."""
    if not isinstance(value, str):
        return None
    return _try_parse(value)


@lru_cache(maxsize=256)  # every event carries one of a handful of versions
def _try_parse(value: str) -> Version | None:
    match = _VERSION_RE.fullmatch(value)
    if match is None:
        return None
    return Version(int(match.group(1)), int(match.group(2)))


def major_pattern(major: int) -> str:
    """Regex of every version string within one major, e.g. ``^1\\.(0|[1-9][0-9]{0,8})$``."""
    return rf"^{major}\.(0|[1-9][0-9]{{0,8}})$"
