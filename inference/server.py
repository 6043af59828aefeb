"""OpenAI-compatible speech server: `python -m inference.server model=DIR tokenizer=DIR [host= port= api_key=]`.

    POST /v1/audio/speech  {"model", "input", "voice", "response_format": wav|flac|mp3|pcm,
                            "speed", "stream", "stream_format": audio|sse, "reference_audio" (base64
                            file), "reference_text", "stops" (StopRules overrides, e.g. {"budget_factor": 3})}
    GET  /v1/models        GET /v1/voices        GET /health        GET /  (a page to try it)

pcm is 16-bit little-endian mono at 24 kHz. stream=true sends audio as it is generated (wav with an
open-ended header, or pcm); stream_format=sse sends the same bytes base64 in server-sent events
{"type": "speech.audio.delta", "audio"} and ends with {"type": "speech.audio.done", "stop_reasons"}.
How each text chunk ended (higgs_train/llm/stops.py: eos, budget, silence, loop, max_frames) is the
X-Stop-Reason header of a whole response (comma-separated per chunk) and the done event's
stop_reasons of an sse stream (a plain audio stream's headers leave before it is known). Every error, whatever its status, is {"error": {"message", "type",
"param", "code"}}; the one engine thread (inference.batcher) queues and batches concurrent requests.
With api_key set, everything but /health and / needs `Authorization: Bearer KEY` (as vLLM's
--api-key). OpenAI's voice names (alloy, ...) speak with the default voice unless a preset or a
voice_aliases entry says otherwise. The body is capped while it is read and validated
(inference.server_request), uploads are decoded by inference.server_upload in a small thread pool,
responses encoded by inference.server_audio, and the HTTP layer (inference.server_http) puts
deadlines and a connection cap on slow clients. A non-streaming request whose client disconnects
is cancelled in the engine.
"""
from __future__ import annotations

import asyncio
import base64
import hmac
import json
import logging
import math
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

from fastapi import FastAPI, Request as HTTPRequest
from fastapi.responses import HTMLResponse, Response, StreamingResponse
from starlette.concurrency import run_in_threadpool

from inference.batcher import Batcher
from inference.engine import Engine, RequestError
from inference.server_audio import MEDIA, change_speed, encode_audio, pcm16, wav_stream_header
from inference.server_http import HttpLimits, check_exposure, error_body, make_server
from inference.server_request import (OPENAI_VOICES, ClientError, Speech, SpeechRequest,  # noqa: F401 (API)
                                      parse, read_json)

log = logging.getLogger(__name__)
STATIC = Path(__file__).parent / "static"
OPEN_PATHS = ("/health", "/")            # served without the api_key
BODY_SLACK = 2 ** 20                     # JSON around the base64 clip (input, reference_text, ...)
POLL_S = 0.2                             # how often a waiting request checks that its client is there
STOP_HEADER = "X-Stop-Reason"            # a whole response's stop reason per text chunk


@dataclass
class ServerSettings:
    model_name: str = "higgs-audio"
    max_input_chars: int = 4096
    max_batch: int = 8
    batch_wait_ms: float = 20.0
    max_upload_mb: float = 10.0
    api_key: str | None = None
    voice_aliases: dict[str, str] = field(default_factory=dict)
    allowed_hosts: tuple[str, ...] | None = None   # None: any Host header
    docs: bool = False
    decode_workers: int = 2

    @property
    def max_body_bytes(self) -> int:
        """base64 is 4/3 of the clip it carries."""
        return math.ceil(self.max_upload_mb * 2 ** 20 * 4 / 3) + BODY_SLACK


def error(status: int, message: str, param: str | None = None, code: str | None = None) -> Response:
    kind = "server_error" if status >= 500 else "invalid_request_error"
    return Response(error_body(message, kind, param, code), status_code=status, media_type="application/json")


class Gatekeeper:
    """ASGI middleware in front of every route: the Host check (DNS rebinding) and the api_key."""

    def __init__(self, app, api_key: str | None, allowed_hosts: tuple[str, ...] | None):
        self.app, self.api_key = app, api_key
        self.hosts = None if allowed_hosts is None else {h.lower() for h in allowed_hosts}

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope["headers"])
        refusal = None
        if self.hosts is not None and "*" not in self.hosts:
            host = headers.get(b"host", b"").decode("latin-1").lower()
            name = host.rsplit(":", 1)[0] if not host.endswith("]") else host   # strip the port
            if name.strip("[]") not in self.hosts:
                refusal = error(400, f"Host {host!r} is not in allowed_hosts", None, "invalid_host")
        if refusal is None and self.api_key and scope["path"] not in OPEN_PATHS:
            given = headers.get(b"authorization", b"").decode("latin-1")
            scheme, _, token = given.partition(" ")
            if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), self.api_key.encode()):
                refusal = error(401, "missing or incorrect API key: send Authorization: Bearer <api_key>",
                                None, "invalid_api_key")
                refusal.headers["www-authenticate"] = "Bearer"
        if refusal is not None:
            return await refusal(scope, receive, send)
        return await self.app(scope, receive, send)


async def respond(http: HTTPRequest, engine: Engine, s: ServerSettings, batcher: Batcher, speech_requests: Speech,
                  uploads: asyncio.Semaphore) -> Response:
    """POST /v1/audio/speech: read and check the body (a large one waits for an upload slot before
    the rest of it is read), then stream the audio as it is made, or wait for the whole of it
    (cancelled when the client goes away) and encode it."""
    slot = []

    async def take_slot():   # the rest of the body waits in the socket (TCP holds the sender back)
        await uploads.acquire()
        slot.append(1)

    try:
        body = parse(SpeechRequest, await read_json(http, s.max_body_bytes, take_slot))
        req = await speech_requests.to_request(body)
        body.reference_audio = None   # the base64 text is not kept while the request waits for the engine
    finally:
        if slot:
            uploads.release()
    fmt = body.response_format
    sse = body.stream_format == "sse"
    if body.stream or sse:
        reasons: list[str] = []
        chunks = batcher.stream(req, reasons)
        try:   # the first chunk decides the status code: request errors are still 4xx here
            first = await run_in_threadpool(next, chunks, None)
        except RequestError as e:
            raise ClientError(str(e), "input") from None

        def body_iter():
            if fmt == "wav":
                yield wav_stream_header(engine.sample_rate)
            if first is not None:
                yield pcm16(first)
            for c in chunks:
                yield pcm16(c)

        if not sse:
            return StreamingResponse(body_iter(), media_type=MEDIA[fmt])

        def events():   # `reasons` is complete once the audio is (the batcher fills it before the end)
            for data in body_iter():
                yield sse_event({"type": "speech.audio.delta", "audio": base64.b64encode(data).decode()})
            yield sse_event({"type": "speech.audio.done", "stop_reasons": reasons})

        return StreamingResponse(events(), media_type="text/event-stream")
    future = batcher.submit(req)
    waiting = asyncio.wrap_future(future)
    while not (await asyncio.wait({waiting}, timeout=POLL_S))[0]:
        if await http.is_disconnected():   # nobody will read the audio: free the engine
            future.cancel()
            log.info("client went away; its request was cancelled")
            return Response(status_code=499)
    try:
        result = waiting.result()
    except RequestError as e:
        raise ClientError(str(e), "input") from None
    audio = result.audio
    if body.speed != 1.0:
        audio = await run_in_threadpool(change_speed, audio, result.sample_rate, body.speed)
    data = await run_in_threadpool(encode_audio, audio, result.sample_rate, fmt)
    return Response(data, media_type=MEDIA[fmt], headers={STOP_HEADER: ",".join(result.stop_reasons)})


def sse_event(obj: dict) -> bytes:
    return f"data: {json.dumps(obj)}\n\n".encode()


def create_app(engine: Engine, settings: ServerSettings | None = None) -> FastAPI:
    s = settings or ServerSettings()
    batcher = Batcher(engine, s.max_batch, s.batch_wait_ms / 1000)
    decoders = ThreadPoolExecutor(s.decode_workers, thread_name_prefix="upload-decode")
    # Large bodies (uploads) held at once from reading to decoded: each costs ~3 copies of itself
    # (bytes, str, decoded), so this bounds their memory; the others wait before reading theirs.
    uploads = asyncio.Semaphore(2 * s.decode_workers)
    speech_requests = Speech(engine, s, decoders)

    @asynccontextmanager
    async def lifespan(_app):
        batcher.start()
        yield
        batcher.stop()
        decoders.shutdown(wait=False, cancel_futures=True)

    docs = dict(docs_url="/docs", redoc_url="/redoc", openapi_url="/openapi.json") if s.docs else \
        dict(docs_url=None, redoc_url=None, openapi_url=None)
    app = FastAPI(title="Higgs Audio TTS", version="0.1.0", lifespan=lifespan, **docs)
    app.state.batcher = batcher
    app.add_middleware(Gatekeeper, api_key=s.api_key, allowed_hosts=s.allowed_hosts)

    @app.exception_handler(ClientError)
    async def _client_error(_req, exc: ClientError):
        return error(exc.status, exc.message, exc.param, exc.code)

    @app.exception_handler(404)
    async def _not_found(req: HTTPRequest, _exc):
        return error(404, f"no route {req.method} {req.url.path}")

    @app.exception_handler(405)
    async def _bad_method(req: HTTPRequest, _exc):
        return error(405, f"method {req.method} not allowed on {req.url.path}")

    @app.exception_handler(Exception)
    async def _server_fault(req: HTTPRequest, exc: Exception):   # the traceback goes to the log
        log.error("%s %s failed: %r", req.method, req.url.path, exc)
        return error(500, f"internal error: {type(exc).__name__}")

    @app.get("/health")
    def health():
        return {"status": "ok", "queued": batcher.queued, "device": str(engine.device)}

    @app.get("/v1/models")
    def models():
        return {"object": "list", "data": [{"id": s.model_name, "object": "model", "owned_by": "local"}]}

    @app.get("/v1/voices")
    def voices():
        """Presets, and the other names accepted as a voice with the preset they speak as."""
        return {"voices": engine.voices.names(), "aliases": speech_requests.aliases}

    @app.get("/", response_class=HTMLResponse)
    def page():
        return (STATIC / "index.html").read_text(encoding="utf-8")

    @app.post("/v1/audio/speech")
    async def speech(http: HTTPRequest):
        return await respond(http, engine, s, batcher, speech_requests, uploads)

    return app


def main() -> None:
    import hydra
    from omegaconf import DictConfig, OmegaConf

    from higgs_train.config import package_configs

    @hydra.main(version_base="1.3", config_path=str(package_configs("inference") / "inference"), config_name="serve")
    def run(cfg: DictConfig) -> None:
        from inference.engine import engine_from_config
        from inference.server_http import LOOPBACK_NAMES, is_loopback

        check_exposure(cfg.host, cfg.api_key, cfg.allow_insecure)   # before the minutes of loading
        hosts = cfg.allowed_hosts
        if hosts is None and is_loopback(cfg.host):   # a loopback server is only ever asked for by these names
            hosts = LOOPBACK_NAMES
        engine = engine_from_config(cfg)
        settings = ServerSettings(cfg.model_name, cfg.max_input_chars, cfg.max_batch, cfg.batch_wait_ms,
                                  cfg.max_upload_mb, cfg.api_key or None,
                                  OmegaConf.to_container(cfg.voice_aliases, resolve=True),
                                  None if hosts is None else tuple(hosts), cfg.docs, cfg.decode_workers)
        limits = HttpLimits(cfg.read_timeout_s, cfg.keep_alive_s, cfg.max_connections)
        log.info("serving %s on http://%s:%d (api_key %s)", cfg.model, cfg.host, cfg.port,
                 "required" if settings.api_key else "off")
        make_server(create_app(engine, settings), cfg.host, cfg.port, limits).run()

    run()


if __name__ == "__main__":
    main()
