"""The API's error: an HTTP status, a short code and a reason safe to show (no secrets)."""

from __future__ import annotations


class ApiError(Exception):
    """An error response: ``status``, ``error`` (short code) and ``reason`` (human text)."""

    def __init__(self, status: int, error: str, reason: str) -> None:
        super().__init__(f"{status} {error}: {reason}")
        self.status = status
        self.error = error
        self.reason = reason

    def body(self) -> dict[str, str]:
        """The JSON body of the error response."""
        return {"error": self.error, "reason": self.reason}


def bad_request(reason: str) -> ApiError:
    """400 with ``reason``."""
    return ApiError(400, "bad_request", reason)


def not_found(reason: str) -> ApiError:
    """404 with ``reason``."""
    return ApiError(404, "not_found", reason)


def unavailable(reason: str) -> ApiError:
    """503 with ``reason`` (rebalancing, recovering, a worker unreachable): retry later."""
    return ApiError(503, "unavailable", reason)
