"""Requests that wait for a job: how many one web process lets wait (admission), and
whether the client of a waiting request is still there (issue 20).

A synchronous generation (an edit, a variation, a vendor shape) and a `stream: true`
request keep a gunicorn thread (serve.py: the gthread worker, WEB_THREADS per process)
until their job ends, seconds to minutes. Without a cap, WEB_THREADS of them take every
thread and gunicorn queues every later request behind them, a balance check included.

Admission. `waiting_slot_take` counts this process's waiting requests and refuses one
past WEB_MAX_WAITING at once with 503 `server_busy` and Retry-After, before anything is
held or written; a retry can succeed, so the SDKs' retry is welcome. WEB_THREADS -
WEB_MAX_WAITING threads are thereby always left to the requests that do not wait
(balance, models, tasks, usage, `Prefer: respond-async` submissions, the refusals
themselves). `waiting_configure` (serve.py) refuses a cap that leaves no thread free.

Clients that leave. gunicorn hands the application its client socket
(`environ["gunicorn.socket"]`). `ClientWatch.gone` asks the kernel, reading nothing,
whether the peer has closed its end: POLLRDHUP (or a hang-up or error) on Linux;
elsewhere, a readable socket whose MSG_PEEK returns no byte. Unread bytes (a pipelined
next request) do not count as leaving. Behind a proxy this is the proxy's connection,
which nginx closes when its client does (`proxy_ignore_client_abort off`, the default).
Without a socket (the Django test client, another WSGI server) a client never leaves.
A client that half-closes its connection after sending (shutdown(SHUT_WR)) is taken to
have left, as nginx does.
"""

from __future__ import annotations

import select
import socket
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from django.conf import settings

from core.errors import APIError, ServiceUnavailable

# Threads kept for requests that do not wait when WEB_MAX_WAITING is 0 (automatic):
# min(RESERVED_THREADS, WEB_THREADS // 2).
RESERVED_THREADS = 8
# Seconds a busy process asks a refused client to wait (a waiting request ends in seconds).
BUSY_RETRY_AFTER = 2
# How often, in seconds, a waiting request looks whether its client is still there.
CLIENT_POLL_SECONDS = 0.5


class ServerBusy(ServiceUnavailable):
    """503: this web process already has WEB_MAX_WAITING requests waiting for their jobs.
    Nothing was held or written; retrying (after Retry-After) may succeed, here or on
    another process."""

    code = "server_busy"
    should_retry = True


class ClientDisconnected(APIError):
    """The client closed its connection before its answer. Nobody reads this answer; it
    is there for the access log and the error metrics (nginx's 499 convention)."""

    status_code = 499
    type = "invalid_request_error"
    code = "client_disconnected"
    should_retry = False


# ---- Admission ---------------------------------------------------------------------------

_lock = threading.Lock()
_waiting = 0
_threads: int | None = None  # this process's gunicorn threads, set by serve (else WEB_THREADS)


def default_max_waiting(threads: int) -> int:
    """WEB_MAX_WAITING when it is 0 (automatic): `threads` minus min(8, threads // 2)."""
    return threads - min(RESERVED_THREADS, threads // 2)


def waiting_limit() -> int:
    """How many requests of this process may wait for a job at once."""
    return settings.WEB_MAX_WAITING or default_max_waiting(_threads or settings.WEB_THREADS)


def waiting_configure(*, threads: int) -> int:
    """Fix this process's thread count (serve.py, before gunicorn forks) and return the
    cap. ValueError when the cap would not leave at least one thread to the requests
    that do not wait (1 <= WEB_MAX_WAITING < threads)."""
    global _threads
    limit = settings.WEB_MAX_WAITING or default_max_waiting(threads)
    if not 1 <= limit < threads:
        raise ValueError(
            f"WEB_MAX_WAITING={limit} must be at least 1 and below the {threads} threads per process "
            "(WEB_THREADS), so that requests which do not wait always find a free thread"
        )
    _threads = threads
    return limit


def waiting_count() -> int:
    """Requests of this process waiting for a job now."""
    return _waiting


class WaitingSlot:
    """One request's place among the waiting; `release` is idempotent."""

    def __init__(self) -> None:
        self._held = True

    def release(self) -> None:
        global _waiting
        with _lock:
            if self._held:
                self._held = False
                _waiting -= 1

    def release_when_closed(self, response: Any) -> None:
        """For a streaming response: keep the slot until the server closes the response
        (after its last byte, or when its client went away)."""
        response.streaming_content = _ClosingIterator(iter(response.streaming_content), self.release)


class _ClosingIterator:
    """Django registers an iterator's `close` to run when the response is closed."""

    def __init__(self, inner: Iterator[bytes], on_close) -> None:
        self._inner = inner
        self._on_close = on_close

    def __iter__(self) -> _ClosingIterator:
        return self

    def __next__(self) -> bytes:
        return next(self._inner)

    def close(self) -> None:
        try:
            close = getattr(self._inner, "close", None)
            if close is not None:
                close()
        finally:
            self._on_close()


def waiting_slot_take() -> WaitingSlot:
    """Take a waiting slot or raise ServerBusy (503, Retry-After) at once."""
    global _waiting
    limit = waiting_limit()
    with _lock:
        if _waiting >= limit:
            full = True
        else:
            _waiting += 1
            full = False
    if full:
        raise ServerBusy(
            f"This server is busy: {limit} requests are already waiting for their images here. "
            f"Nothing was charged. Retry in {BUSY_RETRY_AFTER} s, or submit with "
            "'Prefer: respond-async' and poll the task.",
            headers={"Retry-After": str(BUSY_RETRY_AFTER)},
        )
    return WaitingSlot()


# ---- Clients that leave --------------------------------------------------------------------

_HANGUP = select.POLLHUP | select.POLLERR | select.POLLNVAL | getattr(select, "POLLRDHUP", 0)


def socket_closed(sock: socket.socket) -> bool:
    """Whether the peer of a connected stream socket has closed (or reset) its end.
    Never blocks and never consumes a byte."""
    try:
        fd = sock.fileno()
    except (OSError, ValueError):
        return True
    if fd < 0:
        return True
    if hasattr(select, "POLLRDHUP"):  # Linux: the peer's FIN is seen even with unread bytes
        poller = select.poll()
        poller.register(fd, _HANGUP)
        return any(events & _HANGUP for _, events in poller.poll(0))
    readable, _, _ = select.select([fd], [], [], 0)
    if not readable:
        return False
    try:
        return sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b""
    except (BlockingIOError, InterruptedError, ValueError):  # (ValueError: a TLS socket takes no flags)
        return False
    except OSError:  # reset
        return True


@dataclass
class ClientWatch:
    """The client of one request; `gone()` stays True once it has been seen to leave."""

    sock: socket.socket | None = None
    left: bool = False

    def gone(self) -> bool:
        if not self.left and self.sock is not None:
            self.left = socket_closed(self.sock)
        return self.left


def client_watch(environ: Mapping[str, Any]) -> ClientWatch:
    """The watch for a WSGI request (its `META`): gunicorn's socket, or none."""
    sock = environ.get("gunicorn.socket")
    return ClientWatch(sock if isinstance(sock, socket.socket) else None)
