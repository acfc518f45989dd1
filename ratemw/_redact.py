"""What may be shown of a storage URI and of a storage's error, in messages and logs."""

from __future__ import annotations

import re

__all__ = ["describe_error", "redact_uri"]

# Query options that carry secrets (``password``, ``sentinel_password``, ...).
_SECRET_OPTION = re.compile(r"([?&;][^=&;#]*password=)[^&;#]*", re.IGNORECASE)


def redact_uri(uri: str) -> str:
    """``uri`` with every password replaced by ``***``: in the user info and the query.

    >>> redact_uri("redis://user:s3cret@host:6379/0?password=x&socket_timeout=1")
    'redis://user:***@host:6379/0?password=***&socket_timeout=1'
    """
    scheme, sep, rest = uri.partition("://")
    if sep:
        userinfo, at, hosts = rest.rpartition("@")
        if at and ":" in userinfo:
            rest = f"{userinfo.split(':', 1)[0]}:***@{hosts}"
        uri = f"{scheme}{sep}{rest}"
    return _SECRET_OPTION.sub(r"\1***", uri)


def describe_error(error: BaseException) -> str:
    """``"TypeName: message"``: what went wrong, in words (some ``repr``s leave them out)."""
    text = str(error)
    return f"{type(error).__name__}: {text}" if text else type(error).__name__
