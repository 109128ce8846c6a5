"""Requests that wait for a job: how many one web process lets wait (admission), and
whether the client of a waiting request is still there (issue 20).

Two servers run the same views (images/management/commands/serve.py):

- ASGI (`WEB_SERVER=asgi`, the default: gunicorn + uvicorn's worker over platform/asgi.py).
  A waiting request costs no thread and no database connection while it waits. The
  middleware chain and the DRF view still run as sync code (auth, throttles,
  `generation_create`, Idempotency-Key, the envelope), in one call on a pool thread;
  when the view must wait it returns a `DeferredResponse` (the job id, how to render),
  which `PooledASGIHandler` awaits on the event loop (images.notify's one subscriber
  per process), then renders on a thread again. Streams are async iterators
  (images.streaming). Sync code runs at most WEB_THREADS at a time per process, on one
  shared pool of WEB_THREADS threads (instead of Django's thread per open request), so
  at most that many database connections are open, each kept by its thread as
  CONN_MAX_AGE says; a waiting request holds neither a thread nor a connection
  (docs/operations.md has the memory per waiting request).
  A client that leaves: Django cancels the request's task on `http.disconnect`;
  `AsgiClientWatch` turns that into the same outcome as below (a job not yet started
  is abandoned, nothing charged). The cap defaults to ASGI_MAX_WAITING.
- WSGI (gunicorn gthread, `WEB_SERVER=gthread`, and Django's test client): what
  follows; a waiting request holds a thread until its answer.

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

import asyncio
import logging
import select
import socket
import threading
import time
import weakref
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from asgiref.sync import ThreadSensitiveContext, sync_to_async
from django.conf import settings
from django.core import signals
from django.core.exceptions import RequestAborted
from django.core.handlers.asgi import ASGIHandler, get_script_prefix
from django.core.handlers.base import BaseHandler
from django.http import FileResponse, HttpResponse
from django.urls import set_script_prefix
from django.utils.log import log_response

from core.errors import APIError, ServiceUnavailable

# Threads kept for requests that do not wait when WEB_MAX_WAITING is 0 (automatic):
# min(RESERVED_THREADS, WEB_THREADS // 2).
RESERVED_THREADS = 8
# Seconds a busy process asks a refused client to wait (a waiting request ends in seconds).
BUSY_RETRY_AFTER = 2
# How often, in seconds, a waiting request looks whether its client is still there.
CLIENT_POLL_SECONDS = 0.5
# WEB_MAX_WAITING when it is 0 under the ASGI server: sized from memory (a waiting
# request costs tens of KB there; docs/operations.md has the figure measured).
ASGI_MAX_WAITING = 2000

logger = logging.getLogger(__name__)


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
_asgi = False  # set by serve (the ASGI server) and platform/asgi.py


def default_max_waiting(threads: int) -> int:
    """WEB_MAX_WAITING when it is 0 (automatic): `threads` minus min(8, threads // 2)."""
    return threads - min(RESERVED_THREADS, threads // 2)


def waiting_limit() -> int:
    """How many requests of this process may wait for a job at once."""
    if _asgi:
        return settings.WEB_MAX_WAITING or ASGI_MAX_WAITING
    return settings.WEB_MAX_WAITING or default_max_waiting(_threads or settings.WEB_THREADS)


def waiting_configure(*, threads: int, asgi: bool = False) -> int:
    """Fix this process's server (serve.py, before gunicorn forks) and return the cap.
    ASGI: WEB_MAX_WAITING, or ASGI_MAX_WAITING when 0; ValueError below 1. Threads
    (gthread): ValueError when the cap would not leave at least one thread to the
    requests that do not wait (1 <= WEB_MAX_WAITING < threads)."""
    global _threads, _asgi
    if asgi:
        _asgi = True
        limit = settings.WEB_MAX_WAITING or ASGI_MAX_WAITING
        if limit < 1:
            raise ValueError(f"WEB_MAX_WAITING={limit} must be at least 1")
        return limit
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
        (after its last byte, or when its client went away). An async stream (ASGI)
        gives it back when its iterator ends or is cancelled, or when the response is
        closed without being read."""
        if getattr(response, "is_async", False):
            response.streaming_content = _closing_async(response.streaming_content, self.release)
            response._resource_closers.append(self.release)
            return
        response.streaming_content = _ClosingIterator(iter(response.streaming_content), self.release)


async def _closing_async(inner, on_close):
    try:
        async for chunk in inner:
            yield chunk
    finally:
        on_close()


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


def client_watch_of(request: Any) -> ClientWatch:
    """The watch of a request (a DRF or Django request): the ASGI one WaitingMiddleware
    put there, else gunicorn's socket (gthread), else one that never leaves."""
    meta = request.META
    watch = meta.get("platform.client_watch")
    return watch if isinstance(watch, ClientWatch) else client_watch(meta)


# ---- ASGI: waiting without a thread ----------------------------------------------------------


@dataclass
class AsgiClientWatch(ClientWatch):
    """The client of one ASGI request. `left` is set on the event loop when Django
    cancels the request (the client disconnected); the view's thread reads it through
    `gone()` (generation_create refuses before holding anything). Cleanups registered
    by the view (`handoff`: abandon the job, give the waiting place back) run exactly
    once if the client leaves before `settle`, whichever side comes second."""

    _lock: threading.Lock = field(default_factory=threading.Lock)
    _cleanups: list[Callable[[], Any]] = field(default_factory=list)

    def gone(self) -> bool:
        return self.left

    def handoff(self, cleanup: Callable[[], Any]) -> bool:
        """Run `cleanup` if the client leaves; run it now (and return False) if it already left."""
        with self._lock:
            if not self.left:
                self._cleanups.append(cleanup)
                return True
        _run_cleanups([cleanup])
        return False

    def leave(self) -> None:
        """The client left (sync: run it in a thread): the registered cleanups run now."""
        with self._lock:
            self.left = True
            cleanups, self._cleanups = self._cleanups, []
        _run_cleanups(cleanups)

    async def leave_async(self) -> None:
        """`leave` from the event loop: a thread (a pool permit) only when the view has
        registered cleanups; a request that left before its view ran needs none."""
        with self._lock:
            self.left = True
            cleanups, self._cleanups = self._cleanups, []
        if cleanups:
            await run_sync(_run_cleanups, cleanups)

    def settle(self) -> None:
        """The answer is made: nothing to clean up any more."""
        with self._lock:
            self._cleanups = []


def _run_cleanups(cleanups: list[Callable[[], Any]]) -> None:
    for cleanup in cleanups:
        try:
            cleanup()
        except Exception:
            logger.exception("cleanup after a client left failed")


def request_is_asgi(request: Any) -> bool:
    """Whether this request came through WaitingMiddleware's async path (then a view may
    answer with a DeferredResponse)."""
    return isinstance(request.META.get("platform.client_watch"), AsgiClientWatch)


class DeferredResponse(HttpResponse):
    """What a sync view returns under ASGI when its answer needs a job to finish:
    WaitingMiddleware awaits `wait()` on the event loop (no thread, no connection),
    then runs `finish(outcome)` on a thread, which returns the final, rendered response.
    `slot` (a WaitingSlot) is given back when it is done, whatever happened."""

    slot: WaitingSlot | None = None

    async def wait(self) -> Any:
        raise NotImplementedError

    def finish(self, outcome: Any) -> HttpResponse:
        raise NotImplementedError


# ---- Answers made on the event loop, before Django ------------------------------------------


@dataclass(frozen=True)
class FastAnswer:
    """A complete HTTP answer made without Django: the status, the headers as (name,
    value) strings in the order they are sent (latin-1, as Django encodes them), and the
    whole body."""

    status: int
    headers: list[tuple[str, str]]
    body: bytes


# A fast route: the ASGI scope of a GET request (path, query_string, headers) -> the
# answer, or None to let Django answer (the normal path, unchanged).
FastRoute = Callable[[dict[str, Any]], FastAnswer | None]

_fast_routes: list[tuple[str, FastRoute]] = []


def fast_route_register(path_prefix: str, route: FastRoute) -> None:
    """Offer the GET requests whose path starts with `path_prefix` to `route` before
    Django sees them (PooledASGIHandler only; the WSGI server and Django's test client
    never consult it). Registering the same route again changes nothing.

    The contract (core imports no app, so an app registers itself from its ready()):
    `route(scope)` runs on the event loop, so it must be quick (no database; a Redis
    round trip or two) and must answer only when its answer is certain to equal
    Django's, headers included; for anything else it returns None, and Django answers.
    An exception is logged at debug level and Django answers; so a route must not raise
    after doing anything that Django would do again (count a rate limit...)."""
    if not any(prefix == path_prefix and existing is route for prefix, existing in _fast_routes):
        _fast_routes.append((path_prefix, route))


def fast_route_unregister(route: FastRoute) -> None:
    """Stop offering requests to `route` (tests, an app switched off)."""
    _fast_routes[:] = [(prefix, existing) for prefix, existing in _fast_routes if existing is not route]


def fast_answer(scope: dict[str, Any]) -> FastAnswer | None:
    """The answer of the first registered route that makes one for this GET request, or
    None (Django answers). A request with a body (a Content-Length other than 0, or a
    Transfer-Encoding) always goes to Django, which reads it."""
    if scope.get("method") != "GET":
        return None
    path = scope.get("path", "")
    routes = [route for prefix, route in _fast_routes if path.startswith(prefix)]
    if not routes:
        return None
    for name, value in scope.get("headers", ()):
        if (name == b"content-length" and value.strip() != b"0") or name == b"transfer-encoding":
            return None
    for route in routes:
        try:
            answer = route(scope)
        except Exception:
            logger.debug("fast route %r failed on %s; Django answers", route, path, exc_info=True)
            return None
        if answer is not None:
            return answer
    return None


async def fast_answer_send(answer: FastAnswer, send: Callable[[dict[str, Any]], Any]) -> None:
    """Send a FastAnswer as Django's ASGIHandler.send_response sends a response."""
    await send(
        {
            "type": "http.response.start",
            "status": answer.status,
            "headers": [(name.encode("latin-1"), value.encode("latin-1")) for name, value in answer.headers],
        }
    )
    await send({"type": "http.response.body", "body": answer.body})


# ---- The ASGI handler: one bounded pool of sync threads per process ----------------------


def connections_tidy() -> None:
    """Django's request-end rule for this thread's database connections, applied after
    every sync chunk on a pool thread: a connection outside a transaction is closed
    when it is past CONN_MAX_AGE (so 0 closes it at once) or unusable after an error;
    otherwise it stays open for the thread's next chunk. (The health check flag is left
    alone: Django's request signals reset it once per request.)"""
    from django.db import connections

    now = time.monotonic()
    for conn in connections.all(initialized_only=True):
        conn.pool_used_at = now
        if conn.connection is None or conn.in_atomic_block:
            continue
        if conn.errors_occurred:
            conn.close_if_unusable_or_obsolete()
        elif conn.close_at is not None and time.monotonic() >= conn.close_at:
            conn.close()


# A pool thread's connection idle longer than this (seconds) is health-checked (one
# `SELECT 1`, CONN_HEALTH_CHECKS) at its next use: Django's request_started signal
# resets the check on one pool thread only, not on the one that runs the view.
IDLE_HEALTH_CHECK_SECONDS = 1.0


def connections_recheck_idle() -> None:
    """Before a sync chunk on a pool thread: ask Django to health-check this thread's
    connections that sat idle (a database restart meanwhile leaves them broken)."""
    from django.db import connections

    now = time.monotonic()
    for conn in connections.all(initialized_only=True):
        if conn.connection is not None and now - getattr(conn, "pool_used_at", 0.0) > IDLE_HEALTH_CHECK_SECONDS:
            conn.health_check_done = False


class _SyncPool(ThreadPoolExecutor):
    def submit(self, fn, /, *args, **kwargs):
        def call():
            connections_recheck_idle()
            try:
                return fn(*args, **kwargs)
            finally:
                connections_tidy()

        return super().submit(call)


_sync_pool: ThreadPoolExecutor | None = None
_sync_pool_lock = threading.Lock()


def sync_pool() -> ThreadPoolExecutor:
    """This process's executor for all sync request code under ASGI: WEB_THREADS threads
    (at least 1), created on first use (so after gunicorn forks). Each thread keeps its
    own database connection (CONN_MAX_AGE as configured), so a process holds at most
    WEB_THREADS connections however many requests are open."""
    global _sync_pool
    with _sync_pool_lock:
        if _sync_pool is None:
            _sync_pool = _SyncPool(max_workers=max(1, settings.WEB_THREADS), thread_name_prefix="web-sync")
        return _sync_pool


class PooledASGIHandler(ASGIHandler):
    """Django's ASGIHandler, but every request's sync code runs on the process's shared
    pool (`sync_pool`) in as few hops as possible: the request signal, the whole
    middleware chain and the view in ONE call on a pool thread (the chain is loaded
    sync, as under WSGI), then one more to close the response. Django's own handler
    (a) opens a fresh ThreadSensitiveContext per request, whose single-thread executor
    stays parked (one idle thread, ~200 KB, and its database connection) as long as the
    request is open, e.g. the minutes a synchronous generation waits; and (b) runs an
    async chain in which each of Django's sync middlewares crosses to a thread and back
    for its request and its response half: 23 hops for one task poll here. With one
    shared FIFO pool, N concurrent requests then advance one hop each per round and
    none is answered before about N x 23 hops are done: 1,000 pollers got no answer in
    10 s (issue 20). Here a request costs 2 hops (3 when it waits) and holds no thread
    while it waits.

    Waiting: when the view answers with a `DeferredResponse` (`request_is_asgi`: the
    handler put an `AsgiClientWatch` in `META["platform.client_watch"]`), the handler
    awaits `wait()` on the event loop, renders `finish(outcome)` on a pool thread and
    sends that answer with the headers the middlewares set on the deferred one
    (x-request-id, rate-limit and security headers; not its Content-Type and
    Content-Length). When the client disconnects (Django cancels the request), the
    view's cleanups run (`AsgiClientWatch.leave_async`: a job not yet started is
    abandoned, nothing charged). Writes (not GET, HEAD, OPTIONS) run their chain under
    `_sync_limit`, so that the pool always keeps threads for reads. Each sync call is
    self-contained (a transaction and its `on_commit` callbacks begin and end inside
    one), so successive calls of one request may run on different pool threads.
    Nested AsyncToSync calls from a pool thread still return to that thread (asgiref's
    CurrentThreadExecutor).

    Fast routes: a GET without a body is first offered to the routes registered with
    `fast_route_register` (on the event loop, before any request object, thread or
    middleware); one that answers is sent as is, and every other request goes to Django
    as above."""

    def __init__(self) -> None:
        BaseHandler.__init__(self)
        self.load_middleware(is_async=False)

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            raise ValueError(f"Django can only handle ASGI/HTTP connections, not {scope['type']}.")
        if _fast_routes and scope["method"] == "GET":
            answer = fast_answer(scope)
            if answer is not None:
                await fast_answer_send(answer, send)
                return
        async with ThreadSensitiveContext(executor=sync_pool()):
            await self.handle(scope, receive, send)

    def _chain(self, request: Any, scope: dict) -> HttpResponse:
        """On a pool thread: what Django's handlers do before and around the view."""
        signals.request_started.send(sender=self.__class__, scope=scope)
        response = self.get_response(request)
        response._handler_class = self.__class__
        if isinstance(response, FileResponse):
            response.block_size = self.chunk_size
        return response

    async def _respond(self, request: Any, scope: dict, watch: AsgiClientWatch) -> HttpResponse:
        try:
            if request.method in READ_METHODS:
                response = await sync_to_async(self._chain)(request, scope)
            else:
                async with _sync_limit():
                    response = await sync_to_async(self._chain)(request, scope)
            if isinstance(response, DeferredResponse):
                deferred = response
                try:
                    outcome = await deferred.wait()
                    response = await sync_to_async(_finish_deferred)(deferred, outcome, request)
                finally:
                    if deferred.slot is not None:
                        deferred.slot.release()
            return response
        except asyncio.CancelledError:
            await asyncio.shield(watch.leave_async())
            raise
        finally:
            if not watch.left:
                watch.settle()

    async def handle(self, scope, receive, send):
        """Django's ASGIHandler.handle (body, disconnect watch, send, close), with the
        sync work in `_respond`'s hops."""
        try:
            body_file = await self.read_body(receive)
        except RequestAborted:
            return
        set_script_prefix(get_script_prefix(scope))
        request, error_response = self.create_request(scope, body_file)
        if request is None:
            body_file.close()
            await self.send_response(error_response, send)
            await sync_to_async(error_response.close)()
            return
        watch = AsgiClientWatch()
        request.META["platform.client_watch"] = watch

        async def process_request():
            response = await self._respond(request, scope, watch)
            try:
                await self.send_response(response, send)
            except asyncio.CancelledError:
                pass  # the client left while the answer was sent
            return response

        tasks = [
            asyncio.create_task(self.listen_for_disconnect(receive)),
            asyncio.create_task(process_request()),
        ]
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        for task in tasks:
            if task.done():
                try:
                    task.result()
                except RequestAborted:
                    pass
                except AssertionError:
                    body_file.close()
                    raise
            else:
                task.cancel()
                try:
                    await task
                except asyncio.CancelledError:
                    pass
        try:
            response = tasks[1].result()
        except asyncio.CancelledError:
            await sync_to_async(signals.request_finished.send)(sender=self.__class__)
        else:
            await sync_to_async(response.close)()
        body_file.close()


# Headers of a DeferredResponse that belong to its own (empty) body, not to the request.
_BODY_HEADERS = frozenset({"content-type", "content-length"})


def _finish_deferred(deferred: DeferredResponse, outcome: Any, request: Any) -> HttpResponse:
    """On a pool thread: the final answer of a DeferredResponse, carrying the headers
    the middleware chain set on the deferred one and its closers (the request's files,
    the request_finished signal once). Logged as Django logs any 4xx/5xx answer."""
    response = deferred.finish(outcome)
    for header, value in deferred.items():
        if header.lower() not in _BODY_HEADERS and not response.has_header(header):
            response[header] = value
    if not response.streaming and not response.has_header("Content-Length"):
        response["Content-Length"] = str(len(response.content))
    response._resource_closers.extend(deferred._resource_closers)
    deferred._resource_closers = []
    response._handler_class = getattr(deferred, "_handler_class", None)
    if response.status_code >= 400:
        log_response("%s: %s", response.reason_phrase, request.path, response=response, request=request)
    return response


_sync_limits: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _sync_limit() -> asyncio.Semaphore:
    """This loop's limit on the sync chunks of requests that write or wait (a POST view,
    `run_sync`): WEB_THREADS - min(8, WEB_THREADS // 2) at once, so that however many
    generations queue for the pool, the other threads stay free for GET requests
    (balance, tasks, models, usage), which take no permit and are never queued behind
    them."""
    loop = asyncio.get_running_loop()
    limit = _sync_limits.get(loop)
    if limit is None:
        threads = max(1, settings.WEB_THREADS)
        limit = _sync_limits[loop] = asyncio.Semaphore(max(1, default_max_waiting(threads)))
    return limit


def _closing_connections(fn: Callable[..., Any]) -> Callable[..., Any]:
    def call(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        finally:
            connections_tidy()

    return call


async def run_sync(fn: Callable[..., Any], *args: Any, close_db: bool = True, **kwargs: Any) -> Any:
    """Run sync code (ORM, sync Redis) on the process's sync pool (PooledASGIHandler), at
    most WEB_THREADS at a time; with `close_db`, its thread's database connections are
    closed after when unusable or older than CONN_MAX_AGE (Django's request-end rule),
    else kept for the thread's next chunk."""
    async with _sync_limit():
        return await sync_to_async(_closing_connections(fn) if close_db else fn)(*args, **kwargs)


# Methods whose views only read: not limited by _sync_limit.
READ_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


async def run_sync_view(get_response: Callable[[Any], Any], request: Any) -> Any:
    """The rest of the middleware chain (the sync view): a POST (or any write) under the
    same limit as `run_sync`, a read at once (on the pool's free threads)."""
    if request.method in READ_METHODS:
        return await get_response(request)
    async with _sync_limit():
        return await get_response(request)
