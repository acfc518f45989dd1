"""Lock out a username after 5 wrong passwords: run it with
``uvicorn examples.failed_logins:app``.

The middleware cannot count this: the username is known only once the body is read, and only
failures count. So the endpoint counts them with ``Limiter.hit`` after the password check, and
refuses a username already locked out with ``peek``, which counts nothing. Right passwords
are never counted against the lockout; the lockout is per username, not per address (an
attacker spreading guesses over addresses is still stopped, and the real user behind a
shared address is not locked out by someone else's typos). The route's own limit, per
address, slows down guessing across many usernames.

Guesses sent at the same moment all pass the ``peek`` before any of their failures is
counted, so a lockout alone does not bound a burst. Every attempt is also counted, before the
password check, against a generous limit per username (``ATTEMPTS``): however many guesses
arrive at once, at most that many are checked.

Try it::

    curl -X POST localhost:8000/login -d '{"username": "ada", "password": "nope"}'   # 5 times
    curl -X POST localhost:8000/login -d '{"username": "ada", "password": "lovelace"}'  # 429
"""

from __future__ import annotations

import hmac
import json
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from ratemw import Limiter, RateLimitMiddleware, keys

limiter = Limiter(storage="memory://", key=keys.client_ip())

#: Failed logins a username may have before it is locked out, and for how long.
LOCKOUT = "5/15 minutes"
FAILURES = "login-failures"
#: Attempts of any outcome per username: bounds a burst of concurrent guesses.
ATTEMPTS = "20/15 minutes"

USERS = {"ada": "lovelace", "grace": "hopper"}  # a real app checks a password hash


def _credentials(body: bytes) -> tuple[str, str]:
    try:
        data: Any = json.loads(body)
    except ValueError:
        data = None
    if not isinstance(data, dict):
        return "", ""
    username, password = data.get("username"), data.get("password")
    return (
        username if isinstance(username, str) else "",
        password if isinstance(password, str) else "",
    )


def _password_ok(username: str, password: str) -> bool:
    expected = USERS.get(username, "")
    return bool(expected) and hmac.compare_digest(expected, password)


@limiter.limit("100/hour")  # per address, across usernames
async def login(request: Request) -> JSONResponse:
    username, password = _credentials(await request.body())
    # Locked out? Refuse before checking the password (counting nothing): the standard 429.
    await limiter.apeek(username, LOCKOUT, scope=FAILURES, request=request, raise_exceeded=True)
    # Every attempt, counted before the check: at most 20 are checked, however many arrive.
    await limiter.ahit(
        username, ATTEMPTS, scope="login-attempts", request=request, raise_exceeded=True
    )
    if not _password_ok(username, password):
        # Count the failure; the fifth locks the username out.
        await limiter.ahit(username, LOCKOUT, scope=FAILURES, request=request)
        return JSONResponse({"error": "wrong username or password"}, status_code=401)
    return JSONResponse({"welcome": username})


async def health(request: Request) -> JSONResponse:
    return JSONResponse({"status": "ok"})


app = Starlette(routes=[Route("/login", login, methods=["POST"]), Route("/health", health)])
app.add_middleware(RateLimitMiddleware, limiter=limiter)
