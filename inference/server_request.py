"""The speech server's requests: the body read under a size cap, validated (pydantic), its voice
resolved (presets, voice_aliases, OpenAI's names) and its upload decoded off the event loop, into
an engine Request. Every refusal is a ClientError (status, message, param), which the app turns
into the OpenAI error shape."""
from __future__ import annotations

import asyncio
import json
from concurrent.futures import ThreadPoolExecutor

from fastapi import Request as HTTPRequest
from pydantic import BaseModel, Field, ValidationError
from starlette.requests import ClientDisconnect

from inference.engine import Engine, Request
from inference.server_audio import MEDIA
from inference.server_upload import UploadError, decode_upload
from inference.voices import VoiceError

MODEL_ALIASES = ("tts-1", "tts-1-hd")   # OpenAI client defaults map to the one served model
# OpenAI's built-in voices: clients send them by default, so they must speak (the default voice
# unless a preset or voice_aliases names another)
OPENAI_VOICES = ("alloy", "ash", "ballad", "cedar", "coral", "echo", "fable", "marin", "nova", "onyx", "sage",
                 "shimmer", "verse")
DEFAULT = "default"
SMALL_BODY = 2 ** 17                     # text-only bodies stay under this; larger ones carry an upload


class SpeechRequest(BaseModel):
    model: str
    input: str
    voice: str | None = None
    response_format: str = "wav"
    speed: float = 1.0
    stream: bool = False
    stream_format: str = "audio"         # "sse": server-sent events (implies stream), as OpenAI's API
    reference_audio: str | None = None   # base64 of a wav, flac, ogg or mp3 file
    reference_text: str | None = None
    seed: int | None = Field(default=None, ge=0, lt=2 ** 63)
    temperature: float | None = Field(default=None, ge=0, le=2)
    stops: dict[str, float] | None = None   # overrides of the engine's StopRules (higgs_train/llm/stops.py)


class ClientError(Exception):
    def __init__(self, message: str, param: str | None = None, status: int = 400, code: str | None = None):
        self.message, self.param, self.status, self.code = message, param, status, code


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


class Speech:
    """Turns a parsed SpeechRequest into an engine Request (settings: the server's ServerSettings).
    Uploads are decoded in `decoders`, at most its worker count at a time."""

    def __init__(self, engine: Engine, settings, decoders: ThreadPoolExecutor):
        self.engine, self.s, self.decoders = engine, settings, decoders
        presets = engine.voices.names()
        self.aliases = {**{v: DEFAULT for v in OPENAI_VOICES if v not in presets}, **settings.voice_aliases}
        for name, target in settings.voice_aliases.items():
            if target != DEFAULT and target not in presets:
                raise ValueError(f"voice_aliases.{name}: {target!r} is neither 'default' nor a voice preset "
                                 f"(presets: {presets})")

    def resolve_voice(self, voice: str | None) -> str | None:
        """A request's voice -> preset name(s) for the engine, or None for the default voice.
        A preset of the name wins, then voice_self.aliases, then OpenAI's names (the default voice)."""
        if voice in (None, "", DEFAULT, "none"):
            return None
        names = [n.strip() for n in voice.split(",")]
        out = []
        for n in names:
            try:
                self.engine.voices.get(n)
                out.append(n)
                continue
            except VoiceError as e:
                if n not in self.aliases:
                    raise ClientError(str(e), "voice") from None
            out.append(self.aliases[n])
        if out == [DEFAULT]:
            return None
        if DEFAULT in out:
            raise ClientError(f"voice {voice!r}: a dialogue needs a preset per speaker, and "
                              f"{names[out.index(DEFAULT)]!r} is the default voice", "voice")
        return ",".join(out)

    async def to_request(self, body: SpeechRequest) -> Request:
        if body.model not in (self.s.model_name, *MODEL_ALIASES):
            raise ClientError(f"unknown model {body.model!r}; this server serves {self.s.model_name!r}", "model")
        text = body.input.strip()
        if not text:
            raise ClientError("input is empty", "input")
        if len(text) > self.s.max_input_chars:
            raise ClientError(f"input has {len(text)} characters, more than {self.s.max_input_chars}", "input")
        if body.response_format not in MEDIA:
            raise ClientError(f"response_format must be one of {sorted(MEDIA)}", "response_format")
        if body.stream_format not in ("audio", "sse"):
            raise ClientError("stream_format must be audio or sse", "stream_format")
        if (body.stream or body.stream_format == "sse") and body.response_format not in ("wav", "pcm"):
            raise ClientError("stream=true supports response_format wav or pcm", "response_format")
        if not 0.25 <= body.speed <= 4.0:
            raise ClientError("speed must be within 0.25 and 4.0", "speed")
        if body.reference_text and len(body.reference_text) > self.s.max_input_chars:
            raise ClientError(f"reference_text is longer than {self.s.max_input_chars} characters", "reference_text")
        ref, voice = None, None
        if body.reference_audio:
            if body.voice:
                raise ClientError("give either voice or reference_audio, not both", "voice")
            if not (body.reference_text or "").strip():
                raise ClientError("reference_audio needs reference_text (its transcript)", "reference_text")
            try:   # off the event loop, at most decode_workers at a time
                ref = await asyncio.get_running_loop().run_in_executor(
                    self.decoders, decode_upload, body.reference_audio, int(self.s.max_upload_mb * 2 ** 20),
                    self.engine.cfg.max_reference_seconds, self.engine.sample_rate)
            except UploadError as e:
                raise ClientError(str(e), "reference_audio", e.status) from None
        else:
            voice = self.resolve_voice(body.voice)
        overrides = {k: v for k, v in (("seed", body.seed), ("temperature", body.temperature)) if v is not None}
        try:
            stops = self.engine.stops.replace(**body.stops) if body.stops else None
        except ValueError as e:
            raise ClientError(str(e), "stops") from None
        return Request(text, voice=voice, reference_audio=ref, reference_text=body.reference_text,
                       sampling=self.engine.sampling.replace(**overrides) if overrides else None, stops=stops)
