"""The HTTP layer under the speech server: uvicorn (h11) with deadlines and a connection cap.

    server = make_server(app, host, port, HttpLimits(read_timeout_s=30, keep_alive_s=5, max_connections=256))
    server.run()

uvicorn alone holds a connection that never finishes its request forever, and accepts
connections until the process runs out of file descriptors (then every accept fails and asyncio
logs each failure). Here:
  - a request (headers and body) must arrive within read_timeout_s of the connection opening or
    of the previous response, else the connection is closed; idle keep-alive ends after keep_alive_s;
  - at max_connections, a new connection evicts the oldest one that has not finished sending its
    request (a slow or stalled client), so such clients cannot lock out /health; when every
    connection is busy with a running request, the new one gets a 503 and is closed;
  - the soft file-descriptor limit is raised toward the hard one and max_connections is lowered
    to fit under it; "out of system resource" accept errors are logged at most once per 10 s.
No module here imports the engine, so the layer can be served (and tested) without a model.
"""
from __future__ import annotations

import ipaddress
import json
import logging
import resource
import time
from dataclasses import dataclass

import h11
import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

log = logging.getLogger(__name__)
FD_RESERVE = 64          # descriptors kept for the process itself (model files, logs, temp files)
MAX_BACKLOG = 128        # listen queue, and the most sockets asyncio accepts in one go
LOG_EVERY_S = 10.0
LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")


@dataclass
class HttpLimits:
    read_timeout_s: float = 30.0   # a request must be fully received within this
    keep_alive_s: float = 5.0      # idle time before a keep-alive connection is closed
    max_connections: int = 256


def error_body(message: str, type_: str = "invalid_request_error", param: str | None = None,
               code: str | None = None) -> bytes:
    """The one error shape of every response (OpenAI's)."""
    return json.dumps({"error": {"message": message, "type": type_, "param": param, "code": code}}).encode()


def raw_response(status: int, reason: str, body: bytes) -> bytes:
    return (f"HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\ncontent-length: {len(body)}\r\n"
            f"connection: close\r\n\r\n").encode() + body


class GuardedH11(H11Protocol):
    """uvicorn's h11 protocol with a per-request read deadline and a connection cap (subclassed
    per server by make_server, which sets the two class attributes)."""
    read_timeout_s: float = 30.0
    max_connections: int = 256

    def connection_made(self, transport) -> None:
        self._deadline = None
        self._refused = False
        self._since = time.monotonic()
        if len(self.connections) >= self.max_connections and not self._evict_one():
            self._refused = True
            self.transport = transport
            transport.write(raw_response(503, "Service Unavailable",
                                         error_body("too many connections; retry shortly", "server_error")))
            transport.close()
            return
        super().connection_made(transport)
        self._arm()

    def connection_lost(self, exc) -> None:
        if self._refused:
            return
        self._disarm()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return
        super().data_received(data)

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._since = time.monotonic()
        self._arm()

    def send_400_response(self, msg: str) -> None:   # malformed HTTP: the JSON shape too
        self.transport.write(raw_response(400, "Bad Request", error_body(msg)))
        self.transport.close()

    def _incomplete(self) -> bool:
        """Still sending its request (or idle): nothing of ours is running for it."""
        return self.conn.their_state in (h11.IDLE, h11.SEND_BODY) and not self.transport.is_closing()

    def _evict_one(self) -> bool:
        victims = [c for c in self.connections if isinstance(c, GuardedH11) and c._incomplete()]
        if not victims:
            return False
        oldest = min(victims, key=lambda c: c._since)
        oldest.transport.close()
        self.connections.discard(oldest)   # its slot is free now, not when the loop reports the close
        return True

    def _arm(self) -> None:
        self._disarm()
        self._deadline = self.loop.call_later(self.read_timeout_s, self._expired)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _expired(self) -> None:
        self._deadline = None
        if self._incomplete():
            self.transport.close()


class RateLimited(logging.Filter):
    """Lets one record matching `needle` through per `every` seconds, saying how many it held back."""

    def __init__(self, needle: str, every: float = LOG_EVERY_S):
        super().__init__()
        self.needle, self.every, self.last, self.held = needle, every, -float("inf"), 0

    def filter(self, record: logging.LogRecord) -> bool:
        text = record.getMessage() + (str(record.exc_info[1]) if record.exc_info else "")
        if self.needle not in text:
            return True
        now = time.monotonic()
        if now - self.last < self.every:
            self.held += 1
            return False
        if self.held:
            record.msg, record.args = f"{record.getMessage()} ({self.held} more like it in the last " \
                                      f"{now - self.last:.0f} s)", ()
        self.last, self.held = now, 0
        record.exc_info, record.exc_text = None, None   # one line: the traceback says nothing new
        return True


def quiet_accept_errors() -> None:
    """asyncio logs every failed accept(); when descriptors run out that is thousands a second."""
    logger = logging.getLogger("asyncio")
    if not any(isinstance(f, RateLimited) for f in logger.filters):
        logger.addFilter(RateLimited("out of system resource"))


def fit_connections(max_connections: int) -> tuple[int, int]:
    """(connections, accept backlog) that fit in the open-file limit, raised toward the hard limit
    first. asyncio accepts up to `backlog` sockets in one burst before any protocol runs (so
    before evictions close anything), so the limit must hold connections + two bursts + a reserve."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = max_connections + FD_RESERVE + 2 * MAX_BACKLOG
    if soft != resource.RLIM_INFINITY and soft < need:
        new = need if hard == resource.RLIM_INFINITY else min(hard, need)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (new, hard))
            soft = new
        except (ValueError, OSError):
            pass
    if soft == resource.RLIM_INFINITY:
        return max_connections, MAX_BACKLOG
    backlog = max(4, min(MAX_BACKLOG, soft // 16))
    fits = soft - min(FD_RESERVE, soft // 2) - 2 * backlog
    if fits < max_connections:
        log.warning("open-file limit %d allows %d connections, not max_connections=%d", soft, max(1, fits),
                    max_connections)
    return max(1, min(max_connections, fits)), backlog


def make_server(app, host: str, port: int, limits: HttpLimits, log_level: str = "info") -> uvicorn.Server:
    quiet_accept_errors()
    connections, backlog = fit_connections(limits.max_connections)
    protocol = type("GuardedH11", (GuardedH11,), {"read_timeout_s": limits.read_timeout_s,
                                                  "max_connections": connections})
    return uvicorn.Server(uvicorn.Config(app, host=host, port=port, http=protocol, log_level=log_level,
                                         timeout_keep_alive=limits.keep_alive_s, backlog=backlog))


def is_loopback(host: str) -> bool:
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_exposure(host: str, api_key: str | None, allow_insecure: bool) -> None:
    """A server reachable from other machines needs an api_key, or allow_insecure=true said aloud."""
    if is_loopback(host) or api_key:
        return
    if not allow_insecure:
        raise SystemExit(f"refusing host={host} without api_key: anyone who can reach it could use it; set api_key= "
                         f"(or HIGGS_API_KEY), or allow_insecure=true to serve it open anyway")
    log.warning("serving on %s with no api_key (allow_insecure=true): anyone who can reach it can use it", host)
