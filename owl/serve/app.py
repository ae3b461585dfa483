"""The HTTP face of the engine: an OpenAI-compatible FastAPI app.

Routes: ``POST /v1/chat/completions`` (plain JSON or server-sent events),
``GET /v1/models``, ``GET /health``, ``GET /metrics`` (JSON counters) and
``GET /`` (``owl/serve/static/index.html`` when it exists, under a strict
Content-Security-Policy).

A request's path: body read with a size cap -> checked
(:mod:`owl.serve.openai_api`) -> its images loaded
(:mod:`owl.serve.image_sources`) -> tokenised by the processor in a worker
thread (image decoding and the prompt-length check happen here, so their
refusals are 4xx answers before the request takes a place in the queue) ->
submitted to the engine. The engine thread hands each event to the request's
own asyncio queue with ``loop.call_soon_threadsafe``, so the engine never
waits for a client, and a slow reader only lets its own queue grow (by at
most its ``max_tokens`` events). A client that disconnects cancels its
request, which frees its batch slot at the engine's next step.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import threading
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from owl.conversation import Sample, SampleError
from owl.errors import OwlError
from owl.models.owl import OwlModel
from owl.processing import Encoded, OwlProcessor
from owl.serve import openai_api as api
from owl.serve.engine import Engine, EngineStopped, Event, QueueFull
from owl.serve.engine import Request as Generation
from owl.serve.errors import ApiError, bad_request
from owl.serve.image_sources import load_image
from owl.serve.settings import ServeSettings

STATIC_DIR = Path(__file__).parent / "static"
CSP = (
    "default-src 'self'; img-src 'self' data: blob:; style-src 'self' 'unsafe-inline'; "
    "script-src 'self' 'unsafe-inline'"
)
_ENCODE_LOCK = threading.Lock()
_SAMPLE_CODES = {
    "prompt_too_long": "context_length_exceeded",
    "image_too_large": "image_too_large",
    "bad_image": "invalid_image",
    "missing_image": "invalid_image",
}


def create_app(
    model: OwlModel, processor: OwlProcessor, settings: ServeSettings | None = None, engine: Engine | None = None
) -> FastAPI:
    """The app for one loaded model. Its engine thread starts and stops with the app's lifespan."""
    settings = settings or ServeSettings()
    if settings.max_image_pixels is not None:  # the processor's loader checks this from the header, before decoding
        processor.images.max_pixels = settings.max_image_pixels
    engine = engine or Engine(model, processor, settings.max_running, settings.max_queue, settings.max_prefill_tokens)
    started = int(time.time())
    http_counts = {"http_requests": 0, "http_4xx": 0, "http_5xx": 0, "http_503": 0}

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        engine.start()
        app.state.http = (
            httpx.AsyncClient(follow_redirects=True, max_redirects=3) if settings.allow_remote_images else None
        )
        try:
            yield
        finally:
            engine.stop()
            if app.state.http is not None:
                await app.state.http.aclose()

    app = FastAPI(title="owl", docs_url=None, redoc_url=None, openapi_url=None, lifespan=lifespan)
    app.state.engine, app.state.settings, app.state.processor = engine, settings, processor
    if settings.cors_origins:
        from fastapi.middleware.cors import CORSMiddleware

        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST"],
            allow_headers=["Authorization", "Content-Type"],
        )

    app.add_middleware(StatusCounter, counts=http_counts)

    @app.exception_handler(ApiError)
    async def api_error(_: Request, e: ApiError) -> JSONResponse:
        return e.response()

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, e: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(e.status_code)
        return ApiError(e.status_code, str(e.detail), None, code).response()

    @app.exception_handler(RequestValidationError)
    async def validation_error(_: Request, e: RequestValidationError) -> JSONResponse:
        return ApiError(400, f"invalid request: {e.errors()}", None, "invalid_request").response()

    @app.exception_handler(Exception)
    async def internal_error(_: Request, e: Exception) -> JSONResponse:
        # Starlette sends this answer from outside every middleware, so StatusCounter never sees it: count it here
        http_counts["http_requests"] += 1
        http_counts["http_5xx"] += 1
        return ApiError(500, f"internal error: {type(e).__name__}", None, "internal_error").response()

    def check_key(request: Request) -> None:
        if settings.api_key is None:
            return
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), settings.api_key.encode()):
            raise ApiError(401, "missing or wrong API key (Authorization: Bearer KEY)", None, "invalid_api_key",
                           {"WWW-Authenticate": "Bearer"})  # fmt: skip

    @app.get("/health")
    async def health() -> JSONResponse:
        ok = engine.alive
        body = {"status": "ok" if ok else "unavailable", "model": settings.model_name}
        return JSONResponse(body, status_code=200 if ok else 503)

    @app.get("/metrics")
    async def metrics(request: Request) -> dict:
        check_key(request)
        return {**engine.metrics(), **http_counts, "model": settings.model_name}

    @app.get("/v1/models")
    async def models(request: Request) -> dict:
        check_key(request)
        return api.model_list(settings.model_name, started)

    @app.get("/v1/models/{name}")
    async def one_model(name: str, request: Request) -> dict:
        check_key(request)
        if name != settings.model_name:
            raise ApiError(404, f"model {name!r} is not served here", "model", "model_not_found")
        return api.model_list(settings.model_name, started)["data"][0]

    @app.get("/", response_model=None)
    async def index() -> Response:
        page = STATIC_DIR / "index.html"
        if not page.is_file():
            raise ApiError(404, "no web page is installed (owl/serve/static/index.html)", None, "not_found")
        return FileResponse(page, media_type="text/html", headers={"Content-Security-Policy": CSP})

    @app.post("/v1/chat/completions", response_model=None)
    async def chat_completions(request: Request) -> Response:
        check_key(request)
        body = await read_json(request, settings.max_body_bytes)
        chat = api.parse_chat_request(body, settings)
        images = [
            await load_image(url, settings, app.state.http, f"messages[{i}].content")
            for i, turn in enumerate(chat.turns)
            for url in turn.image_urls
        ]
        encoded = await asyncio.to_thread(encode, processor, api.to_sample(chat.turns, images))
        options = api.resolve_options(chat, settings)
        loop = asyncio.get_running_loop()
        events: asyncio.Queue[Event] = asyncio.Queue()

        def deliver(event: Event) -> None:  # engine thread
            loop.call_soon_threadsafe(events.put_nowait, event)

        try:
            handle = engine.submit(encoded, options, deliver)
        except QueueFull:
            raise ApiError(503, "the server is busy (its queue is full); retry shortly", None, "server_busy",
                           {"Retry-After": str(settings.retry_after_s)}) from None  # fmt: skip
        except EngineStopped as e:
            raise ApiError(503, f"the generation engine is not running: {e}", None, "engine_unavailable") from None
        except OwlError as e:
            raise bad_request(str(e), "max_tokens", "context_length_exceeded") from None
        rid = api.new_id()
        if chat.stream:
            stream = sse(rid, settings.model_name, events, handle, engine, chat.include_usage)
            headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
            return StreamingResponse(stream, media_type="text/event-stream", headers=headers)
        final = await until_done(request, events, handle, engine)
        if final is None:  # the client left; nobody reads this
            return Response(status_code=499)
        if final.finish_reason == "error":
            raise ApiError(500, f"generation failed: {final.error}", None, "generation_failed")
        if final.finish_reason == "cancelled":
            raise ApiError(503, "the server is shutting down", None, "engine_unavailable")
        return JSONResponse(
            api.completion(
                rid, settings.model_name, final.text, final.finish_reason, final.prompt_tokens, final.completion_tokens
            )  # fmt: skip
        )

    return app


class StatusCounter:
    """Counts answers by status for /metrics (a plain ASGI wrapper: it leaves streaming and disconnects alone)."""

    def __init__(self, app: ASGIApp, counts: dict[str, int]) -> None:
        self.app, self.counts = app, counts

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)

        async def counting_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                status = message["status"]
                self.counts["http_requests"] += 1
                if 400 <= status < 500:
                    self.counts["http_4xx"] += 1
                elif status >= 500:
                    self.counts["http_5xx"] += 1
                    self.counts["http_503"] += status == 503
            await send(message)

        await self.app(scope, receive, counting_send)


def encode(processor: OwlProcessor, sample: Sample) -> Encoded:
    """Tokenise a prompt (images decoded here); refusals as 4xx :class:`ApiError`. One at a time: a fast
    tokenizer shared between threads can refuse concurrent calls ("Already borrowed")."""
    try:
        with _ENCODE_LOCK:
            return processor.encode(sample, for_generation=True)
    except SampleError as e:
        code = _SAMPLE_CODES.get(e.reason, e.reason)
        if "decompression bomb" in str(e).lower():  # PIL's own header check fired before owl's
            code = "image_too_large"
        raise bad_request(str(e), "messages", code) from None
    except OwlError as e:
        raise bad_request(str(e), "messages") from None


async def read_json(request: Request, limit: int) -> object:
    """The body as JSON, read no further than ``limit`` bytes (413 beyond it, whatever Content-Length says)."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise ApiError(413, f"the request body is over this server's cap of {limit} bytes", None, "request_too_large")
    data = bytearray()
    async for piece in request.stream():
        data += piece
        if len(data) > limit:
            raise ApiError(413, f"the request body is over this server's cap of {limit} bytes", None,
                           "request_too_large")  # fmt: skip
    try:
        return json.loads(data)
    except ValueError as e:  # JSONDecodeError, UnicodeDecodeError, and an integer over Python's 4300-digit limit
        raise bad_request(f"the body is not valid JSON: {str(e)[:200]}", None, "invalid_json") from None
    except RecursionError:  # "[[[[..." within the size cap: Python's parser gives up; so do we, politely
        raise bad_request("the body's JSON is nested too deeply", None, "invalid_json") from None


async def _disconnected(request: Request) -> None:
    """Returns when the client has gone (the body is read by now, so the next message is the disconnect)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def until_done(request: Request, events: asyncio.Queue, handle: Generation, engine: Engine) -> Event | None:
    """The final event of a non-streamed request, or None (and the request cancelled) if the client left first."""

    async def last() -> Event:
        while not (event := await events.get()).done:
            pass
        return event

    result, gone = asyncio.ensure_future(last()), asyncio.ensure_future(_disconnected(request))
    try:
        await asyncio.wait({result, gone}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        gone.cancel()
        if not result.done():
            result.cancel()
            handle.cancel()
            engine.wake()
    return result.result() if result.done() and not result.cancelled() else None


def _data(obj: object) -> str:
    return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n"


async def sse(
    rid: str, model: str, events: asyncio.Queue, handle: Generation, engine: Engine, include_usage: bool
) -> AsyncIterator[str]:
    """OpenAI's stream: a role chunk, content deltas, a finish chunk, an optional usage chunk, ``[DONE]``.
    Leaving early (the client disconnected: Starlette cancels this generator) cancels the request."""
    created = int(time.time())
    try:
        yield _data(api.chunk(rid, model, created, {"role": "assistant", "content": ""}, None, None, include_usage))
        while True:
            event: Event = await events.get()
            if event.delta:
                yield _data(api.chunk(rid, model, created, {"content": event.delta}, None, None, include_usage))
            if not event.done:
                continue
            if event.finish_reason in ("error", "cancelled"):
                why = event.error or "the server is shutting down"
                yield _data(ApiError(500, f"generation ended: {why}", None, "generation_failed").body())
                return
            yield _data(api.chunk(rid, model, created, {}, event.finish_reason, None, include_usage))
            if include_usage:
                yield _data(api.chunk(rid, model, created, usage_=api.usage(event.prompt_tokens,
                                                                            event.completion_tokens)))  # fmt: skip
            yield "data: [DONE]\n\n"
            return
    finally:
        handle.cancel()
        engine.wake()
