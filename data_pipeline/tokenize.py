"""Tokenize stage: add KEY.codes.npy (int16 [8, frames]) to every sample of the shards.

    python -m data_pipeline.tokenize shards=OUT/shards tokenizer=DIR [batch_size=16 device=cpu]

DIR is an audio tokenizer in any of the three layouts (ours, the transformers port's, or the
original release's config.json + model.pth, e.g. a download of bosonai/higgs-audio-v2-tokenizer),
or a Higgs TTS 3 checkpoint, whose bundled tokenizer is read (higgs_train/tokenizer/layouts.py).

Each shard is rewritten atomically (temp file + rename) once all its samples are encoded,
so a killed run loses at most the shard in progress; a rerun skips shards whose samples
all have codes, and encodes only the missing samples of the others. Which tokenizer made a
shard's codes is recorded beside it (shards/.codes/NAME.json, a content hash of the tokenizer's
config and weights): codes from another tokenizer (one retrained since) are stale and the whole
shard is encoded again. A clip's codes never depend on its batch (AudioTokenizer.encode_batch:
clips of equal length share a batch, none is zero-padded).
"""
from __future__ import annotations

import hashlib
import json
import logging
import time
from pathlib import Path

import hydra
import numpy as np
import soxr
import torch
from omegaconf import DictConfig
from tqdm import tqdm

from data_pipeline.config import CONFIG_DIR
from higgs_train.files import write_text_atomic
from higgs_train.shards import SAMPLE_RATE, decode_flac, iter_shard, list_shards, rewrite_shard
from higgs_train.tokenizer import AudioTokenizer
from higgs_train.tokenizer.layouts import BUNDLED_CONFIG, bundled_codec_tensors, bundles_tokenizer

log = logging.getLogger(__name__)


def _load(sample: dict) -> np.ndarray | None:
    try:
        wav, sr = decode_flac(sample["flac"])
    except Exception as e:  # a broken sample keeps no codes and is reported, never fatal
        log.warning("%s: cannot decode audio (%s)", sample["key"], e)
        return None
    if sr != SAMPLE_RATE:
        wav = soxr.resample(wav, sr, SAMPLE_RATE).astype(np.float32)
    return wav if len(wav) else None


CODES_DIR = ".codes"   # beside the shards; hidden, so webdataset / `datasets` never read it


WEIGHT_SUFFIXES = (".safetensors", ".pth", ".bin")


def tokenizer_fingerprint(tokenizer_dir) -> str:
    """Content hash of an audio tokenizer directory: config.json and its weights files
    (model.safetensors in ours and the port's layout, model.pth in the original's); of a Higgs TTS 3
    checkpoint, the tensors of the tokenizer it bundles and its codec config file, not the LLM's weights."""
    d = Path(tokenizer_dir)
    h = hashlib.sha1()
    if bundles_tokenizer(d):
        for name, t in bundled_codec_tensors(d).items():
            h.update(name.encode())
            h.update(t.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
        files = [BUNDLED_CONFIG] if (d / BUNDLED_CONFIG).is_file() else []
    else:
        weights = sorted(p.name for p in d.iterdir() if p.suffix in WEIGHT_SUFFIXES and p.is_file())
        if not weights:
            raise FileNotFoundError(f"no tokenizer weights (*.safetensors, *.pth) in {d}")
        files = ["config.json", *weights]
    for name in files:
        h.update(name.encode())
        with open(d / name, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()[:16]


def _made_by(shard: str) -> Path:
    return Path(shard).parent / CODES_DIR / f"{Path(shard).name}.json"


@torch.inference_mode()
def encode_batch(tok: AudioTokenizer, wavs: list[np.ndarray]) -> list[np.ndarray]:
    """24 kHz clips of any lengths -> int16 codes [8, tok.n_frames(len)] each, equal to encoding
    each clip alone."""
    return [c.cpu().numpy().astype(np.int16) for c in tok.encode_batch(wavs, SAMPLE_RATE)]


def tokenize_shards(shards, tokenizer_dir, batch_size: int = 16, device: str = "cpu",
                    progress: bool = True) -> dict:
    """Encode every sample without codes; returns counts and timings."""
    paths = list_shards(shards)
    if not paths:
        raise FileNotFoundError(f"no shard-*.tar found for {shards}")
    tok = AudioTokenizer.from_pretrained(tokenizer_dir, device=device)
    fp = tokenizer_fingerprint(tokenizer_dir)
    stats = {"shards": len(paths), "shards_skipped": 0, "samples": 0, "encoded": 0, "failed": 0,
             "stale_shards": 0, "audio_seconds": 0.0, "wall_seconds": 0.0}
    t0 = time.perf_counter()
    bar = tqdm(paths, unit="shard", desc="tokenize", disable=not progress)
    for path in bar:
        samples = list(iter_shard(path))
        stats["samples"] += len(samples)
        record = _made_by(path)
        made_by = json.loads(record.read_text())["tokenizer"] if record.is_file() else None
        if made_by not in (None, fp):   # codes of another tokenizer: encode the whole shard again
            stats["stale_shards"] += 1
            for s in samples:
                s["codes"] = None
        todo = [s for s in samples if s["codes"] is None]
        if not todo:
            stats["shards_skipped"] += 1
            continue
        loaded = [(s, w) for s in todo if (w := _load(s)) is not None]
        stats["failed"] += len(todo) - len(loaded)
        loaded.sort(key=lambda sw: len(sw[1]))
        for i in range(0, len(loaded), batch_size):
            chunk = loaded[i:i + batch_size]
            for (s, w), c in zip(chunk, encode_batch(tok, [w for _, w in chunk])):
                s["codes"] = c
                stats["encoded"] += 1
                stats["audio_seconds"] += len(w) / SAMPLE_RATE
        if loaded or made_by not in (None, fp):
            rewrite_shard(path, samples)
            record.parent.mkdir(exist_ok=True)
            write_text_atomic(record, json.dumps({"tokenizer": fp, "path": str(Path(tokenizer_dir).resolve())}))
        bar.set_postfix(encoded=stats["encoded"], failed=stats["failed"])
    stats["wall_seconds"] = time.perf_counter() - t0
    stats["rtf"] = stats["wall_seconds"] / max(stats["audio_seconds"], 1e-9)
    return stats


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="tokenize")
def main(cfg: DictConfig) -> None:
    stats = tokenize_shards(cfg.shards, cfg.tokenizer, batch_size=cfg.batch_size, device=cfg.device)
    print(json.dumps(stats, indent=2))


if __name__ == "__main__":
    main()
