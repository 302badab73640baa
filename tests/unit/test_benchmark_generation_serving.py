"""The generation benchmark's open loop against a stand-in service whose every stream takes
300 ms to its first event: the client must not cap the streams in flight (a capped pool makes
requests queue in the client, and that wait was counted as the service's time to first token)."""

import asyncio
import socket
import threading
import time

import uvicorn
from starlette.applications import Starlette
from starlette.responses import StreamingResponse
from starlette.routing import Route

from benchmarks.generation_serving import _level

DELAY_S = 0.3


async def generate(request):
    await request.body()

    async def events():
        await asyncio.sleep(DELAY_S)
        yield b'data: {"text": "a"}\n\n'
        yield b'data: {"done": true, "completion_tokens": 1}\n\n'
    return StreamingResponse(events(), media_type="text/event-stream")


def test_open_loop_streams_are_not_capped_by_the_client():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(Starlette(routes=[Route("/generate", generate,
                                                                    methods=["POST"])]),
                                           host="127.0.0.1", port=port, log_level="error"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.time() + 20
    while not server.started and time.time() < deadline:
        time.sleep(0.05)
    try:
        # 80 requests/s x 0.3 s: ~24 streams in flight from one client process
        got = asyncio.run(_level(f"http://127.0.0.1:{port}/generate", ["hi"], 1, 2.0, 1, True,
                                 rate=80.0, drain_s=10.0))
    finally:
        server.should_exit = True
        thread.join(10)
    assert got["errors"] == 0 and len(got["ttft"]) >= 150
    ttft = sorted(got["ttft"])
    # each first event is 0.3 s away; a pool capped at 9 made the last ones wait over 1.5 s
    assert ttft[int(0.99 * (len(ttft) - 1))] < DELAY_S + 0.25, ttft[-5:]
