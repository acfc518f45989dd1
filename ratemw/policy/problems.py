"""The bodies and headers ratemw answers with itself (429, 503), shared by both adapters."""

from __future__ import annotations

from ratemw.policy.decision import encode_body
from ratemw.errors import RateLimitExceeded

UNAVAILABLE_TYPE = "https://iana.org/assignments/http-problem-types#temporary-reduced-capacity"
UNAVAILABLE_RETRY_AFTER = 1


def exceeded_response(exc: RateLimitExceeded) -> tuple[int, list[tuple[str, str]], bytes]:
    body = encode_body(exc.body)
    return 429, [*exc.headers, ("Content-Length", str(len(body)))], body


def unavailable_response(path: str) -> tuple[int, list[tuple[str, str]], bytes]:
    body = encode_body(
        {
            "type": UNAVAILABLE_TYPE,
            "title": "Service capacity is temporarily reduced",
            "status": 503,
            "detail": "Rate limits cannot be checked right now; try again shortly.",
            "instance": path,
            "retry_after": UNAVAILABLE_RETRY_AFTER,
        }
    )
    headers = [
        ("Content-Type", "application/problem+json"),
        ("Cache-Control", "no-store"),
        ("Retry-After", str(UNAVAILABLE_RETRY_AFTER)),
        ("Content-Length", str(len(body))),
    ]
    return 503, headers, body


_RAW_NAMES: dict[str, bytes] = {}


def _raw_name(name: str) -> bytes:
    raw = _RAW_NAMES.get(name)
    if raw is None:
        raw = _RAW_NAMES[name] = name.lower().encode("latin-1")
    return raw


def encode_headers(headers: list[tuple[str, str]]) -> list[tuple[bytes, bytes]]:
    """ASGI header pairs: lower-case names (a handful, encoded once) and latin-1 values."""
    names = _RAW_NAMES
    return [
        (names.get(name) or _raw_name(name), value.encode("latin-1")) for name, value in headers
    ]
