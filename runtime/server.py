"""air-run serve: an OpenAI-compatible HTTP API over one bundle (Starlette on uvicorn).

GET /health, GET /v1/models, POST /v1/chat/completions, POST /v1/completions (plain, or
server-sent events ending `data: [DONE]` with "stream": true). The device runs one generation
at a time on one session (so a request reuses the prefix the previous one left in the caches);
at most `queue` requests wait, later ones get a 429. A client that disconnects (from a stream
or while waiting for a plain answer) cancels its generation before the next round. Extensions: "air_quality" (routing tier),
"air_speculate" (a forced draft length), "air_proposer" ("draft" or "lookup": what proposes
those tokens) and "ignore_eos" in requests, "air" (route and stats) in answers.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

from starlette.applications import Starlette
from starlette.background import BackgroundTask
from starlette.exceptions import HTTPException
from starlette.requests import Request as HTTPRequest
from starlette.responses import JSONResponse, StreamingResponse
from starlette.routing import Route

from air.errors import AirError
from .bundle import Bundle, GenerationResult
from .chat import encode_chat
from .chat_template import ChatTemplate
from .options import explanation
from .requests import BadRequest, Request, parse_request
from .session import Session

MAX_BODY = 16 * 2**20  # bytes of a request body; a larger one gets a 413 unread
FINISH = {"stop": "stop", "length": "length", "context": "length", "cancelled": "stop"}


def error_response(status: int, message: str, kind: str = "invalid_request_error", param=None, code=None):
    return JSONResponse({"error": {"message": message, "type": kind, "param": param, "code": code}}, status)


class QueueFull(Exception):
    pass


@dataclasses.dataclass
class Defaults:
    """What a request that does not say gets (air-run serve's options)."""
    max_tokens: int = 64
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None
    speculate: int | None = None
    quality: str = "balanced"
    proposer: str = "draft"


class Engine:
    """One generation at a time on the bundle's session; at most `queue` requests wait."""

    def __init__(self, bundle: Bundle, queue: int, defaults: Defaults, explain: bool = False):
        self.bundle = bundle
        self.session = Session(bundle)
        self.template = ChatTemplate.from_bundle(bundle.root, bundle.manifest)
        self.queue = queue
        self.defaults = defaults
        self.explain = explain
        self.executor = ThreadPoolExecutor(1, thread_name_prefix="air-engine")
        self.lock = asyncio.Lock()
        self.admitted = 0  # generating or waiting
        self.running = False
        self.counts = {"served": 0, "cancelled": 0, "rejected": 0}

    def admit(self) -> None:
        if self.admitted >= 1 + self.queue:
            self.counts["rejected"] += 1
            raise QueueFull(f"the server is busy: one request generating and {self.queue} waiting (the queue's limit)")
        self.admitted += 1

    async def prompt(self, request: Request) -> list[int]:
        """The request's prompt ids, checked against the vocabulary and the context."""
        if request.messages is not None:
            ids = await asyncio.to_thread(encode_chat, self.bundle, self.template, request.messages)
        elif isinstance(request.prompt, str):
            ids = self.bundle.encode(request.prompt)
        else:
            ids = list(request.prompt)
        self.bundle._check_prompt(ids)
        return ids

    async def generate(self, request: Request, ids: list[int], on_text=None, cancel: threading.Event | None = None):
        """Run one admitted request when the engine is free; releases its place at the end.
        None: cancelled before it started."""
        d = self.defaults
        options = dict(
            max_tokens=request.max_tokens or d.max_tokens,
            temperature=d.temperature if request.temperature is None else request.temperature,
            top_p=d.top_p if request.top_p is None else request.top_p,
            seed=d.seed if request.seed is None else request.seed,
            speculate=d.speculate if request.speculate is None else request.speculate,
            quality=request.quality or d.quality,
            proposer=request.proposer or d.proposer,
            ignore_eos=request.ignore_eos,
        )
        stop = request.stop + (self.template.stop if request.messages is not None else ())
        cancel = cancel or threading.Event()

        def work() -> GenerationResult | None:
            if cancel.is_set():
                return None  # its client went away while it waited
            self.running = True
            try:
                return self.session.generate(ids, on_text=on_text, stop=stop, should_stop=cancel.is_set, **options)
            finally:
                self.running = False

        try:
            async with self.lock:
                result = await asyncio.get_running_loop().run_in_executor(self.executor, work)
        finally:
            self.admitted -= 1
        if result is None or result.finish_reason == "cancelled":
            self.counts["cancelled"] += 1
            return result
        self.counts["served"] += 1
        if self.explain:
            print(explanation(result, options["speculate"]), flush=True)
        return result


def _usage(result: GenerationResult) -> dict:
    prompt, completion = result.stats["prompt_tokens"], result.stats["generated_tokens"]
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion,
            "prompt_tokens_details": {"cached_tokens": result.stats["reused_tokens"]}}


def _air(result: GenerationResult) -> dict:
    """The extension block: the path that served the request and the run's counters."""
    route = dataclasses.asdict(result.route) if result.route else {"path": "forced", "k": result.stats["speculate"]}
    return {"route": route, "stats": result.stats}


class API:
    def __init__(self, engine: Engine):
        self.engine = engine
        self.name = engine.bundle.manifest["name"]

    async def health(self, request: HTTPRequest):
        e = self.engine
        return JSONResponse({"status": "ok", "model": self.name, "generating": e.running,
                             "waiting": max(e.admitted - 1, 0), "queue": e.queue, **e.counts})

    async def models(self, request: HTTPRequest):
        return JSONResponse({"object": "list", "data": [{"id": self.name, "object": "model", "created": 0,
                                                         "owned_by": "air-runtime"}]})

    async def chat(self, request: HTTPRequest):
        return await self._complete(request, chat=True)

    async def completions(self, request: HTTPRequest):
        return await self._complete(request, chat=False)

    async def _complete(self, http: HTTPRequest, chat: bool):
        try:
            request = parse_request(await _body(http), chat)
            if request.model != self.name:
                raise BadRequest(f"model '{request.model}' is not served here (this server serves '{self.name}')",
                                 "model", "model_not_found")
            ids = await self.engine.prompt(request)
            self.engine.admit()
        except BadRequest as e:
            return error_response(e.status, str(e), param=e.param, code=e.code)
        except AirError as e:
            return error_response(400, str(e))
        except QueueFull as e:
            return error_response(429, str(e), "rate_limit_error", code="queue_full")
        shape = _Shape(chat, self.name)
        if request.stream:
            stream = _Stream(self.engine, request, ids, shape)
            return StreamingResponse(stream.events(), media_type="text/event-stream", background=BackgroundTask(stream.cancel))
        gone = threading.Event()
        watcher = asyncio.ensure_future(_when_disconnected(http, gone.set))
        try:
            result = await self.engine.generate(request, ids, cancel=gone)
        except AirError as e:
            return error_response(400, str(e))
        finally:
            watcher.cancel()
        if result is None or result.finish_reason == "cancelled":
            return error_response(499, "the client closed the connection; the generation was cancelled")
        return JSONResponse(shape.whole(result))


class _Stream:
    """One streamed answer: its generation starts at once (holding its place in the queue) and
    is cancelled when the client goes away, whether or not the events ever started."""

    def __init__(self, engine: Engine, request: Request, ids: list[int], shape: "_Shape"):
        loop = asyncio.get_running_loop()
        self.request, self.shape = request, shape
        self.deltas: asyncio.Queue = asyncio.Queue()
        self.stopped = threading.Event()
        self.done = object()

        async def run():
            try:
                return await engine.generate(request, ids, self._push, self.stopped)
            finally:
                loop.call_soon_threadsafe(self.deltas.put_nowait, self.done)

        self._push = lambda delta: loop.call_soon_threadsafe(self.deltas.put_nowait, delta)
        self.task = asyncio.ensure_future(run())

    def cancel(self) -> None:
        self.stopped.set()  # the generation stops before its next round, or never starts

    async def events(self):
        shape = self.shape
        try:
            yield _event(shape.chunk(role=True))
            while (delta := await self.deltas.get()) is not self.done:
                yield _event(shape.chunk(text=delta))
            try:
                result = self.task.result()
            except AirError as e:
                yield _event({"error": {"message": str(e), "type": "invalid_request_error", "param": None, "code": None}})
                return
            yield _event(shape.chunk(finish=FINISH[result.finish_reason], air=_air(result)))
            if self.request.include_usage:
                yield _event({**shape.chunk(), "choices": [], "usage": _usage(result)})
            yield "data: [DONE]\n\n"
        finally:
            self.cancel()


async def _when_disconnected(http: HTTPRequest, then) -> None:
    """Calls then() when the client of a request whose body has been read goes away."""
    while (await http.receive())["type"] != "http.disconnect":
        pass
    then()


async def _body(http: HTTPRequest) -> bytes:
    parts, size = [], 0
    async for part in http.stream():
        parts.append(part)
        size += len(part)
        if size > MAX_BODY:
            raise BadRequest(f"the body has more than {MAX_BODY} bytes", status=413)
    return b"".join(parts)


def _event(data: dict) -> str:
    return f"data: {json.dumps(data)}\n\n"


class _Shape:
    """The response objects of one endpoint (chat.completion or text_completion)."""

    def __init__(self, chat: bool, model: str):
        self.chat, self.model = chat, model
        self.id = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex
        self.created = int(time.time())

    def _head(self, suffix: str) -> dict:
        kind = "chat.completion" if self.chat else "text_completion"
        return {"id": self.id, "object": kind + suffix, "created": self.created, "model": self.model}

    def whole(self, result: GenerationResult) -> dict:
        choice = {"index": 0, "finish_reason": FINISH[result.finish_reason], "logprobs": None}
        if self.chat:
            choice["message"] = {"role": "assistant", "content": result.text}
        else:
            choice["text"] = result.text
        return {**self._head(""), "choices": [choice], "usage": _usage(result), "air": _air(result)}

    def chunk(self, text: str | None = None, role: bool = False, finish: str | None = None, air: dict | None = None) -> dict:
        choice = {"index": 0, "finish_reason": finish, "logprobs": None}
        if self.chat:
            choice["delta"] = ({"role": "assistant", "content": ""} if role else {}) | ({"content": text} if text else {})
        else:
            choice["text"] = text or ""
        out = {**self._head(".chunk" if self.chat else ""), "choices": [choice]}
        return out | ({"air": air} if air else {})


async def _http_error(request: HTTPRequest, exc: HTTPException):
    return error_response(exc.status_code, str(exc.detail), "not_found_error" if exc.status_code == 404 else "invalid_request_error")


async def _server_error(request: HTTPRequest, exc: Exception):
    return error_response(500, f"internal error: {type(exc).__name__}: {exc}", "server_error")


def make_app(engine: Engine) -> Starlette:
    api = API(engine)
    routes = [
        Route("/health", api.health, methods=["GET"]),
        Route("/v1/models", api.models, methods=["GET"]),
        Route("/v1/chat/completions", api.chat, methods=["POST"]),
        Route("/v1/completions", api.completions, methods=["POST"]),
    ]
    return Starlette(routes=routes, exception_handlers={HTTPException: _http_error, Exception: _server_error})
