"""core/waiting.py on real sockets and real settings: whether a client has left, and the
cap on waiting requests that serve.py configures (issue 20)."""

from __future__ import annotations

import socket

import pytest

from core import waiting


@pytest.fixture
def pair():
    server, client = socket.socketpair()
    yield server, client
    server.close()
    client.close()


def test_an_open_connection_has_not_left(pair):
    server, _ = pair
    assert waiting.socket_closed(server) is False


def test_unread_bytes_of_a_pipelined_request_are_not_leaving_and_stay_unread(pair):
    server, client = pair
    client.sendall(b"GET /v1/balance HTTP/1.1\r\n\r\n")
    assert waiting.socket_closed(server) is False
    assert server.recv(64) == b"GET /v1/balance HTTP/1.1\r\n\r\n"  # nothing was consumed


@pytest.mark.parametrize("how", ["close", "shutdown"])
def test_a_peer_that_closed_or_half_closed_has_left(pair, how):
    server, client = pair
    client.sendall(b"unread")  # even with bytes still unread
    if how == "close":
        client.close()
    else:
        client.shutdown(socket.SHUT_WR)
    assert waiting.socket_closed(server) is True


def test_a_watch_without_a_socket_never_sees_the_client_leave():
    watch = waiting.client_watch({})  # the Django test client, another WSGI server
    assert watch.gone() is False and watch.left is False


def test_a_watch_remembers_that_the_client_left(pair):
    server, client = pair
    watch = waiting.client_watch({"gunicorn.socket": server})
    assert watch.gone() is False
    client.close()
    assert watch.gone() is True and watch.left is True


def test_the_default_cap_keeps_threads_for_requests_that_do_not_wait(settings):
    settings.WEB_MAX_WAITING = 0
    assert waiting.default_max_waiting(32) == 24
    assert waiting.default_max_waiting(8) == 4
    assert waiting.default_max_waiting(2) == 1
    settings.WEB_MAX_WAITING = 30
    assert waiting.waiting_configure(threads=32) == 30


@pytest.mark.parametrize(("threads", "cap"), [(32, 32), (32, 40), (1, 0)])
def test_a_cap_that_leaves_no_thread_free_is_refused(settings, threads, cap):
    settings.WEB_MAX_WAITING = cap
    with pytest.raises(ValueError, match="WEB_MAX_WAITING"):
        waiting.waiting_configure(threads=threads)


def test_slots_past_the_cap_are_refused_and_come_back_once_released(settings):
    settings.WEB_MAX_WAITING = 2
    taken = [waiting.waiting_slot_take(), waiting.waiting_slot_take()]
    try:
        with pytest.raises(waiting.ServerBusy) as refused:
            waiting.waiting_slot_take()
        assert refused.value.status_code == 503 and refused.value.headers["Retry-After"] == "2"
        taken[0].release()
        taken[0].release()  # idempotent: gives back one place only
        taken.append(waiting.waiting_slot_take())
        with pytest.raises(waiting.ServerBusy):
            waiting.waiting_slot_take()
    finally:
        for slot in taken:
            slot.release()
    assert waiting.waiting_count() == 0
