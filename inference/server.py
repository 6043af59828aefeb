"""OpenAI-compatible speech server: `python -m inference.server model=DIR tokenizer=DIR [host= port=]`.

    POST /v1/audio/speech  {"model", "input", "voice", "response_format": wav|flac|mp3|pcm,
                            "speed", "stream", "reference_audio" (base64 file), "reference_text"}
    GET  /v1/models        GET /v1/voices        GET /health        GET /  (a page to try it)

pcm is 16-bit little-endian mono at 24 kHz. stream=true sends audio as it is generated (wav with an
open-ended header, or pcm). Every client error is a 4xx with {"error": {"message", "type", "param"}};
the one engine thread (inference.batcher) queues and batches concurrent requests.
"""
from __future__ import annotations

import asyncio
import base64
import binascii
import io
import logging
import struct
import subprocess
import tempfile
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from fastapi import FastAPI, Request as HTTPRequest
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool

from higgs_train.audio import AudioError, load_audio, save_audio
from inference.batcher import Batcher
from inference.engine import Engine, Request, RequestError
from inference.voices import VoiceError

log = logging.getLogger(__name__)
STATIC = Path(__file__).parent / "static"
MEDIA = {"wav": "audio/wav", "flac": "audio/flac", "mp3": "audio/mpeg", "pcm": "audio/pcm"}
MODEL_ALIASES = ("tts-1", "tts-1-hd")   # OpenAI client defaults map to the one served model


@dataclass
class ServerSettings:
    model_name: str = "higgs-audio"
    max_input_chars: int = 4096
    max_batch: int = 8
    batch_wait_ms: float = 20.0
    max_upload_mb: float = 10.0


class SpeechRequest(BaseModel):
    model: str
    input: str
    voice: str | None = None
    response_format: str = "wav"
    speed: float = 1.0
    stream: bool = False
    reference_audio: str | None = None   # base64 of an audio file (any format ffmpeg reads)
    reference_text: str | None = None
    seed: int | None = None
    temperature: float | None = Field(default=None, ge=0, le=2)


class ClientError(Exception):
    def __init__(self, message: str, param: str | None = None, status: int = 400):
        self.message, self.param, self.status = message, param, status


def error(status: int, message: str, param: str | None = None) -> JSONResponse:
    return JSONResponse({"error": {"message": message, "type": "invalid_request_error", "param": param}},
                        status_code=status)


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

    @asynccontextmanager
    async def lifespan(_app):
        batcher.start()
        yield
        batcher.stop()

    app = FastAPI(title="Higgs Audio TTS", version="0.1.0", lifespan=lifespan)
    app.state.batcher = batcher

    @app.exception_handler(RequestValidationError)
    async def _bad_body(_req, exc: RequestValidationError):
        first = exc.errors()[0] if exc.errors() else {}
        param = ".".join(str(p) for p in first.get("loc", ())[1:]) or None
        return error(400, f"invalid request body: {first.get('msg', 'malformed')}", param)

    @app.exception_handler(ClientError)
    async def _client_error(_req, exc: ClientError):
        return error(exc.status, exc.message, exc.param)

    @app.exception_handler(404)
    async def _not_found(req: HTTPRequest, _exc):
        return error(404, f"no route {req.method} {req.url.path}")

    @app.exception_handler(405)
    async def _bad_method(req: HTTPRequest, _exc):
        return error(405, f"method {req.method} not allowed on {req.url.path}")

    @app.get("/health")
    def health():
        return {"status": "ok", "queued": batcher.queued, "device": str(engine.device)}

    @app.get("/v1/models")
    def models():
        return {"object": "list", "data": [{"id": s.model_name, "object": "model", "owned_by": "local"}]}

    @app.get("/v1/voices")
    def voices():
        return {"voices": engine.voices.names()}

    @app.get("/", response_class=HTMLResponse)
    def page():
        return (STATIC / "index.html").read_text(encoding="utf-8")

    def to_request(body: SpeechRequest) -> Request:
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
        ref = None
        if body.reference_audio:
            if body.voice:
                raise ClientError("give either voice or reference_audio, not both", "voice")
            ref = decode_upload(body.reference_audio, s.max_upload_mb)
            if not (body.reference_text or "").strip():
                raise ClientError("reference_audio needs reference_text (its transcript)", "reference_text")
        elif body.voice and body.voice not in ("default", "none"):
            for name in body.voice.split(","):
                try:
                    engine.voices.get(name.strip())
                except VoiceError as e:
                    raise ClientError(str(e), "voice") from None
        overrides = {k: v for k, v in (("seed", body.seed), ("temperature", body.temperature)) if v is not None}
        return Request(text, voice=None if body.voice in (None, "default", "none") or ref else body.voice,
                       reference_audio=ref, reference_text=body.reference_text,
                       sampling=engine.sampling.replace(**overrides) if overrides else None)

    @app.post("/v1/audio/speech")
    async def speech(body: SpeechRequest):
        req = to_request(body)
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
        try:
            result = await asyncio.wrap_future(batcher.submit(req))
        except RequestError as e:
            raise ClientError(str(e), "input") from None
        audio = result.audio
        if body.speed != 1.0:
            audio = await run_in_threadpool(change_speed, audio, result.sample_rate, body.speed)
        data = await run_in_threadpool(encode_audio, audio, result.sample_rate, fmt)
        return Response(data, media_type=MEDIA[fmt])

    return app


def decode_upload(b64: str, max_mb: float) -> tuple[np.ndarray, int]:
    """A base64 audio file (optionally a data: URL) -> (wav, sample_rate); bad input -> ClientError."""
    if b64.startswith("data:"):
        b64 = b64.split(",", 1)[-1]
    if len(b64) * 3 / 4 > max_mb * 2 ** 20:
        raise ClientError(f"reference_audio is larger than {max_mb:g} MB", "reference_audio", 413)
    try:
        raw = base64.b64decode(b64, validate=True)
    except (binascii.Error, ValueError):
        raise ClientError("reference_audio is not valid base64", "reference_audio") from None
    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / "reference"
        p.write_bytes(raw)
        try:
            wav, sr = load_audio(p, 24000)
        except AudioError as e:
            raise ClientError(f"reference_audio could not be decoded: {e.reason}", "reference_audio") from None
    if len(wav) == 0:
        raise ClientError("reference_audio is empty", "reference_audio")
    return wav, sr


def main() -> None:
    import hydra
    from omegaconf import DictConfig

    from higgs_train.config import CONFIG_DIR

    @hydra.main(version_base="1.3", config_path=str(CONFIG_DIR / "inference"), config_name="serve")
    def run(cfg: DictConfig) -> None:
        import uvicorn

        from inference.engine import engine_from_config

        engine = engine_from_config(cfg)
        settings = ServerSettings(cfg.model_name, cfg.max_input_chars, cfg.max_batch, cfg.batch_wait_ms,
                                  cfg.max_upload_mb)
        log.info("serving %s on http://%s:%d", cfg.model, cfg.host, cfg.port)
        uvicorn.run(create_app(engine, settings), host=cfg.host, port=cfg.port, log_level="info")

    run()


if __name__ == "__main__":
    main()
