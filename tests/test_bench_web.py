"""The web benchmark's own HTTP client and /proc readings (tools/bench/web.py), against a
small asyncio server in the test: answers by Content-Length, chunked and event streams
are read, and a held request's close() is seen by the server as the client leaving."""

from __future__ import annotations

import asyncio
import os

from tools.bench.web import HeldRequest, held_tally, one_request, request_bytes, session_usage

BUSY = b'{"error": {"message": "busy", "type": "server_error", "param": null, "code": "server_busy"}}'


async def serve(left: asyncio.Event):
    """/busy: a 503 envelope by Content-Length; /chunked: a chunked JSON body; /stream: an
    event stream that writes until its client leaves, then sets `left`."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = (await reader.readuntil(b"\r\n\r\n")).decode()
        path = head.split()[1]
        if path == "/busy":
            writer.write(b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n")
            writer.write(b"Content-Length: %d\r\n\r\n%s" % (len(BUSY), BUSY))
        elif path == "/chunked":
            writer.write(b'HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\n{"a":\r\n2\r\n1}\r\n0\r\n\r\n')
        else:
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n\r\n: open\n\n")
            await writer.drain()
            await reader.read()  # until the client closes its end
            left.set()
        await writer.drain()
        writer.close()

    return await asyncio.start_server(handle, "127.0.0.1", 0)


def test_answers_are_read_and_a_closed_stream_is_seen_by_the_server():
    async def scenario():
        left = asyncio.Event()
        server = await serve(left)
        port = server.sockets[0].getsockname()[1]
        busy = await one_request("127.0.0.1", port, request_bytes("GET", "/busy", "h", "k", None), timeout=5)
        chunked = await one_request("127.0.0.1", port, request_bytes("GET", "/chunked", "h", "k", None), timeout=5)
        held = HeldRequest("127.0.0.1", port, request_bytes("POST", "/stream", "h", "k", {"stream": True}))
        await held.open()
        for _ in range(100):
            if held.stream_bytes:
                break
            await asyncio.sleep(0.01)
        still_open = not held.reader_task.done() and not left.is_set()
        open_tally = held_tally([held])
        held.close()
        await asyncio.wait_for(left.wait(), timeout=5)
        server.close()
        return busy, chunked, held, still_open, open_tally

    busy, chunked, held, still_open, open_tally = asyncio.run(scenario())
    assert (busy.status, busy.code) == (503, "server_busy")
    assert chunked.status == 200 and chunked.body == b'{"a":1}'
    assert held.answer.status == 200 and held.stream_head == b": open\n\n" and still_open
    assert open_tally == {"200, streaming (waiting)": 1}  # (tallied while held, as the bench does)
    assert held_tally([held]) == {"200, stream ended (closed by the server)": 1}  # (after close)


def test_session_usage_counts_this_process():
    rss_kb, cpu_s = session_usage(os.getsid(0))
    assert rss_kb > 10_000 and cpu_s > 0  # (pytest alone is well over 10 MB)
