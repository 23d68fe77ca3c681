"""A fast fixed-response upstream for the benchmarks: raw ASGI under uvicorn, shaped
like vLLM's OpenAI server, doing no work beyond answering.

    python bench/upstream.py --port 8101 --chunks 10 --gap-ms 20

Routes: POST /v1/chat/completions (JSON with `usage`, or SSE when `stream` is true:
a role chunk, `--chunks` content chunks with `--gap-ms` between them, the usage chunk
when `stream_options.include_usage`, `data: [DONE]`), GET /v1/models, GET /health,
GET /version, GET /metrics (a tiny exposition, so health checks pass).

Request fields change one answer, so one upstream serves every benchmark: `max_tokens`
(the number of content chunks, as in vLLM), `vllm_xargs.bench_gap_ms` (the gap for this
stream; the 1,000-stream memory test holds streams open with it) and
`vllm_xargs.bench_burst` (content chunks written at once, for the saturation test: the
upstream then costs little per event, so the gateway, not it, is what is saturated).
"""

import argparse
import asyncio
import contextlib
import json
import time
from collections.abc import Awaitable, Callable
from typing import Any

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]

FINGERPRINT = "vllm-bench-upstream"
JSON_HEADERS = [(b"content-type", b"application/json")]
SSE_HEADERS = [(b"content-type", b"text/event-stream; charset=utf-8")]


class Upstream:
    def __init__(self, *, model: str, chunks: int, gap: float, max_model_len: int) -> None:
        self.model = model
        self.chunks = chunks
        self.gap = gap
        self.models = json.dumps(
            {
                "object": "list",
                "data": [
                    {
                        "id": model,
                        "object": "model",
                        "created": int(time.time()),
                        "owned_by": "vllm",
                        "root": model,
                        "parent": None,
                        "max_model_len": max_model_len,
                        "permission": [],
                    }
                ],
            },
            separators=(",", ":"),
        ).encode()
        self.metrics = (
            b"# HELP vllm:num_requests_running Number of requests in model execution batches.\n"
            b"# TYPE vllm:num_requests_running gauge\n"
            b'vllm:num_requests_running{engine="0",model_name="' + model.encode() + b'"} 0.0\n'
        )
        self.counter = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        if scope["type"] != "http":
            return
        method, path = scope["method"], scope["path"]
        if method == "POST" and path == "/v1/chat/completions":
            await self.chat(receive, send)
        elif method == "GET" and path == "/v1/models":
            await answer(send, 200, self.models)
        elif method == "GET" and path == "/health":
            await answer(send, 200, b"", headers=[])
        elif method == "GET" and path == "/version":
            await answer(send, 200, b'{"version":"bench"}')
        elif method == "GET" and path == "/metrics":
            await answer(send, 200, self.metrics, headers=[(b"content-type", b"text/plain")])
        else:
            await answer(send, 404, b'{"detail":"Not Found"}')

    async def chat(self, receive: Receive, send: Send) -> None:
        raw = b""
        while True:
            message = await receive()
            raw += message.get("body", b"")
            if not message.get("more_body"):
                break
        try:
            body = json.loads(raw)
        except ValueError:
            body = None
        if not isinstance(body, dict) or not body.get("messages"):
            await answer(send, 400, b'{"error":{"message":"bad request","type":"BadRequestError"}}')
            return
        self.counter += 1
        completion_id = f"chatcmpl-bench{self.counter:012x}"
        model = str(body.get("model") or self.model)
        chunks = body.get("max_tokens")
        chunks = chunks if isinstance(chunks, int) and 0 < chunks <= 100_000 else self.chunks
        if not body.get("stream"):
            await answer(send, 200, self.whole(completion_id, model, chunks))
            return
        options = body.get("stream_options") or {}
        xargs = body.get("vllm_xargs") or {}
        gap = xargs.get("bench_gap_ms") if isinstance(xargs, dict) else None
        gap_seconds = gap / 1000 if isinstance(gap, int | float) and gap >= 0 else self.gap
        burst = xargs.get("bench_burst") if isinstance(xargs, dict) else None
        burst = burst if isinstance(burst, int) and burst > 0 else 1
        usage = isinstance(options, dict) and options.get("include_usage") is True
        with contextlib.suppress(OSError):  # the client left: nothing to clean up
            await self.stream(send, completion_id, model, chunks, gap_seconds, usage, burst)

    def whole(self, completion_id: str, model: str, chunks: int) -> bytes:
        return json.dumps(
            {
                "id": completion_id,
                "object": "chat.completion",
                "created": int(time.time()),
                "model": model,
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": " tok" * chunks},
                        "logprobs": None,
                        "finish_reason": "length",
                        "stop_reason": None,
                    }
                ],
                "system_fingerprint": FINGERPRINT,
                "usage": {
                    "prompt_tokens": 12,
                    "total_tokens": 12 + chunks,
                    "completion_tokens": chunks,
                },
            },
            separators=(",", ":"),
        ).encode()

    async def stream(
        self,
        send: Send,
        completion_id: str,
        model: str,
        chunks: int,
        gap: float,
        usage: bool,
        burst: int = 1,
    ) -> None:
        envelope = (
            f'data: {{"id":"{completion_id}","object":"chat.completion.chunk",'
            f'"created":{int(time.time())},"model":{json.dumps(model)},"choices":'
        ).encode()
        await send({"type": "http.response.start", "status": 200, "headers": SSE_HEADERS})

        async def event(choices: bytes) -> None:
            body = envelope + choices + b"}\n\n"
            await send({"type": "http.response.body", "body": body, "more_body": True})

        await event(
            b'[{"index":0,"delta":{"role":"assistant","content":""},'
            b'"logprobs":null,"finish_reason":null}]'
        )
        token = (
            envelope + b'[{"index":0,"delta":{"content":" tok"},"logprobs":null,"finish_reason":'
        )
        pending: list[bytes] = []
        for index in range(chunks):
            # The first token goes at once (time to first token is the transport's own);
            # the gap separates the following ones; a burst goes out in one write.
            if index and gap:
                await asyncio.sleep(gap)
            finish = b'"length"' if index == chunks - 1 else b"null"
            pending.append(token + finish + b"}]}\n\n")
            if index == 0 or len(pending) == burst or index == chunks - 1:
                body = b"".join(pending)
                pending.clear()
                await send({"type": "http.response.body", "body": body, "more_body": True})
        if usage:
            await event(
                b'[],"usage":{"prompt_tokens":12,"total_tokens":%d,"completion_tokens":%d},'
                b'"system_fingerprint":"%s"' % (12 + chunks, chunks, FINGERPRINT.encode())
            )
        await send({"type": "http.response.body", "body": b"data: [DONE]\n\n", "more_body": False})


async def answer(
    send: Send, status: int, body: bytes, headers: list[tuple[bytes, bytes]] | None = None
) -> None:
    fields = [
        *(JSON_HEADERS if headers is None else headers),
        (b"content-length", b"%d" % len(body)),
    ]
    await send({"type": "http.response.start", "status": status, "headers": fields})
    await send({"type": "http.response.body", "body": body})


def main() -> None:
    import uvicorn

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8101)
    parser.add_argument("--model", default="demo-model")
    parser.add_argument("--chunks", type=int, default=10, help="content chunks per stream")
    parser.add_argument("--gap-ms", type=float, default=20.0, help="gap between chunks (ms)")
    parser.add_argument("--max-model-len", type=int, default=4096)
    args = parser.parse_args()
    app = Upstream(
        model=args.model,
        chunks=args.chunks,
        gap=args.gap_ms / 1000,
        max_model_len=args.max_model_len,
    )
    uvicorn.run(
        app,
        host=args.host,
        port=args.port,
        log_level="warning",
        access_log=False,
        lifespan="on",
        backlog=4096,
    )


if __name__ == "__main__":
    main()
