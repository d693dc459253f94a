"""A small HTTP/1.1 server for ``/metrics`` and ``/status``, on the service's own event loop.

``MonitorServer(host, port, collect)``: ``await start()``, ``close()``,
``await wait_closed()``. ``collect`` is called once per request, on the
loop the roles run on, and returns the :class:`~walstream.monitor.snapshot.Snapshot`
to render (see :func:`~walstream.monitor.snapshot.collector`).

It answers one request per connection (``Connection: close``): GET or HEAD
of ``/metrics`` (Prometheus text format 0.0.4) or ``/status`` (JSON); 404
for another path, 405 (with ``Allow``) for another method, 400 for what is
not an HTTP/1.x request, 431 for a request head over the size bound, 408
when the head has not arrived within the read timeout, 503 when the
connection limit is reached. Whatever a client does costs bounded memory
and time: the head is read with a total deadline (a client sending a byte
at a time is cut off at it, as is one that sends nothing), in lines no
longer than the size bound, and the response is written under the same
kind of deadline; a request body is never read.

Errors: :class:`MonitorError` when the address cannot be listened on.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Final

from walstream import __version__
from walstream.errors import Error
from walstream.monitor import metrics, status
from walstream.monitor.snapshot import Snapshot

__all__ = ["MonitorError", "MonitorServer"]

log = logging.getLogger("walstream.monitor")

_REASONS: Final = {
    200: "OK",
    400: "Bad Request",
    404: "Not Found",
    405: "Method Not Allowed",
    408: "Request Timeout",
    431: "Request Header Fields Too Large",
    500: "Internal Server Error",
    503: "Service Unavailable",
}
_ALLOWED: Final = "GET, HEAD"
_MAX_HEADER_LINES: Final = 100
_LINGER_BYTES: Final = 1024 * 1024  # read and dropped after the answer, at most


class MonitorError(Error):
    """The monitoring endpoint cannot start (the address is taken, or invalid)."""


class _Refused(Exception):
    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


class MonitorServer:
    """Serves ``GET /metrics`` and ``GET /status`` from ``collect()`` until closed.

    ``host`` None (or ``""``) listens on every interface; ``port`` 0 on any
    free port (:attr:`addresses` says which).
    """

    def __init__(
        self,
        host: str | None,
        port: int,
        collect: Callable[[], Snapshot],
        *,
        read_timeout: float = 5.0,
        max_request_bytes: int = 8192,
        max_connections: int = 32,
    ) -> None:
        self.host = host
        self.port = port
        self.collect = collect
        self.read_timeout = read_timeout
        self.max_request_bytes = max_request_bytes
        self.max_connections = max_connections
        self.addresses: list[tuple[str, int]] = []  # bound (host, port), port 0 resolved
        self._server: asyncio.Server | None = None
        self._handlers: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        """Listen; :class:`MonitorError` if the address cannot be had."""
        try:
            self._server = await asyncio.start_server(
                self._connection,
                self.host or None,
                self.port,
                # The reader's buffer: a line longer than this is refused, and
                # the transport stops reading at twice it (asyncio's rule).
                limit=self.max_request_bytes,
            )
        except OSError as e:
            raise MonitorError(
                f'could not listen for HTTP on "{self.host}" port {self.port}: {e.strerror or e}'
            ) from e
        self.addresses = [s.getsockname()[:2] for s in self._server.sockets]
        log.info(
            "serving /metrics and /status on %s",
            ", ".join(f"http://{_hostport(h, p)}/" for h, p in self.addresses),
        )

    def close(self) -> None:
        """Stop listening and drop the connections being served."""
        if self._server is not None:
            self._server.close()
        for task in list(self._handlers):
            task.cancel()

    async def wait_closed(self) -> None:
        handlers = list(self._handlers)
        if handlers:
            await asyncio.gather(*handlers, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()

    # -- one connection -------------------------------------------------------------

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        if len(self._handlers) >= self.max_connections:
            # No reading, no waiting: the answer fits in the socket buffer
            # (the client may see a reset instead, its request being unread).
            writer.write(_response(503, "text/plain", b"too many connections\n"))
            writer.close()
            return
        self._handlers.add(task)
        try:
            await self._serve(reader, writer)
        except (ConnectionError, TimeoutError, asyncio.IncompleteReadError):
            pass  # the client went away, or would not take the answer in time
        except asyncio.CancelledError:
            # close() ends the connections this way; let the task end plainly
            # (Python 3.11's start_server logs a cancelled handler as an error).
            pass
        finally:
            self._handlers.discard(task)
            # Closed already once the answer is out; otherwise (a client gone,
            # too slow, or the server closing) dropped without lingering.
            writer.transport.abort()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            async with asyncio.timeout(self.read_timeout):
                method, path = await self._read_head(reader)
        except TimeoutError:
            await self._send(reader, writer, _response(408, "text/plain", b"request timeout\n"))
            return
        except _Refused as e:
            body = f"{e}\n".encode()
            extra = (("Allow", _ALLOWED),) if e.code == 405 else ()
            await self._send(reader, writer, _response(e.code, "text/plain", body, extra=extra))
            return
        head_only = method == "HEAD"
        try:
            if path == "/metrics":
                body = metrics.render(self.collect(), version=__version__).encode()
                content_type = metrics.CONTENT_TYPE
            elif path == "/status":
                body = status.render(self.collect()).encode()
                content_type = status.CONTENT_TYPE
            else:
                body = b"not found: try /metrics or /status\n"
                await self._send(reader, writer, _response(404, "text/plain", body, head=head_only))
                return
        except Exception:
            log.exception("collecting the status for %s failed", path)
            await self._send(reader, writer, _response(500, "text/plain", b"internal error\n"))
            return
        await self._send(reader, writer, _response(200, content_type, body, head=head_only))

    async def _read_head(self, reader: asyncio.StreamReader) -> tuple[str, str]:
        """The request line's method and path; the header lines are read and ignored.

        The request line is judged as soon as it is in: garbage is answered
        without waiting for the rest of a head that may never come.
        """
        budget = self.max_request_bytes
        request: tuple[str, str] | None = None
        lines = 0
        while True:
            try:
                line = await reader.readline()
            except ValueError:  # asyncio's "separator not found, chunk exceed the limit"
                raise _Refused(431, "request head too large") from None
            if not line.endswith(b"\n"):
                raise asyncio.IncompleteReadError(line, None)  # closed mid-request
            budget -= len(line)
            lines += 1
            if budget < 0 or lines > _MAX_HEADER_LINES:
                raise _Refused(431, "request head too large")
            if line in (b"\r\n", b"\n"):
                if request is not None:
                    break
                continue  # RFC 9112: empty lines before the request line are ignored
            if request is None:
                request = _request_line(line)
        assert request is not None  # the loop ends only after it
        method, path = request
        if method not in ("GET", "HEAD"):
            raise _Refused(405, f"method {method} not allowed: {_ALLOWED}")
        return method, path

    async def _send(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, data: bytes
    ) -> None:
        """Write the answer, end our side, and close once the client has ended its own.

        A lingering close, as web servers do it: closing with the client's
        bytes unread (a refused head, a request body) makes the kernel reset
        the connection, and a reset can destroy the answer before the client
        reads it. What the client still sends is read and dropped, up to
        _LINGER_BYTES and under the same deadline as the request; a client
        that does not read the answer is cut off at it (TimeoutError).
        """
        writer.write(data)
        if writer.can_write_eof():
            writer.write_eof()
        async with asyncio.timeout(self.read_timeout):
            await writer.drain()
            dropped = 0
            while dropped < _LINGER_BYTES:
                chunk = await reader.read(65536)
                if not chunk:
                    break
                dropped += len(chunk)
            writer.close()
            await writer.wait_closed()


_DAYS: Final = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
_MONTHS: Final = ("Jan", "Feb", "Mar", "Apr", "May", "Jun",
                  "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")  # fmt: skip


def _http_date(unix: float) -> str:
    """RFC 9110's IMF-fixdate, in English whatever the locale (email.utils costs 4 ms to import)."""
    t = time.gmtime(unix)
    return (
        f"{_DAYS[t.tm_wday]}, {t.tm_mday:02d} {_MONTHS[t.tm_mon - 1]} {t.tm_year} "
        f"{t.tm_hour:02d}:{t.tm_min:02d}:{t.tm_sec:02d} GMT"
    )


def _request_line(line: bytes) -> tuple[str, str]:
    """``METHOD /path[?query] HTTP/1.x``: the method and the path; 400 for anything else."""
    try:
        method, target, version = line.decode("ascii").rstrip("\r\n").split(" ")
    except (UnicodeDecodeError, ValueError):
        raise _Refused(400, "not an HTTP/1.x request") from None
    if not version.startswith("HTTP/1.") or not target.startswith("/") or not method.isalpha():
        raise _Refused(400, "not an HTTP/1.x request")
    return method, target.split("?", 1)[0]


def _hostport(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _response(
    code: int,
    content_type: str,
    body: bytes,
    *,
    head: bool = False,
    extra: tuple[tuple[str, str], ...] = (),
) -> bytes:
    headers = [
        f"HTTP/1.1 {code} {_REASONS[code]}",
        f"Date: {_http_date(time.time())}",
        f"Content-Type: {content_type}",
        f"Content-Length: {len(body)}",
        "Cache-Control: no-store",
        "Connection: close",
        *(f"{k}: {v}" for k, v in extra),
    ]
    return ("\r\n".join(headers) + "\r\n\r\n").encode("ascii") + (b"" if head else body)
