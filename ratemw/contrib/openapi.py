"""FastAPI: document rate limits in the OpenAPI schema (``ratemw.openapi``, from here too).

Example::

    from ratemw.contrib.openapi import document_rate_limits

    document_rate_limits(app, limiter)
"""

from __future__ import annotations

from ratemw.openapi import document_rate_limits, install_openapi, limited_groups

__all__ = ["document_rate_limits", "install_openapi", "limited_groups"]
