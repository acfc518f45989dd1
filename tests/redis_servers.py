"""Real Redis servers for the test-suite: standalone, cluster and sentinel.

This module is a pytest plugin (load it with ``pytest_plugins =
["tests.redis_servers"]`` in the root ``conftest.py`` or with ``-p
tests.redis_servers``).  It starts genuine ``redis-server`` processes -- no
mocks, no fakeredis -- on free ports of ``127.0.0.1``, each in its own
directory under one temporary directory per test session, without any
persistence.

Fixtures
--------
``redis_server`` / ``redis_cluster`` / ``redis_sentinel``
    Session scoped, started lazily by the first test that requests them.
``redis_standalone_clean`` / ``redis_cluster_clean`` / ``redis_sentinel_clean``
    Function scoped views of the session servers: every (current) master is
    unpaused, ``FLUSHALL``-ed and its statistics are reset (``CONFIG
    RESETSTAT``) before the test, so ``reads_processed()`` and
    ``info_commandstats()`` start near zero.
``redis_server_private``
    Function scoped, a fresh standalone server of its own, for tests that kill,
    restart or pause it; stopped after the test.
``redis_tls_server`` / ``redis_tls_server_mutual``
    Session scoped standalone servers that speak only TLS (no plain-text port),
    with certificates of ``redis_tls_files``: a throw-away CA made by
    ``trustme``, a server certificate for ``127.0.0.1`` and a client one.  The
    mutual one refuses clients without a certificate of that CA.

If ``redis-server`` (and ``redis-cli`` for the cluster) is not on ``PATH`` the
fixtures skip the test -- unless the environment variable ``CI`` is ``true``,
then they fail it (see :func:`require_redis_binaries`).

Processes are stopped by the fixture finalizers, by an ``atexit`` handler and,
on Linux, by the kernel if the Python process dies (``setpriv --pdeathsig KILL``).
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import os
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import IO, Any, Literal, TypeVar, cast, final

import pytest
import redis
import redis.cluster
import redis.sentinel
import trustme
from redis.backoff import NoBackoff
from redis.crc import key_slot
from redis.retry import Retry

__all__ = [
    "CLUSTER_BUS_PORT_OFFSET",
    "HOST",
    "RedisCluster",
    "RedisSentinel",
    "RedisServer",
    "RedisServerError",
    "TLSFiles",
    "find_free_port",
    "make_tls_files",
    "port_is_free",
    "redis_cluster",
    "redis_cluster_clean",
    "redis_sentinel",
    "redis_sentinel_clean",
    "redis_server",
    "redis_server_private",
    "redis_standalone_clean",
    "redis_tls_files",
    "redis_tls_server",
    "redis_tls_server_mutual",
    "require_redis_binaries",
    "spawn_process",
    "stop_all_servers",
    "stop_process",
]

HOST = "127.0.0.1"
CLUSTER_BUS_PORT_OFFSET = 10000
SENTINEL_SERVICE_NAME = "mymaster"


def _timeout_factor() -> float:
    """``RATEMW_REDIS_TIMEOUT_FACTOR`` scales every timeout (slow CI boxes)."""
    try:
        return max(1.0, float(os.environ.get("RATEMW_REDIS_TIMEOUT_FACTOR", "1")))
    except ValueError:
        return 1.0


# Upper bounds only: in the normal case everything is ready much sooner.
SERVER_START_TIMEOUT = 20.0 * _timeout_factor()
SERVER_STOP_TIMEOUT = 5.0 * _timeout_factor()
CLUSTER_CREATE_TIMEOUT = 20.0 * _timeout_factor()
CLUSTER_READY_TIMEOUT = 20.0 * _timeout_factor()
SENTINEL_READY_TIMEOUT = 20.0 * _timeout_factor()
FAILOVER_TIMEOUT = 30.0 * _timeout_factor()
# socket timeout for commands sent by the helpers (pause() may block them)
ADMIN_SOCKET_TIMEOUT = 30.0 * _timeout_factor()
CLIENT_SOCKET_TIMEOUT = 10.0 * _timeout_factor()
POLL_INTERVAL = 0.02

_T = TypeVar("_T")


class RedisServerError(RuntimeError):
    """A Redis process could not be started or did not become ready in time."""


class _AddressInUse(RedisServerError):
    pass


# --------------------------------------------------------------------------
# process bookkeeping and cleanup
# --------------------------------------------------------------------------

_LOCK = threading.RLock()
_LIVE_PROCESSES: set[subprocess.Popen[Any]] = set()
_RESERVED_PORTS: set[int] = set()
_SESSION_DIR: Path | None = None


def _session_dir() -> Path:
    """One temporary directory per Python process; removed at exit."""
    global _SESSION_DIR
    with _LOCK:
        if _SESSION_DIR is None:
            _SESSION_DIR = Path(tempfile.mkdtemp(prefix="ratemw-redis-"))
        return _SESSION_DIR


def _kill_process(proc: subprocess.Popen[Any]) -> None:
    with contextlib.suppress(ProcessLookupError, OSError):
        proc.kill()
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=SERVER_STOP_TIMEOUT)
    with _LOCK:
        _LIVE_PROCESSES.discard(proc)


def spawn_process(argv: Sequence[str], **popen: Any) -> subprocess.Popen[Any]:
    """Start a helper process of the test-suite (a server, a proxy); ``popen`` goes to Popen.

    The process gets a session of its own, so that a Ctrl-C in the terminal cannot kill it
    mid-teardown. It is SIGKILLed by the kernel if this Python process dies (see
    :func:`_pdeathsig_prefix`) and by the ``atexit`` handler unless :func:`stop_process`
    ended it first.
    """
    in_main_thread = threading.current_thread() is threading.main_thread()
    prefix = _pdeathsig_prefix() if in_main_thread else ()
    proc = subprocess.Popen([*prefix, *argv], start_new_session=True, **popen)
    with _LOCK:
        _LIVE_PROCESSES.add(proc)
    return proc


def stop_process(
    proc: subprocess.Popen[Any],
    ask: Callable[[subprocess.Popen[Any]], object] = subprocess.Popen.terminate,
    timeout: float = SERVER_STOP_TIMEOUT,
) -> None:
    """End a process of :func:`spawn_process`: ``ask`` it to exit (SIGTERM by default),
    SIGKILL it if it has not within ``timeout``."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError, OSError):
            ask(proc)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            _kill_process(proc)
    with _LOCK:
        _LIVE_PROCESSES.discard(proc)


def stop_all_servers() -> None:
    """SIGKILL every process started by this module (atexit hook)."""
    with _LOCK:
        procs = list(_LIVE_PROCESSES)
    for proc in procs:
        _kill_process(proc)


def _cleanup_at_exit() -> None:
    stop_all_servers()
    with _LOCK:
        session_dir = _SESSION_DIR
    if session_dir is not None:
        shutil.rmtree(session_dir, ignore_errors=True)


atexit.register(_cleanup_at_exit)


@functools.cache
def _pdeathsig_prefix() -> tuple[str, ...]:
    """``setpriv --pdeathsig KILL`` (util-linux), if available.

    The kernel then SIGKILLs the server when the Python process dies, even
    by SIGKILL (no atexit).  The signal fires when the *thread* that forked
    exits, so it is only used for processes spawned from the main thread.
    """
    if not sys.platform.startswith("linux"):
        return ()
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        return ()
    try:
        usage = subprocess.run(
            [setpriv, "--help"], capture_output=True, text=True, timeout=10, check=False
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return ()
    return (setpriv, "--pdeathsig", "KILL") if "--pdeathsig" in usage else ()


# --------------------------------------------------------------------------
# ports
# --------------------------------------------------------------------------


def port_is_free(port: int, host: str = HOST) -> bool:
    """True if a listening socket could be bound to ``host:port`` right now.

    ``SO_REUSEADDR`` is set like redis-server does, so ports that only have
    connections in TIME_WAIT count as free.
    """
    if not 0 < port < 65536:
        return False
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def _ephemeral_port_range() -> tuple[int, int]:
    try:
        text = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text()
        low, high = (int(part) for part in text.split())
    except (OSError, ValueError):
        return 32768, 60999
    return low, high


def find_free_port(*, cluster_bus: bool = False) -> int:
    """Return a free TCP port on 127.0.0.1 (and reserve it for this process).

    Ports are picked *below* the kernel's ephemeral range when possible, so
    that no outgoing connection (or a client's self-connect while a server is
    down) can grab the port of a server that a test restarts.  With
    ``cluster_bus=True`` the cluster bus port ``port + 10000`` must be free too.
    """
    offset = CLUSTER_BUS_PORT_OFFSET if cluster_bus else 0
    ephemeral_low, _ = _ephemeral_port_range()
    low, high = 10000, ephemeral_low - offset - 1
    if high - low < 1000:  # unusual ephemeral range: take anything sensible
        low, high = 10000, 65535 - offset
    rng = random.SystemRandom()
    for _ in range(1000):
        port = rng.randint(low, high)
        wanted = {port, port + offset}
        with _LOCK:
            if wanted & _RESERVED_PORTS:
                continue
            if all(port_is_free(p) for p in wanted):
                _RESERVED_PORTS.update(wanted)
                return port
    raise RedisServerError(f"no free TCP port found on {HOST} in [{low}, {high}]")


# --------------------------------------------------------------------------
# skipping
# --------------------------------------------------------------------------


def require_redis_binaries(*names: str) -> None:
    """Skip the current test if a Redis executable is missing from PATH.

    When the environment variable ``CI`` is ``true`` (case-insensitive) the
    test fails instead, so a CI image without Redis cannot silently skip the
    whole Redis test-suite.  Defaults to checking ``redis-server``.
    """
    missing = [name for name in (names or ("redis-server",)) if shutil.which(name) is None]
    if not missing:
        return
    message = (
        f"{', '.join(missing)} not found on PATH; the real-Redis tests need Redis >= 7 "
        "installed (e.g. `apt-get install redis-server`)"
    )
    if os.environ.get("CI", "").strip().lower() == "true":
        pytest.fail(f"{message} [CI=true, so this is a failure, not a skip]", pytrace=False)
    pytest.skip(message)


def _binary(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise RedisServerError(f"{name} not found on PATH")
    return path


# --------------------------------------------------------------------------
# small helpers
# --------------------------------------------------------------------------


def _wait_for(
    what: str,
    predicate: Callable[[], _T | None],
    timeout: float,
    describe: Callable[[], str] | None = None,
) -> _T:
    """Poll ``predicate`` until it returns something truthy or time runs out.

    Redis connection errors raised by the predicate count as "not yet".
    """
    deadline = time.monotonic() + timeout
    last_error: BaseException | None = None
    while True:
        try:
            result = predicate()
        except (redis.ConnectionError, redis.TimeoutError, redis.ResponseError) as exc:
            result, last_error = None, exc
        if result:
            return result
        if time.monotonic() > deadline:
            details = [f"timed out after {timeout:.1f}s waiting for {what}"]
            if last_error is not None:
                details.append(f"last error: {last_error!r}")
            if describe is not None:
                details.append(describe())
            raise RedisServerError("\n".join(details))
        time.sleep(POLL_INTERVAL)


def _pairs_to_dict(value: Any) -> dict[str, str]:
    """SENTINEL REPLICAS entries come as flat [k1, v1, k2, v2, ...] lists."""
    if isinstance(value, dict):
        return {str(k): str(v) for k, v in value.items()}
    items = list(value)
    return {str(items[i]): str(items[i + 1]) for i in range(0, len(items) - 1, 2)}


def _parse_info_text(text: str) -> dict[str, str]:
    result: dict[str, str] = {}
    for line in text.splitlines():
        if ":" in line and not line.startswith("#"):
            key, _, value = line.partition(":")
            result[key.strip()] = value.strip()
    return result


# --------------------------------------------------------------------------
# TLS certificates
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class TLSFiles:
    """PEM files of a throw-away CA and of a server and a client certificate it issued."""

    ca_certs: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path


def make_tls_files(directory: Path, *, server_names: Sequence[str] = (HOST,)) -> TLSFiles:
    """Make a CA with ``trustme``, have it issue a certificate for ``server_names`` and a
    client certificate, and write them all into ``directory``."""
    ca = trustme.CA()
    names = ("ca.pem", "server.crt", "server.key", "client.crt", "client.key")
    files = TLSFiles(*(directory / name for name in names))
    ca.cert_pem.write_to_path(files.ca_certs)
    server, client = ca.issue_cert(*server_names), ca.issue_cert("client@ratemw.test")
    server.cert_chain_pems[0].write_to_path(files.server_cert)
    server.private_key_pem.write_to_path(files.server_key)
    client.cert_chain_pems[0].write_to_path(files.client_cert)
    client.private_key_pem.write_to_path(files.client_key)
    return files


# --------------------------------------------------------------------------
# one redis-server process
# --------------------------------------------------------------------------


@final
class RedisServer:
    """One ``redis-server`` process (plain, cluster node or sentinel).

    The object outlives its process: ``kill()``/``stop()`` end the process,
    ``start()``/``restart()`` launch a new one on the same port and in the same
    directory.  ``config_lines`` go to a config file in the server's directory
    (so ``CONFIG REWRITE`` -- used by sentinel -- works); the no-persistence
    options are passed on the command line and thus win on every start.

    With ``tls`` the server listens on ``port`` for TLS only (no plain-text
    port at all) and, with ``tls_auth_clients``, accepts only clients that show
    a certificate of the same CA.  The helper's own clients (readiness probe,
    admin commands, :meth:`client`) connect with ``tls``'s client certificate.
    """

    def __init__(
        self,
        *,
        name: str = "redis",
        port: int | None = None,
        config_lines: Sequence[str] = (),
        sentinel: bool = False,
        cluster_bus: bool = False,
        tls: TLSFiles | None = None,
        tls_auth_clients: bool = False,
    ) -> None:
        if tls is not None and (sentinel or cluster_bus):
            raise ValueError("TLS is only set up for standalone servers")
        self.name = name
        self.host = HOST
        self.sentinel_mode = sentinel
        self._cluster_bus = cluster_bus
        self.tls = tls
        self.tls_auth_clients = tls_auth_clients
        self._auto_port = port is None
        self._port = port if port is not None else find_free_port(cluster_bus=cluster_bus)
        # written to the config file before the first start; may be changed
        # until then (e.g. to point at a master whose port is known only later)
        self.config_lines = list(config_lines)
        self.dir = Path(tempfile.mkdtemp(prefix=f"{name}-", dir=_session_dir()))
        self.config_path = self.dir / ("sentinel.conf" if sentinel else "redis.conf")
        self.log_path = self.dir / "redis.log"
        self._proc: subprocess.Popen[bytes] | None = None
        self._log_file: IO[bytes] | None = None
        self._log_offset = 0
        self._admin_client: redis.Redis | None = None
        self._admin_commands = 0
        self._started_once = False

    # -- identity ---------------------------------------------------------

    @property
    def port(self) -> int:
        return self._port

    @property
    def url(self) -> str:
        """``redis://host:port``, or ``rediss://host:port`` for a TLS server."""
        scheme = "redis" if self.tls is None else "rediss"
        return f"{scheme}://{self.host}:{self.port}"

    @property
    def address(self) -> tuple[str, int]:
        return self.host, self.port

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self.is_running() and self._proc is not None else None

    def __repr__(self) -> str:
        state = "running" if self.is_running() else "stopped"
        return f"<RedisServer {self.name} {self.host}:{self.port} {state}>"

    # -- lifecycle --------------------------------------------------------

    def is_running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self, timeout: float = SERVER_START_TIMEOUT) -> RedisServer:
        """Launch the process and wait until it answers PING (and is ours)."""
        if self.is_running():
            raise RedisServerError(f"{self!r} is already running")
        self._discard_process()  # a crashed process of ours, if any
        # a port picked by us may have been taken by someone else meanwhile;
        # before the first successful start we can still move to another one
        attempts = 5 if self._auto_port and not self._started_once else 1
        for attempt in range(attempts):
            try:
                if not self._started_once:
                    self._write_config()
                self._spawn()
                self._wait_ready(timeout)
            except _AddressInUse:
                self._discard_process()
                if attempt + 1 == attempts:
                    raise
                self._port = find_free_port(cluster_bus=self._cluster_bus)
                continue
            except BaseException:
                self.kill()
                raise
            break
        self._started_once = True
        if not self.sentinel_mode:
            self.reset_stats()
        return self

    def stop(self) -> None:
        """SIGTERM, then SIGKILL if the process has not exited in time."""
        if self._proc is not None:
            stop_process(self._proc)
        self._discard_process()

    def kill(self) -> None:
        """SIGKILL the process (simulates a crash); no-op if not running."""
        proc = self._proc
        if proc is not None:
            _kill_process(proc)
        self._discard_process()

    def restart(self, timeout: float = SERVER_START_TIMEOUT) -> RedisServer:
        """Stop (if running) and start a new process on the same port."""
        self.stop()
        return self.start(timeout)

    def ensure_running(self) -> RedisServer:
        if not self.is_running():
            self.start()
        return self

    def __enter__(self) -> RedisServer:
        return self if self.is_running() else self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def _write_config(self) -> None:
        if self.sentinel_mode:
            # sentinel insists on a config file it can rewrite; everything
            # lives there (ports etc. are also given on the command line)
            lines = [
                f"port {self.port}",
                f"bind {self.host}",
                "protected-mode no",
                f'dir "{self.dir}"',
                "loglevel warning",
                "daemonize no",
                *self.config_lines,
            ]
        else:
            lines = list(self.config_lines)
        self.config_path.write_text("\n".join(lines) + "\n")

    def _command_line(self) -> list[str]:
        argv = [_binary("redis-server"), str(self.config_path)]
        if self.sentinel_mode:
            argv.append("--sentinel")
        argv += self._listen_options()
        argv += [
            "--bind", self.host,
            "--protected-mode", "no",
            "--loglevel", "warning",
            "--dir", str(self.dir),
            "--daemonize", "no",
        ]  # fmt: skip
        if not self.sentinel_mode:
            argv += ["--save", "", "--appendonly", "no"]
        return argv

    def _listen_options(self) -> list[str]:
        if self.tls is None:
            return ["--port", str(self.port)]
        return [
            "--port", "0",  # no plain-text port: whatever answers, answers over TLS
            "--tls-port", str(self.port),
            "--tls-cert-file", str(self.tls.server_cert),
            "--tls-key-file", str(self.tls.server_key),
            "--tls-ca-cert-file", str(self.tls.ca_certs),
            "--tls-auth-clients", "yes" if self.tls_auth_clients else "no",
        ]  # fmt: skip

    def _connection_options(self) -> dict[str, Any]:
        """Where the helper's own clients connect, and with which certificates."""
        options: dict[str, Any] = {"host": self.host, "port": self.port}
        if self.tls is not None:
            options.update(
                ssl=True,
                ssl_ca_certs=str(self.tls.ca_certs),
                ssl_certfile=str(self.tls.client_cert),
                ssl_keyfile=str(self.tls.client_key),
            )
        return options

    def _spawn(self) -> None:
        # closed in _discard_process
        self._log_file = open(self.log_path, "ab")  # noqa: SIM115
        self._log_offset = self._log_file.tell()
        self._log_file.write(f"\n=== starting on port {self.port} ===\n".encode())
        self._log_file.flush()
        self._proc = spawn_process(
            self._command_line(),
            cwd=self.dir,
            stdin=subprocess.DEVNULL,
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
        )
        self._admin_client = None
        self._admin_commands = 0

    def _discard_process(self) -> None:
        if self._admin_client is not None:
            with contextlib.suppress(Exception):
                self._admin_client.close()
        self._admin_client = None
        if self._proc is not None:
            with _LOCK:
                _LIVE_PROCESSES.discard(self._proc)
            if self._proc.poll() is None:
                _kill_process(self._proc)
        self._proc = None
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None

    def log_tail(self, lines: int = 30, *, current_process_only: bool = False) -> str:
        """The end of the server's log (stdout/stderr of all its processes)."""
        try:
            with open(self.log_path, "rb") as log:
                if current_process_only:
                    log.seek(self._log_offset)
                text = log.read().decode(errors="replace")
        except OSError:
            return "<no log>"
        return "\n".join(text.splitlines()[-lines:])

    def _wait_ready(self, timeout: float) -> None:
        proc = self._proc
        assert proc is not None
        deadline = time.monotonic() + timeout
        # a throw-away client with short timeouts: whatever listens on the
        # port (maybe not our server) must not block the loop for long
        probe = redis.Redis(
            **self._connection_options(),
            decode_responses=True,
            protocol=2,
            socket_timeout=2.0,
            socket_connect_timeout=2.0,
            retry=Retry(NoBackoff(), 0),
        )
        try:
            while True:
                if proc.poll() is not None:
                    log = self.log_tail(current_process_only=True)
                    if "Address already in use" in log:
                        raise _AddressInUse(f"{self.name}: port {self.port} is taken\n{log}")
                    raise RedisServerError(
                        f"{self.name}: redis-server exited with code {proc.returncode} "
                        f"during startup\ncommand: {self._command_line()}\n{log}"
                    )
                info_server: Callable[..., Any] = probe.execute_command
                with contextlib.suppress(redis.RedisError, ValueError, KeyError, TypeError):
                    # make sure we talk to *our* process, not to someone
                    # else's server that grabbed the port first
                    if int(info_server("INFO", "server")["process_id"]) == proc.pid:
                        return
                if time.monotonic() > deadline:
                    raise RedisServerError(
                        f"{self.name}: not answering on {self.host}:{self.port} after "
                        f"{timeout:.1f}s\n{self.log_tail(current_process_only=True)}"
                    )
                time.sleep(POLL_INTERVAL)
        finally:
            probe.close()

    # -- clients ----------------------------------------------------------

    def client(self, **kwargs: Any) -> redis.Redis:
        """A new sync client; ``decode_responses=True`` unless overridden."""
        options: dict[str, Any] = {
            **self._connection_options(),
            "decode_responses": True,
            "socket_timeout": CLIENT_SOCKET_TIMEOUT,
            "socket_connect_timeout": CLIENT_SOCKET_TIMEOUT,
        }
        options.update(kwargs)
        return redis.Redis(**options)

    def _admin(self, *args: Any) -> Any:
        """Run a command on the helper's own single connection.

        The number of commands is counted so that ``reads_processed()`` can
        leave the helper's own traffic out.
        """
        if self._admin_client is None:
            self._admin_client = redis.Redis(
                **self._connection_options(),
                decode_responses=True,
                protocol=2,
                socket_timeout=ADMIN_SOCKET_TIMEOUT,
                socket_connect_timeout=2.0,
                # one retry: sentinel kills the normal clients of a server
                # it promotes or demotes
                retry=Retry(NoBackoff(), 1),
                max_connections=1,
            )
        self._admin_commands += 1
        execute: Callable[..., Any] = self._admin_client.execute_command
        return execute(*args)

    # -- admin operations -------------------------------------------------

    def info(self, section: str = "default") -> dict[str, Any]:
        return cast("dict[str, Any]", self._admin("INFO", section))

    def reads_processed(self) -> int:
        """``INFO stats`` -> ``total_reads_processed`` minus the helper's own.

        Redis counts *read events* (round trips), not commands: a pipeline of
        N commands sent at once usually counts 1, a new connection's
        handshake and a closing connection count too.  The commands this
        object sends itself (INFO, FLUSHALL, CLIENT PAUSE, ...) are subtracted,
        so two consecutive calls differ exactly by the other clients' reads.
        """
        stats = self.info("stats")
        return int(stats["total_reads_processed"]) - self._admin_commands

    def info_commandstats(self) -> dict[str, dict[str, float]]:
        """``INFO commandstats`` keyed by command name without ``cmdstat_``.

        E.g. ``{"get": {"calls": 2, "usec": 5, ...}, "client|pause": {...}}``;
        includes the helper's own ``info`` (and ``config|resetstat``) calls.
        """
        raw = self.info("commandstats")
        return {
            key.removeprefix("cmdstat_"): {
                field: float(number) if isinstance(number, float) else int(number)
                for field, number in value.items()
            }
            for key, value in raw.items()
            if isinstance(value, dict)
        }

    def reset_stats(self) -> None:
        """``CONFIG RESETSTAT``: zero ``reads_processed()`` and command stats."""
        self._admin("CONFIG", "RESETSTAT")
        self._admin_commands = 0

    def flushall(self) -> None:
        self._admin("FLUSHALL")

    def pause(self, seconds: float, *, mode: Literal["ALL", "WRITE"] = "ALL") -> None:
        """``CLIENT PAUSE <ms> ALL|WRITE``.

        With ``ALL`` every client -- the helper's own connection included --
        is blocked until the pause expires; Redis 7.0 even blocks ``CLIENT
        UNPAUSE`` then, so ``unpause()`` / ``reads_processed()`` etc. wait for
        the end of the pause.  ``WRITE`` pauses only block writes (and
        scripts); ``unpause()`` ends them early.
        """
        self._admin("CLIENT", "PAUSE", max(1, round(seconds * 1000)), mode)

    def unpause(self) -> None:
        """``CLIENT UNPAUSE`` (waits for the end of an ``ALL`` pause)."""
        self._admin("CLIENT", "UNPAUSE")

    def role(self) -> str:
        """``master``, ``slave`` (replica) or ``sentinel``."""
        return str(self._admin("ROLE")[0])


# --------------------------------------------------------------------------
# cluster
# --------------------------------------------------------------------------


@final
class RedisCluster:
    """A Redis Cluster of ``masters`` master nodes without replicas."""

    def __init__(self, *, masters: int = 3, node_timeout_ms: int = 2000) -> None:
        if masters < 3:
            raise ValueError("redis-cli --cluster create needs at least 3 masters")
        self.nodes: list[RedisServer] = [
            RedisServer(
                name=f"cluster-{index}",
                cluster_bus=True,
                config_lines=[
                    "cluster-enabled yes",
                    "cluster-config-file nodes.conf",
                    f"cluster-node-timeout {node_timeout_ms}",
                ],
            )
            for index in range(masters)
        ]

    @property
    def url(self) -> str:
        """``redis+cluster://127.0.0.1:p1,127.0.0.1:p2,...`` (``limits`` syntax)."""
        return "redis+cluster://" + ",".join(f"{n.host}:{n.port}" for n in self.nodes)

    def __repr__(self) -> str:
        return f"<RedisCluster {self.url}>"

    def start(self) -> RedisCluster:
        for node in self.nodes:
            node.start()
        command = [
            _binary("redis-cli"), "--cluster", "create",
            *(f"{n.host}:{n.port}" for n in self.nodes),
            "--cluster-replicas", "0", "--cluster-yes",
        ]  # fmt: skip
        try:
            result = subprocess.run(
                command,
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
                timeout=CLUSTER_CREATE_TIMEOUT,
                check=False,
            )
        except subprocess.TimeoutExpired as exc:
            raise RedisServerError(
                f"redis-cli --cluster create timed out after {CLUSTER_CREATE_TIMEOUT}s: "
                f"{exc.output!r}"
            ) from exc
        if result.returncode != 0 or "All 16384 slots covered" not in result.stdout:
            raise RedisServerError(
                f"redis-cli --cluster create failed (exit {result.returncode}):\n"
                f"{result.stdout}\n{result.stderr}"
            )
        self.wait_ready()
        self.reset_stats()
        return self

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()

    def __enter__(self) -> RedisCluster:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def cluster_info(self, node: RedisServer) -> dict[str, str]:
        raw = node._admin("CLUSTER", "INFO")
        if isinstance(raw, dict):
            return {str(k): str(v) for k, v in raw.items()}
        return _parse_info_text(str(raw))

    def _is_ready(self) -> bool:
        expected_nodes = str(len(self.nodes))
        for node in self.nodes:
            info = self.cluster_info(node)
            if (
                info.get("cluster_state") != "ok"
                or info.get("cluster_slots_ok") != "16384"
                or info.get("cluster_known_nodes") != expected_nodes
            ):
                return False
        return True

    def wait_ready(self, timeout: float = CLUSTER_READY_TIMEOUT) -> None:
        """Wait until every node reports ``cluster_state:ok`` with all slots."""

        def describe() -> str:
            parts = []
            for node in self.nodes:
                try:
                    parts.append(f"{node!r}: {self.cluster_info(node)}")
                except redis.RedisError as exc:
                    parts.append(f"{node!r}: {exc!r}\n{node.log_tail(10)}")
            return "\n".join(parts)

        _wait_for("cluster_state:ok on all nodes", self._is_ready, timeout, describe)

    def ensure_running(self) -> RedisCluster:
        """Restart nodes that were killed/stopped and wait for a healthy cluster."""
        restarted = False
        for node in self.nodes:
            if not node.is_running():
                node.start()
                restarted = True
        if restarted:
            self.wait_ready()
        return self

    def client(self, **kwargs: Any) -> redis.cluster.RedisCluster:
        """A new ``redis.cluster.RedisCluster`` knowing every node."""
        node_class: Callable[..., redis.cluster.ClusterNode] = redis.cluster.ClusterNode
        options: dict[str, Any] = {
            "startup_nodes": [node_class(n.host, n.port) for n in self.nodes],
            "decode_responses": True,
            "socket_timeout": CLIENT_SOCKET_TIMEOUT,
            "socket_connect_timeout": CLIENT_SOCKET_TIMEOUT,
        }
        options.update(kwargs)
        return redis.cluster.RedisCluster(**options)

    @staticmethod
    def keyslot(key: str | bytes) -> int:
        """Hash slot of ``key`` (honours ``{hash tags}``), computed locally."""
        return key_slot(key.encode() if isinstance(key, str) else key)

    def slot_owners(self) -> dict[int, RedisServer]:
        """Map every slot to its master, according to node 0's CLUSTER SLOTS."""
        by_port = {n.port: n for n in self.nodes}
        owners: dict[int, RedisServer] = {}
        for entry in self.nodes[0]._admin("CLUSTER", "SLOTS"):
            start, end, master = int(entry[0]), int(entry[1]), entry[2]
            owner = by_port[int(master[1])]
            for slot in range(start, end + 1):
                owners[slot] = owner
        return owners

    def node_for_key(self, key: str | bytes) -> RedisServer:
        return self.slot_owners()[self.keyslot(key)]

    def flushall(self) -> None:
        for node in self.nodes:
            node.flushall()

    def reset_stats(self) -> None:
        for node in self.nodes:
            node.reset_stats()

    def unpause(self) -> None:
        for node in self.nodes:
            node.unpause()

    def reads_processed(self) -> int:
        """Sum of ``RedisServer.reads_processed()`` over all nodes."""
        return sum(node.reads_processed() for node in self.nodes)

    def info_commandstats(self) -> dict[str, dict[str, float]]:
        """Per-command ``calls``/``usec``/``rejected_calls``/``failed_calls``
        summed over all nodes."""
        total: dict[str, dict[str, float]] = {}
        for node in self.nodes:
            for command, stats in node.info_commandstats().items():
                bucket = total.setdefault(command, {})
                for field in ("calls", "usec", "rejected_calls", "failed_calls"):
                    if field in stats:
                        bucket[field] = bucket.get(field, 0) + stats[field]
        return total


# --------------------------------------------------------------------------
# sentinel
# --------------------------------------------------------------------------


@final
class RedisSentinel:
    """A master, one replica and one sentinel monitoring them (quorum 1).

    ``master`` and ``replica`` follow failovers: they ask the sentinel which
    of the two data servers currently is the master.
    """

    def __init__(
        self,
        *,
        service_name: str = SENTINEL_SERVICE_NAME,
        down_after_ms: int = 1000,
        failover_timeout_ms: int = 3000,
    ) -> None:
        self.service_name = service_name
        self._down_after_ms = down_after_ms
        self._failover_timeout_ms = failover_timeout_ms
        # The replica's and the sentinel's configuration is completed in
        # start(), once the master's port is final.  repl-diskless-sync-delay:
        # the default of 5 s would make every full sync (the first one) slow.
        self.servers: tuple[RedisServer, RedisServer] = (
            RedisServer(name="sentinel-data-a", config_lines=["repl-diskless-sync-delay 0"]),
            RedisServer(name="sentinel-data-b", config_lines=["repl-diskless-sync-delay 0"]),
        )
        self._master_index = 0
        self.sentinel = RedisServer(name="sentinel", sentinel=True)

    @property
    def url(self) -> str:
        """``redis+sentinel://127.0.0.1:<sentinel port>/<service>``."""
        return f"redis+sentinel://{self.sentinel.host}:{self.sentinel.port}/{self.service_name}"

    def __repr__(self) -> str:
        return f"<RedisSentinel {self.url}>"

    # -- topology ---------------------------------------------------------

    def master_address(self) -> tuple[str, int] | None:
        """The master's address as the sentinel reports it right now."""
        reply = self.sentinel._admin("SENTINEL", "GET-MASTER-ADDR-BY-NAME", self.service_name)
        if not reply:
            return None
        return str(reply[0]), int(reply[1])

    def _server_at(self, address: tuple[str, int] | None) -> RedisServer | None:
        for server in self.servers:
            if address == server.address:
                return server
        return None

    @property
    def master(self) -> RedisServer:
        """Current master according to the sentinel (last known on error)."""
        with contextlib.suppress(redis.RedisError):
            server = self._server_at(self.master_address())
            if server is not None:
                self._master_index = self.servers.index(server)
        return self.servers[self._master_index]

    @property
    def replica(self) -> RedisServer:
        master = self.master
        return self.servers[1] if master is self.servers[0] else self.servers[0]

    def sentinel_replicas(self) -> list[dict[str, str]]:
        reply = self.sentinel._admin("SENTINEL", "REPLICAS", self.service_name)
        return [_pairs_to_dict(entry) for entry in reply]

    @staticmethod
    def _replica_link_up(server: RedisServer, master: RedisServer) -> bool:
        info = server.info("replication")
        return (
            info.get("role") == "slave"
            and info.get("master_port") == master.port
            and info.get("master_link_status") == "up"
        )

    def _sentinel_sees(self, master: RedisServer, replica: RedisServer) -> bool:
        if self.master_address() != master.address:
            return False
        for entry in self.sentinel_replicas():
            if entry.get("ip") == replica.host and entry.get("port") == str(replica.port):
                # "info-refresh" is huge until the sentinel got an INFO reply
                # from the replica; "role-reported" may lag by up to 10 s
                # after a failover, but is not needed for the next one
                flags = set(entry.get("flags", "").split(","))
                info_age_ms = int(entry.get("info-refresh", "-1"))
                return flags == {"slave"} and 0 <= info_age_ms < 60000
        return False

    def _describe(self) -> str:
        parts = []
        for server in (*self.servers, self.sentinel):
            try:
                parts.append(f"{server!r}: role={server.role()}")
            except redis.RedisError as exc:
                parts.append(f"{server!r}: {exc!r}")
            parts.append(server.log_tail(10))
        with contextlib.suppress(redis.RedisError):
            parts.append(f"sentinel replicas: {self.sentinel_replicas()}")
        return "\n".join(parts)

    def _wait_topology(self, master: RedisServer, replica: RedisServer, timeout: float) -> None:
        _wait_for(
            f"{replica!r} to replicate from {master!r}",
            lambda: self._replica_link_up(replica, master),
            timeout,
            self._describe,
        )
        _wait_for(
            f"the sentinel to see master {master!r} and replica {replica!r}",
            lambda: self._sentinel_sees(master, replica),
            timeout,
            self._describe,
        )

    # -- lifecycle --------------------------------------------------------

    def start(self) -> RedisSentinel:
        master, replica = self.servers
        master.start()
        replica.config_lines.append(f"replicaof {master.host} {master.port}")
        replica.start()
        # the sentinel discovers replicas through the master's INFO, which it
        # asks for right away and then only every 10 s: start it only after
        # the replica is attached so that a failover is possible immediately
        _wait_for(
            "replica link",
            lambda: self._replica_link_up(replica, master),
            SENTINEL_READY_TIMEOUT,
            self._describe,
        )
        name = self.service_name
        self.sentinel.config_lines = [
            f"sentinel monitor {name} {master.host} {master.port} 1",
            f"sentinel down-after-milliseconds {name} {self._down_after_ms}",
            f"sentinel failover-timeout {name} {self._failover_timeout_ms}",
        ]
        self.sentinel.start()
        self._wait_topology(master, replica, SENTINEL_READY_TIMEOUT)
        master.reset_stats()
        return self

    def stop(self) -> None:
        self.sentinel.stop()
        for server in self.servers:
            server.stop()

    def __enter__(self) -> RedisSentinel:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def ensure_running(self) -> RedisSentinel:
        """Best effort repair after a test killed something."""
        self.sentinel.ensure_running()
        master = self.master
        replica = self.replica
        master.ensure_running()
        replica.ensure_running()
        if replica.role() != "slave":
            replica._admin("REPLICAOF", master.host, master.port)
        self._wait_topology(master, replica, SENTINEL_READY_TIMEOUT)
        return self

    def failover(self, timeout: float = FAILOVER_TIMEOUT) -> RedisServer:
        """``SENTINEL FAILOVER`` and wait until the new master takes writes.

        Also points the old master at the new one right away (sentinel would
        do so itself only ~10 s later) and waits until the sentinel sees it as
        a healthy replica, so another failover is possible immediately.
        Returns the new master.
        """
        deadline = time.monotonic() + timeout
        old_address = self.master_address()
        old_master = self._server_at(old_address)
        if old_master is None:
            raise RedisServerError(f"sentinel reports unknown master {old_address}")

        def request() -> bool:
            try:
                self.sentinel._admin("SENTINEL", "FAILOVER", self.service_name)
            except redis.ResponseError as exc:
                # NOGOODSLAVE: the sentinel has no fresh info about the replica
                # yet; INPROG: a failover is still running
                if "NOGOODSLAVE" in str(exc) or "INPROG" in str(exc):
                    return False
                raise
            return True

        _wait_for("SENTINEL FAILOVER to be accepted", request, timeout, self._describe)

        def new_master() -> RedisServer | None:
            address = self.master_address()
            return self._server_at(address) if address != old_address else None

        promoted = _wait_for(
            "the sentinel to report a new master",
            new_master,
            max(0.1, deadline - time.monotonic()),
            self._describe,
        )

        def accepts_writes() -> bool:
            promoted._admin("SET", "__ratemw_failover_probe__", "1")
            promoted._admin("DEL", "__ratemw_failover_probe__")
            return True

        _wait_for(
            "the new master to accept writes",
            accepts_writes,
            max(0.1, deadline - time.monotonic()),
            self._describe,
        )
        self._master_index = self.servers.index(promoted)
        if old_master.is_running():
            old_master._admin("REPLICAOF", promoted.host, promoted.port)
            self._wait_topology(promoted, old_master, max(0.1, deadline - time.monotonic()))
        return promoted

    # -- clients and helpers ----------------------------------------------

    def sentinel_client(self, **kwargs: Any) -> redis.sentinel.Sentinel:
        """A ``redis.sentinel.Sentinel`` manager; kwargs go to the data
        connections (``decode_responses=True`` unless overridden)."""
        options: dict[str, Any] = {
            "decode_responses": True,
            "socket_timeout": CLIENT_SOCKET_TIMEOUT,
            "socket_connect_timeout": CLIENT_SOCKET_TIMEOUT,
        }
        options.update(kwargs)
        sentinel_class: Callable[..., redis.sentinel.Sentinel] = redis.sentinel.Sentinel
        return sentinel_class(
            [self.sentinel.address],
            sentinel_kwargs={
                "socket_timeout": CLIENT_SOCKET_TIMEOUT,
                "socket_connect_timeout": CLIENT_SOCKET_TIMEOUT,
            },
            **options,
        )

    def client(self, **kwargs: Any) -> redis.Redis:
        """Master client via ``Sentinel.master_for`` (follows failovers)."""
        master_for: Callable[..., redis.Redis] = self.sentinel_client(**kwargs).master_for
        return master_for(self.service_name)

    def flushall(self) -> None:
        """FLUSHALL on the master and wait (<= 1 s) for the replica to apply it."""
        master = self.master
        master.flushall()
        master._admin("WAIT", 1, 1000)

    def reset_stats(self) -> None:
        for server in self.servers:
            if server.is_running():
                server.reset_stats()

    def reads_processed(self) -> int:
        """``reads_processed()`` of the current master.

        Not exact: the sentinel (PING every second, INFO, hello messages) and
        the replica (REPLCONF ACK every second) add reads in the background.
        """
        return self.master.reads_processed()


# --------------------------------------------------------------------------
# pytest fixtures
# --------------------------------------------------------------------------


def _running(name: str, **options: Any) -> Iterator[RedisServer]:
    """A fixture's body: start a server, yield it, and stop it however the test ends."""
    require_redis_binaries("redis-server")
    server = RedisServer(name=name, **options)
    try:
        server.start()
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    """A standalone Redis shared by the whole session."""
    yield from _running("standalone")


@pytest.fixture(scope="session")
def redis_cluster() -> Iterator[RedisCluster]:
    """A 3-master Redis Cluster shared by the whole session."""
    require_redis_binaries("redis-server", "redis-cli")
    cluster = RedisCluster()
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture(scope="session")
def redis_sentinel() -> Iterator[RedisSentinel]:
    """Master + replica + sentinel shared by the whole session."""
    require_redis_binaries("redis-server")
    setup = RedisSentinel()
    try:
        setup.start()
        yield setup
    finally:
        setup.stop()


@pytest.fixture
def redis_standalone_clean(redis_server: RedisServer) -> RedisServer:
    """``redis_server``, running, unpaused, empty, with fresh statistics."""
    redis_server.ensure_running()
    redis_server.unpause()
    redis_server.flushall()
    redis_server.reset_stats()
    return redis_server


@pytest.fixture
def redis_cluster_clean(redis_cluster: RedisCluster) -> RedisCluster:
    """``redis_cluster``, all nodes running, unpaused, empty, fresh stats."""
    redis_cluster.ensure_running()
    redis_cluster.unpause()
    redis_cluster.flushall()
    redis_cluster.reset_stats()
    return redis_cluster


@pytest.fixture
def redis_sentinel_clean(redis_sentinel: RedisSentinel) -> RedisSentinel:
    """``redis_sentinel`` with its current master empty and fresh stats."""
    redis_sentinel.ensure_running()
    redis_sentinel.master.unpause()
    redis_sentinel.flushall()
    redis_sentinel.reset_stats()
    return redis_sentinel


@pytest.fixture
def redis_server_private() -> Iterator[RedisServer]:
    """A fresh standalone server for this test only (kill/restart/pause it)."""
    yield from _running("private")


@pytest.fixture(scope="session")
def redis_tls_files() -> TLSFiles:
    """A CA, a server certificate for 127.0.0.1 and a client certificate, for the session."""
    return make_tls_files(Path(tempfile.mkdtemp(prefix="tls-", dir=_session_dir())))


@pytest.fixture(scope="session")
def redis_tls_server(redis_tls_files: TLSFiles) -> Iterator[RedisServer]:
    """A standalone Redis that speaks only TLS; clients need no certificate."""
    yield from _running("tls", tls=redis_tls_files)


@pytest.fixture(scope="session")
def redis_tls_server_mutual(redis_tls_files: TLSFiles) -> Iterator[RedisServer]:
    """A standalone Redis that speaks only TLS, to clients with a certificate of its CA."""
    yield from _running("tls-mutual", tls=redis_tls_files, tls_auth_clients=True)
