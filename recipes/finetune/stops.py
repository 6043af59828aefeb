"""Does the fine-tuned model still stop? Held-out loss alone cannot tell: a model that has lost
its end of speech can score a lower loss and then speak every sentence to the frame cap (the
demo's fine-tuned model did, at 30 s for sentences its base spoke in 4-5 s).

At every validation, StopCheck speaks a few held-out sentences with the model being trained,
the way `python -m inference voice=NAME` will (the voice preset's clip as the cloning prompt, the
engine's default sampling with a fixed seed), and logs

    val/stop_rate       fraction of the sentences the model ended itself (stop reason `eos`: not
                        the cap, nor the engine's text budget, silence or loop stops, which are
                        the rules of higgs_train/llm/stops.py that every generation path applies)
    val/duration_ratio  mean of generated seconds / the held-out recording's seconds

The cap is `max_ratio` times each recording (at least one second more), so a model that does
not stop costs a bounded time. BestThatStops is the ModelCheckpoint of the lowest val/loss among
the validations whose stop rate reaches `min_stop_rate` and whose duration ratio lies in
`duration_range` (a model that cuts its sentences short is as broken as one that never ends);
when none does, no best checkpoint exists and the recipe says so instead of exporting (run.py).
"""
from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from higgs_train.evaluate.callback import measuring
from higgs_train.files import write_text_atomic
from higgs_train.shards import iter_shard, list_shards

log = logging.getLogger(__name__)

STOP_RATE, DURATION_RATIO = "val/stop_rate", "val/duration_ratio"


@dataclass
class Sentence:
    text: str
    seconds: float   # the held-out recording's duration


def held_out_sentences(val_shards, n: int) -> list[Sentence]:
    """The first n held-out clips (in shard order) with a transcript."""
    out = []
    for p in list_shards(val_shards):
        for s in iter_shard(p):
            row = s["row"] or {}
            if (row.get("text") or "").strip():
                out.append(Sentence(row["text"].strip(), float(row["duration"])))
            if len(out) == n:
                return out
    return out


def speak(model, codec, text_tokenizer, sentences: list[Sentence], reference, max_ratio: float,
          seed: int = 0) -> dict:
    """Generate each sentence with `model` (a DualFFNModel, LoRA layers included) ->
    {"stop_rate", "duration_ratio", "items": [{text, seconds, generated_seconds, stopped, stop_reason}]}.
    reference: (wav, sample_rate, transcript) of the cloning prompt."""
    from inference.engine import Engine, EngineConfig, Request
    from inference.sampling import SamplingConfig

    # one chunk per sentence (no text splitting): "stopped" means the model ended the sentence's stream
    engine = Engine(model, codec, text_tokenizer, EngineConfig(chunk_words=10 ** 6), SamplingConfig(seed=seed))
    wav, sr, ref_text = reference
    caps = [max(math.ceil(max_ratio * s.seconds * codec.frame_rate), math.ceil(s.seconds * codec.frame_rate) + 25)
            for s in sentences]
    results = engine.generate([Request(s.text, reference_audio=(wav, sr), reference_text=ref_text,
                                       sampling=engine.sampling.replace(max_frames=cap))
                               for s, cap in zip(sentences, caps)]) if sentences else []
    items = [{"text": s.text, "seconds": s.seconds, "generated_seconds": r.codes.shape[1] / codec.frame_rate,
              "stopped": r.stop_reason == "eos", "stop_reason": r.stop_reason} for s, r in zip(sentences, results)]
    return {"stop_rate": float(np.mean([i["stopped"] for i in items])) if items else math.nan,
            "duration_ratio": float(np.mean([i["generated_seconds"] / max(i["seconds"], 1e-3) for i in items]))
            if items else math.nan, "items": items}


def read_reference(preset_dir) -> tuple[np.ndarray, int, str]:
    """A voice preset folder (reference.wav + reference.txt) -> (wav, sample_rate, transcript)."""
    from higgs_train.audio import load_audio

    d = Path(preset_dir)
    wav, sr = load_audio(d / "reference.wav")
    return wav, sr, (d / "reference.txt").read_text(encoding="utf-8").strip()


def read_history(path) -> list[dict]:
    p = Path(path)
    return json.loads(p.read_text()) if p.is_file() else []


class StopCheck(L.Callback):
    """val/stop_rate and val/duration_ratio after every validation (not the sanity check), on every
    rank (same weights, same seed: the same figures, so every rank's BestThatStops decides alike).
    Each validation's row (step, val/loss, stop rate, duration ratio) is appended to `history`
    (a JSON file, rewritten whole), which the recipe reads after training."""

    def __init__(self, val_shards: str, sentences: int, reference_dir: str, tokenizer: str,
                 text_tokenizer: str, history: str, max_ratio: float = 3.0):
        self.val_shards, self.n, self.reference_dir, self.max_ratio = val_shards, sentences, reference_dir, max_ratio
        self.tokenizer, self.text_tokenizer, self.history_path = tokenizer, text_tokenizer, Path(history)
        self._loaded = None   # (sentences, reference, codec, text tokenizer), read at the first validation

    def _load(self, model):
        from higgs_train.families import family_for_model
        from higgs_train.tokenizer import AudioTokenizer

        if self._loaded is None:   # the text tokenizer as the model's family reads it
            self._loaded = (held_out_sentences(self.val_shards, self.n), read_reference(self.reference_dir),
                            AudioTokenizer.from_pretrained(self.tokenizer, device=model.text_embed.weight.device),
                            family_for_model(model).text_tokenizer(self.text_tokenizer))
        return self._loaded

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or self.n < 1:
            return
        model = pl_module.model.get_base_model() if hasattr(pl_module.model, "get_base_model") else pl_module.model
        sentences, reference, codec, tok = self._load(model)
        with measuring(model):
            res = speak(model, codec, tok, sentences, reference, self.max_ratio)
        loss = trainer.callback_metrics.get("val/loss")
        row = {"step": trainer.global_step, "val_loss": float(loss) if loss is not None else None,
               "stop_rate": res["stop_rate"], "duration_ratio": res["duration_ratio"]}
        history = [h for h in read_history(self.history_path) if h["step"] < row["step"]] + [row]
        if trainer.is_global_zero:
            write_text_atomic(self.history_path, json.dumps(history, indent=1))
        log.info("step %d: stops on %d/%d held-out sentences, duration ratio %.2f", row["step"],
                 round(res["stop_rate"] * len(sentences)), len(sentences), res["duration_ratio"])
        metrics = {STOP_RATE: res["stop_rate"], DURATION_RATIO: res["duration_ratio"]}
        # callback_metrics: what BestThatStops reads (Lightning runs checkpoint callbacks last)
        trainer.callback_metrics.update({k: torch.tensor(v) for k, v in metrics.items()})
        for lg in trainer.loggers:
            lg.log_metrics(metrics, step=trainer.global_step)


def candidate(stop_rate: float, duration_ratio: float, min_stop_rate: float, duration_range) -> bool:
    """May a validation with these figures give the exported checkpoint? It stops often enough, and
    what it says is neither cut short nor drawn out (mean duration ratio inside duration_range)."""
    lo, hi = duration_range
    return stop_rate >= min_stop_rate and lo <= duration_ratio <= hi


class BestThatStops(ModelCheckpoint):
    """ModelCheckpoint (monitor val/loss, mode min) that considers only the validations that are a
    `candidate` (a validation without stop-check figures counts as one)."""

    def __init__(self, *args, min_stop_rate: float = 1.0, duration_range=(0.0, math.inf), **kw):
        super().__init__(*args, **kw)
        self.min_stop_rate, self.duration_range = min_stop_rate, tuple(duration_range)

    def _save_topk_checkpoint(self, trainer: L.Trainer, monitor_candidates: dict) -> None:
        # every path to a best-checkpoint save (validation end, epoch end) comes through here
        rate, ratio = monitor_candidates.get(STOP_RATE), monitor_candidates.get(DURATION_RATIO)
        if rate is not None and not candidate(float(rate), float(ratio), self.min_stop_rate, self.duration_range):
            log.info("step %d: not a best-checkpoint candidate (stop rate %.2f, needed %.2f; duration ratio %.2f, "
                     "needed %g-%g)", trainer.global_step, float(rate), self.min_stop_rate, float(ratio),
                     *self.duration_range)
            return
        super()._save_topk_checkpoint(trainer, monitor_candidates)
