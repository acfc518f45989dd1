"""What ratemw's two pipes share: one server's address and timeouts, the connection set-up
(TLS, ``AUTH``, ``SELECT``), and the protocol of one script call.

The blocking pipe (``pipe.py``, WSGI) and the pipelined one (``apipe.py``, ASGI) differ only in
how they wait. What goes on the wire, and what a reply must be to be a call's answer, is
decided here, once:

- a script call is ``EVALSHA`` (``resp.evalsha_command``) with a fresh token of the pipe's
  (``_tokens``) as its last argument (``resp.TOKEN_ARG``); a kept call packed earlier is sent
  as it is, with a fresh token (each pipe builds it in its ``script``, inline: every request
  does it);
- a reply answers the call when it is a list ending with the call's token, or an error reply
  (which carries none: ``matches``); anything else means the connection is out of step with
  its calls (``out_of_step``), and it is closed;
- ``NOSCRIPT`` (a restart, ``SCRIPT FLUSH``) is answered by loading the script with ``EVAL``,
  on the same connection and within the same deadline (``loading_call``), never by sending
  again a command that may have run.
"""

from __future__ import annotations

import ssl
from collections.abc import Sequence
from typing import Any

import redis
from redis.exceptions import AuthenticationError, ResponseError

from ratemw.storage.redis.resp import eval_command, new_tokens, pack, token_arg

__all__ = ["Endpoint", "check_handshake", "handshake", "matches", "tls_context", "where"]


def tls_context(options: dict[str, Any]) -> ssl.SSLContext:
    """An SSL context from the storage's ``ssl_*`` options (redis-py's defaults)."""
    context = ssl.create_default_context()
    cert_reqs = {"none": ssl.CERT_NONE, "optional": ssl.CERT_OPTIONAL}.get(
        options.get("ssl_cert_reqs", "required"), ssl.CERT_REQUIRED
    )
    context.check_hostname = cert_reqs != ssl.CERT_NONE and options.get("ssl_check_hostname", True)
    context.verify_mode = cert_reqs
    if options.get("ssl_certfile") or options.get("ssl_keyfile"):
        context.load_cert_chain(options.get("ssl_certfile", ""), options.get("ssl_keyfile"))
    if options.get("ssl_ca_certs"):
        context.load_verify_locations(cafile=options["ssl_ca_certs"])
    return context


def handshake(options: dict[str, Any]) -> list[list[str]]:
    """The commands a new connection sends first: ``AUTH`` and ``SELECT``, as configured."""
    commands = []
    if options.get("password") is not None:
        username = options.get("username")
        credentials = [username, options["password"]] if username else [options["password"]]
        commands.append(["AUTH", *credentials])
    if options.get("db"):
        commands.append(["SELECT", str(options["db"])])
    return commands


def check_handshake(replies: Sequence[Any]) -> None:
    """Raise what the server said, if it refused the handshake."""
    for reply in replies:
        if isinstance(reply, ResponseError):
            text = str(reply)
            if "WRONGPASS" in text or "NOAUTH" in text or "invalid password" in text:
                raise AuthenticationError(text)
            raise redis.ConnectionError(f"Redis refused the connection set-up: {text}")


def matches(reply: Any, token: int) -> bool:
    """Whether ``reply`` may answer the script call that carried ``token``: its own answer
    (``resp.answers``), or an error reply (which carries no token)."""
    # answers(), inlined: this runs on every request.
    return (type(reply) is list and len(reply) > 0 and reply[-1] == token) or isinstance(
        reply, ResponseError
    )


def where(address: tuple[str, int] | str) -> str:
    """``host:port``, or the socket path (for messages)."""
    return address if isinstance(address, str) else f"{address[0]}:{address[1]}"


class Endpoint:
    """What both pipes take from the storage's options (the address, the timeouts, the
    handshake to send on a new connection, the TLS context) and how they make a call.

    Args:
        address: ``(host, port)``, or a Unix socket path.
        options: the storage's options (timeouts, credentials, ``db``, ``ssl_*``).
        tls: whether to speak TLS.
    """

    def __init__(self, address: tuple[str, int] | str, options: dict[str, Any], tls: bool) -> None:
        self.address = address
        self.where = where(address)
        self.timeout: float = options["socket_timeout"]
        self.connect_timeout: float = options["socket_connect_timeout"]
        self._handshake = [pack(command) for command in handshake(options)]
        self._tls = tls_context(options) if tls else None
        self._tokens = new_tokens()

    def loading_call(
        self, text: str, keys: Sequence[str], args: Sequence[str]
    ) -> tuple[bytes, int]:
        """The ``EVAL`` of a call whose script the server lost, with a fresh token."""
        token = next(self._tokens)
        return eval_command(text, keys, args) + token_arg(token), token

    def out_of_step(self) -> redis.ConnectionError:
        """The error of a call answered with a reply that is not its own."""
        return redis.ConnectionError(
            f"Protocol error: Redis {self.where} answered with a reply that is not the call's "
            "(the connection was out of step and is closed)"
        )

    def connect_timeout_error(self) -> redis.TimeoutError:
        return redis.TimeoutError(f"Timeout connecting to Redis {self.where}")

    def connect_error(self, exc: OSError) -> redis.ConnectionError:
        return redis.ConnectionError(f"Error connecting to Redis {self.where}: {exc}")
