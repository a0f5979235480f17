"""The HTTP API (Starlette, served by uvicorn): OpenAI's completions and chat completions, with
server-sent events for `stream: true`; /v1/models, /health, /metrics, and the playground at /.

Starlette rather than FastAPI: the API is six routes whose bodies we validate ourselves (to answer
with OpenAI-style 400s that name the field, where FastAPI's pydantic layer answers 422 in its own
shape and would need overriding), and SSE is a few lines over StreamingResponse — so FastAPI's
extras would add a dependency and a second error format without removing code.

Each request's engine events cross from the engine thread to the event loop through
`loop.call_soon_threadsafe`. A stream whose client disconnects is cancelled by Starlette; the
`finally` cancels the job, and the engine frees its row at its next step.
"""
from __future__ import annotations

import asyncio
import hmac
import json
import time
import uuid
from importlib import resources
from typing import Optional

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, PlainTextResponse, StreamingResponse
from starlette.routing import Route

from mambakit.serve.engine import Engine, EngineStopped, QueueFull
from mambakit.serve.protocol import APIError, parse_request, plain_chat_template


def create_app(engine: Engine, model_name: str, chat_template=plain_chat_template,
               api_key: Optional[str] = None, max_prompt_tokens: int = 32768,
               default_max_tokens: int = 256) -> Starlette:
    def check_key(request: Request) -> None:
        if api_key is None:
            return
        got = request.headers.get("authorization", "")
        if not hmac.compare_digest(got.encode(), f"Bearer {api_key}".encode()):
            raise APIError(401, "Incorrect API key provided (send 'Authorization: Bearer KEY')",
                           type="invalid_request_error", code="invalid_api_key")

    def guarded(handler, needs_key=True):
        async def endpoint(request: Request):
            try:
                if needs_key:
                    check_key(request)
                return await handler(request)
            except APIError as e:
                return JSONResponse(e.body(), status_code=e.status)
        return endpoint

    async def generate(request: Request, kind: str):
        try:
            body = json.loads(await request.body())
        except (ValueError, UnicodeDecodeError) as e:
            raise APIError(400, f"the request body is not valid JSON ({e})") from None
        req, stream, include_usage = parse_request(
            body, kind, engine.tokenizer, chat_template, model_name, max_prompt_tokens,
            engine.max_batch, default_max_tokens if kind == "chat" else 16)
        loop, events = asyncio.get_running_loop(), asyncio.Queue()

        def emit(event: dict) -> None:
            try:
                loop.call_soon_threadsafe(events.put_nowait, event)
            except RuntimeError:  # the loop is gone (server shutting down): nobody to tell
                pass

        try:
            job = engine.submit(req, emit)
        except QueueFull as e:
            raise APIError(429, f"the server is busy: {e}; retry later", type="rate_limit_error") from None
        except EngineStopped as e:
            raise APIError(503, str(e), type="server_error") from None
        reply = Reply(kind, model_name, req.n)
        if stream:
            return StreamingResponse(reply.sse(job, events, include_usage), media_type="text/event-stream")
        return await reply.collect(job, events, request)

    async def completions(request):
        return await generate(request, "completion")

    async def chat(request):
        return await generate(request, "chat")

    async def models(request):
        return JSONResponse({"object": "list", "data": [
            {"id": model_name, "object": "model", "created": started, "owned_by": "mambakit"}]})

    async def health(request):
        cache, alive = engine.prefix_cache, engine.alive
        return JSONResponse({"status": "ok" if alive else "engine stopped", "model": model_name,
                             "family": engine.model.config.model_type,
                             "weights": getattr(engine.model, "quantization", None) or "fp32", **engine.gauges(),
                             "max_batch": engine.max_batch, "state_cache_budget_bytes": cache.budget,
                             "state_cache_hits": cache.hits, "state_cache_misses": cache.misses},
                            status_code=200 if alive else 503)

    async def metrics(request):
        return PlainTextResponse(engine.metrics.render(engine.gauges()),
                                 media_type="text/plain; version=0.0.4")

    async def playground(request):
        return HTMLResponse(resources.files("mambakit.serve").joinpath("static/index.html").read_text("utf-8"))

    async def http_error(request, exc: HTTPException):
        kind = "not_found" if exc.status_code == 404 else "invalid_request_error"
        return JSONResponse(APIError(exc.status_code, f"{request.method} {request.url.path}: {exc.detail}",
                                     type=kind).body(), status_code=exc.status_code)

    started = int(time.time())
    routes = [Route("/", guarded(playground, needs_key=False)),
              Route("/health", guarded(health, needs_key=False)),
              Route("/metrics", guarded(metrics)),
              Route("/v1/models", guarded(models)),
              Route("/v1/completions", guarded(completions), methods=["POST"]),
              Route("/v1/chat/completions", guarded(chat), methods=["POST"])]
    return Starlette(routes=routes, exception_handlers={HTTPException: http_error})


class Reply:
    """OpenAI's response objects for one request: the whole reply, or its stream of chunks."""

    def __init__(self, kind: str, model: str, n: int):
        self.kind, self.model, self.n = kind, model, n
        self.id = ("chatcmpl-" if kind == "chat" else "cmpl-") + uuid.uuid4().hex
        self.created = int(time.time())

    def _choice(self, index: int, text: str, finish_reason, delta: bool) -> dict:
        if self.kind == "completion":
            return {"index": index, "text": text, "logprobs": None, "finish_reason": finish_reason}
        key = "delta" if delta else "message"
        body = {"content": text} if delta else {"role": "assistant", "content": text}
        return {"index": index, key: body, "logprobs": None, "finish_reason": finish_reason}

    def _object(self, choices: list, chunk: bool, usage: Optional[dict] = None) -> dict:
        kind = {"completion": "text_completion", "chat": "chat.completion.chunk" if chunk else "chat.completion"}
        out = {"id": self.id, "object": kind[self.kind], "created": self.created, "model": self.model,
               "choices": choices}
        if usage is not None or not chunk:
            out["usage"] = usage
        return out

    async def sse(self, job, events: asyncio.Queue, include_usage: bool):
        def data(obj) -> str:
            return f"data: {json.dumps(obj)}\n\n"

        try:
            if self.kind == "chat":   # OpenAI opens each choice with the assistant role
                yield data(self._object([{"index": i, "delta": {"role": "assistant", "content": ""},
                                          "logprobs": None, "finish_reason": None} for i in range(self.n)], True))
            while True:
                event = await events.get()
                if "error" in event:
                    yield data(APIError(500, event["error"], type="server_error").body())
                    break
                if event.get("done"):
                    if include_usage:
                        yield data(self._object([], True, event["usage"]))
                    break
                yield data(self._object([self._choice(event["choice"], event["text"],
                                                      event["finish_reason"], True)], True))
            yield "data: [DONE]\n\n"
        finally:
            if not job.over:
                job.cancel()       # the client went away: its row is freed at the engine's next step

    async def collect(self, job, events: asyncio.Queue, request: Request):
        texts, reasons = [""] * self.n, [None] * self.n
        try:
            while True:
                try:
                    event = await asyncio.wait_for(events.get(), timeout=0.5)
                except asyncio.TimeoutError:
                    if await request.is_disconnected():
                        return JSONResponse({}, status_code=499)
                    continue
                if "error" in event:
                    raise APIError(500, event["error"], type="server_error")
                if event.get("done"):
                    choices = [self._choice(i, texts[i], reasons[i], False) for i in range(self.n)]
                    return JSONResponse(self._object(choices, False, event["usage"]))
                texts[event["choice"]] += event["text"]
                reasons[event["choice"]] = event["finish_reason"] or reasons[event["choice"]]
        finally:
            if not job.over:
                job.cancel()
