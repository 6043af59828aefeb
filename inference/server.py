"""OpenAI-compatible speech server: `python -m inference.server model=DIR tokenizer=DIR [host= port= api_key=]`.

    POST /v1/audio/speech  {"model", "input", "voice", "response_format": wav|flac|mp3|pcm,
                            "speed", "stream", "reference_audio" (base64 file), "reference_text"}
    GET  /v1/models        GET /v1/voices        GET /health        GET /  (a page to try it)

pcm is 16-bit little-endian mono at 24 kHz. stream=true sends audio as it is generated (wav with an
open-ended header, or pcm). Every error, whatever its status, is {"error": {"message", "type",
"param", "code"}}; the one engine thread (inference.batcher) queues and batches concurrent requests.
With api_key set, everything but /health and / needs `Authorization: Bearer KEY` (as vLLM's
--api-key). OpenAI's voice names (alloy, ...) speak with the default voice unless a preset or a
voice_aliases entry says otherwise. The body is capped while it is read, uploads are decoded by
inference.server_upload in a small thread pool, and the HTTP layer (inference.server_http) puts
deadlines and a connection cap on slow clients. A non-streaming request whose client disconnects
is cancelled in the engine.
"""
from __future__ import annotations

import asyncio
import hmac
import io
import json
import logging
import math
import struct
import subprocess
import tempfile
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from fastapi import FastAPI, Request as HTTPRequest
from fastapi.responses import HTMLResponse, Response, StreamingResponse
from pydantic import BaseModel, Field, ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect

from higgs_train.audio import save_audio
from inference.batcher import Batcher
from inference.engine import Engine, Request, RequestError
from inference.server_http import HttpLimits, check_exposure, error_body, make_server
from inference.server_upload import UploadError, decode_upload
from inference.voices import VoiceError

log = logging.getLogger(__name__)
STATIC = Path(__file__).parent / "static"
MEDIA = {"wav": "audio/wav", "flac": "audio/flac", "mp3": "audio/mpeg", "pcm": "audio/pcm"}
MODEL_ALIASES = ("tts-1", "tts-1-hd")   # OpenAI client defaults map to the one served model
# OpenAI's built-in voices: clients send them by default, so they must speak (the default voice
# unless a preset or voice_aliases names another)
OPENAI_VOICES = ("alloy", "ash", "ballad", "cedar", "coral", "echo", "fable", "marin", "nova", "onyx", "sage",
                 "shimmer", "verse")
DEFAULT = "default"
OPEN_PATHS = ("/health", "/")            # served without the api_key
BODY_SLACK = 2 ** 20                     # JSON around the base64 clip (input, reference_text, ...)
POLL_S = 0.2                             # how often a waiting request checks that its client is there
SMALL_BODY = 2 ** 17                     # text-only bodies stay under this; larger ones carry an upload


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


class SpeechRequest(BaseModel):
    model: str
    input: str
    voice: str | None = None
    response_format: str = "wav"
    speed: float = 1.0
    stream: bool = False
    reference_audio: str | None = None   # base64 of a wav, flac, ogg or mp3 file
    reference_text: str | None = None
    seed: int | None = Field(default=None, ge=0, lt=2 ** 63)
    temperature: float | None = Field(default=None, ge=0, le=2)


class ClientError(Exception):
    def __init__(self, message: str, param: str | None = None, status: int = 400, code: str | None = None):
        self.message, self.param, self.status, self.code = message, param, status, code


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


async def read_json(request: HTTPRequest, limit: int, on_large) -> dict:
    """The request body as a JSON object, refused (413) as soon as it is known to exceed `limit`
    bytes: from Content-Length before reading, else while counting what arrives. `await on_large()`
    runs once when the body is known to exceed SMALL_BODY, before the rest of it is read."""
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.isdigit():
            raise ClientError("Content-Length is not a number")
        if int(declared) > limit:
            raise ClientError(f"request body of {int(declared)} bytes is larger than {limit} bytes", None, 413)
    large = declared is not None and int(declared) > SMALL_BODY
    if large:
        await on_large()
    parts, size = [], 0
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise ClientError(f"request body is larger than {limit} bytes", None, 413)
            if size > SMALL_BODY and not large:
                large = True
                await on_large()
            parts.append(chunk)
    except ClientDisconnect:   # nobody to answer: a short line, not a traceback
        raise ClientError("client disconnected before sending the whole body") from None
    try:
        text = b"".join(parts).decode("utf-8")
    except UnicodeDecodeError as e:
        raise ClientError(f"request body is not valid UTF-8 (byte {e.start})") from None
    try:
        obj = json.loads(text, parse_constant=_no_constant)
    except ValueError as e:
        raise ClientError(f"request body is not valid JSON: {e}") from None
    if not isinstance(obj, dict):
        raise ClientError("request body must be a JSON object")
    return obj


def _no_constant(name: str):
    raise ValueError(f"{name} is not a JSON number")


def parse(model: type[BaseModel], obj: dict) -> BaseModel:
    try:
        return model.model_validate(obj)
    except ValidationError as exc:
        first = exc.errors()[0]
        param = ".".join(str(p) for p in first.get("loc", ())) or None
        raise ClientError(f"invalid request body: {param}: {first.get('msg', 'malformed')}", param) from None


def pcm16(audio: np.ndarray) -> bytes:
    return (np.clip(audio, -1, 1) * 32767).astype("<i2").tobytes()


def wav_stream_header(sample_rate: int) -> bytes:
    """A 16-bit mono WAV header whose sizes say 'unknown' (0xFFFFFFFF), as streaming servers send."""
    return (b"RIFF" + struct.pack("<I", 0xFFFFFFFF) + b"WAVEfmt " +
            struct.pack("<IHHIIHH", 16, 1, 1, sample_rate, sample_rate * 2, 2, 16) +
            b"data" + struct.pack("<I", 0xFFFFFFFF))


def encode_audio(audio: np.ndarray, sample_rate: int, fmt: str) -> bytes:
    if fmt == "pcm":
        return pcm16(audio)
    if fmt == "wav":   # 16-bit like OpenAI's
        buf = io.BytesIO()
        import soundfile as sf
        sf.write(buf, audio, sample_rate, format="WAV", subtype="PCM_16")
        return buf.getvalue()
    with tempfile.TemporaryDirectory() as d:   # flac, mp3: the project's writer (ffmpeg for mp3)
        return save_audio(Path(d) / f"out.{fmt}", audio, sample_rate).read_bytes()


def change_speed(audio: np.ndarray, sample_rate: int, speed: float) -> np.ndarray:
    """Tempo change without a pitch change (ffmpeg atempo; one stage takes 0.5-2.0, so chain them)."""
    stages, left = [], speed
    while left > 2.0 or left < 0.5:
        stages.append(2.0 if left > 2.0 else 0.5)
        left /= stages[-1]
    stages.append(left)
    proc = subprocess.run(["ffmpeg", "-v", "error", "-nostdin", "-f", "f32le", "-ar", str(sample_rate), "-ac", "1",
                           "-i", "-", "-filter:a", ",".join(f"atempo={s:.6f}" for s in stages), "-f", "f32le", "-"],
                          input=np.asarray(audio, np.float32).tobytes(), capture_output=True)
    if proc.returncode != 0:
        raise RuntimeError(f"ffmpeg atempo failed: {proc.stderr.decode(errors='replace')[-300:]}")
    return np.frombuffer(proc.stdout, np.float32).copy()


def create_app(engine: Engine, settings: ServerSettings | None = None) -> FastAPI:
    s = settings or ServerSettings()
    batcher = Batcher(engine, s.max_batch, s.batch_wait_ms / 1000)
    decoders = ThreadPoolExecutor(s.decode_workers, thread_name_prefix="upload-decode")
    # Large bodies (uploads) held at once from reading to decoded: each costs ~3 copies of itself
    # (bytes, str, decoded), so this bounds their memory; the others wait before reading theirs.
    uploads = asyncio.Semaphore(2 * s.decode_workers)
    presets = engine.voices.names()
    aliases = {**{v: DEFAULT for v in OPENAI_VOICES if v not in presets}, **s.voice_aliases}
    for name, target in s.voice_aliases.items():
        if target != DEFAULT and target not in presets:
            raise ValueError(f"voice_aliases.{name}: {target!r} is neither 'default' nor a voice preset "
                             f"(presets: {presets})")

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
        return {"voices": engine.voices.names(), "aliases": aliases}

    @app.get("/", response_class=HTMLResponse)
    def page():
        return (STATIC / "index.html").read_text(encoding="utf-8")

    def resolve_voice(voice: str | None) -> str | None:
        """A request's voice -> preset name(s) for the engine, or None for the default voice.
        A preset of the name wins, then voice_aliases, then OpenAI's names (the default voice)."""
        if voice in (None, "", DEFAULT, "none"):
            return None
        names = [n.strip() for n in voice.split(",")]
        out = []
        for n in names:
            try:
                engine.voices.get(n)
                out.append(n)
                continue
            except VoiceError as e:
                if n not in aliases:
                    raise ClientError(str(e), "voice") from None
            out.append(aliases[n])
        if out == [DEFAULT]:
            return None
        if DEFAULT in out:
            raise ClientError(f"voice {voice!r}: a dialogue needs a preset per speaker, and "
                              f"{names[out.index(DEFAULT)]!r} is the default voice", "voice")
        return ",".join(out)

    async def to_request(body: SpeechRequest) -> Request:
        if body.model not in (s.model_name, *MODEL_ALIASES):
            raise ClientError(f"unknown model {body.model!r}; this server serves {s.model_name!r}", "model")
        text = body.input.strip()
        if not text:
            raise ClientError("input is empty", "input")
        if len(text) > s.max_input_chars:
            raise ClientError(f"input has {len(text)} characters, more than {s.max_input_chars}", "input")
        if body.response_format not in MEDIA:
            raise ClientError(f"response_format must be one of {sorted(MEDIA)}", "response_format")
        if body.stream and body.response_format not in ("wav", "pcm"):
            raise ClientError("stream=true supports response_format wav or pcm", "response_format")
        if not 0.25 <= body.speed <= 4.0:
            raise ClientError("speed must be within 0.25 and 4.0", "speed")
        if body.reference_text and len(body.reference_text) > s.max_input_chars:
            raise ClientError(f"reference_text is longer than {s.max_input_chars} characters", "reference_text")
        ref, voice = None, None
        if body.reference_audio:
            if body.voice:
                raise ClientError("give either voice or reference_audio, not both", "voice")
            if not (body.reference_text or "").strip():
                raise ClientError("reference_audio needs reference_text (its transcript)", "reference_text")
            try:   # off the event loop, at most decode_workers at a time
                ref = await asyncio.get_running_loop().run_in_executor(
                    decoders, decode_upload, body.reference_audio, int(s.max_upload_mb * 2 ** 20),
                    engine.cfg.max_reference_seconds, engine.sample_rate)
            except UploadError as e:
                raise ClientError(str(e), "reference_audio", e.status) from None
        else:
            voice = resolve_voice(body.voice)
        overrides = {k: v for k, v in (("seed", body.seed), ("temperature", body.temperature)) if v is not None}
        return Request(text, voice=voice, reference_audio=ref, reference_text=body.reference_text,
                       sampling=engine.sampling.replace(**overrides) if overrides else None)

    @app.post("/v1/audio/speech")
    async def speech(http: HTTPRequest):
        slot = []

        async def take_slot():   # the rest of the body waits in the socket (TCP holds the sender back)
            await uploads.acquire()
            slot.append(1)

        try:
            body = parse(SpeechRequest, await read_json(http, s.max_body_bytes, take_slot))
            req = await to_request(body)
            body.reference_audio = None   # the base64 text is not kept while the request waits for the engine
        finally:
            if slot:
                uploads.release()
        fmt = body.response_format
        if body.stream:
            chunks = batcher.stream(req)
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

            return StreamingResponse(body_iter(), media_type=MEDIA[fmt])
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
        return Response(data, media_type=MEDIA[fmt])

    return app


def main() -> None:
    import hydra
    from omegaconf import DictConfig, OmegaConf

    from higgs_train.config import CONFIG_DIR

    @hydra.main(version_base="1.3", config_path=str(CONFIG_DIR / "inference"), config_name="serve")
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
