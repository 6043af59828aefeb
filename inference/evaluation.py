"""The evaluation harness' synthesizer (higgs_train.evaluate), over the inference Engine.

    synth = from_exports(llm_dir, tokenizer_dir, sampling={"temperature": 0})   # the CLI
    synth = from_model(pl_module.model, tokenizer_dir, text_tokenizer_dir)       # the training callback
    audio, sr, info = synth("Hello there.", voice="alice")   # info: {"stop_reason": "eos" | ...}

Both build the same Engine and speak through the same call, so a sample scored during training
is made exactly as `python -m inference` would make it from the export.
"""
from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import numpy as np

from inference.engine import Engine, EngineConfig, Request, engine_from_config
from inference.sampling import SamplingConfig
from inference.voices import VoiceLibrary
from higgs_train.llm.stops import StopRules


class EngineSynthesizer:
    """Synthesizer protocol of higgs_train.evaluate.harness: one request at a time, so the harness
    can time each item (batching would blur the per-item real-time factor)."""

    def __init__(self, engine: Engine):
        self.engine = engine

    def __call__(self, text: str, voice: str | None = None, reference_audio: Path | None = None,
                 reference_text: str | None = None) -> tuple[np.ndarray, int, dict]:
        [res] = self.engine.generate([Request(text, voice=voice, reference_audio=reference_audio,
                                              reference_text=reference_text)])
        return res.audio, res.sample_rate, {"stop_reason": res.stop_reason}


def _engine_cfg(engine: dict | None) -> EngineConfig:
    ec = {**asdict(EngineConfig()), **(engine or {})}
    ec["buckets"] = tuple(ec["buckets"])
    return EngineConfig(**ec)


def from_exports(model, tokenizer, voices_dir=None, device: str = "auto", dtype: str = "auto",
                 sampling: dict | None = None, engine: dict | None = None,
                 stops: dict | None = None, quantize: str = "none") -> EngineSynthesizer:
    """From an LLM export and an audio tokenizer export (what the CLI evaluates).
    sampling / engine / stops: overrides of SamplingConfig / EngineConfig / StopRules fields;
    quantize: none | int8 | nf4."""
    from omegaconf import OmegaConf

    cfg = OmegaConf.create({"model": str(model), "tokenizer": str(tokenizer), "threads": None,
                            "voices_dir": str(voices_dir) if voices_dir else None, "device": device,
                            "dtype": dtype, "quantize": quantize, "engine": asdict(_engine_cfg(engine)),
                            "sampling": asdict(SamplingConfig(**(sampling or {}))),
                            "stops": asdict(StopRules(**(stops or {})))})
    return EngineSynthesizer(engine_from_config(cfg))


def from_model(model, tokenizer, text_tokenizer, voices_dir=None, sampling: dict | None = None,
               engine: dict | None = None, stops: dict | None = None) -> EngineSynthesizer:
    """From an in-memory model of any family (training): the audio tokenizer export and the text tokenizer
    folder are loaded onto the model's device. The Engine puts the model in eval mode; the caller
    restores training mode."""
    from higgs_train.llm.text_tokenizer import load_text_tokenizer
    from higgs_train.tokenizer import AudioTokenizer

    if not Path(tokenizer).is_dir():
        raise FileNotFoundError(f"audio tokenizer export directory {tokenizer} does not exist")
    device = next(model.parameters()).device
    codec = AudioTokenizer.from_pretrained(tokenizer, device=device)
    return EngineSynthesizer(Engine(model, codec, load_text_tokenizer(text_tokenizer), _engine_cfg(engine),
                                    SamplingConfig(**(sampling or {})), VoiceLibrary(voices_dir),
                                    StopRules(**(stops or {}))))
