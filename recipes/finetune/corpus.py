"""The voice's curated clips: sidecar check, train / held-out split, the preset's reference clip.

The split is by clip and deterministic: clips are ranked by a hash of their id and the first
max(1, round(val_fraction x N)) are held out, so a rerun (or the same corpus elsewhere) holds
out the same clips. Held-out clips are never trained on; they give the validation loss that
early stopping and the best checkpoint follow.

Every clip is one voice, so the split rewrites each row's `source` and `speaker` to the voice
name (the file it came from stays in `recording`): the LLM data stream groups a source's
consecutive segments to find voice-cloning partners, and with one group per voice any clip can
serve as another's reference, also across files (one-sentence-per-file folders included). The
clone samples keep the model's cloning ability, which inference with the preset uses.
"""
from __future__ import annotations

import fnmatch
import hashlib
import json
import os
import zlib
from collections import Counter
from pathlib import Path

from higgs_train.audio import save_audio
from higgs_train.files import atomic_dir, write_text_atomic
from recipes.finetune import FinetuneError
from higgs_train.shards import ShardWriter, decode_flac, iter_shard, list_shards

SIDECAR_EXTS = (".json", ".txt")   # what the pipeline's sidecar transcriber reads, in its order


def audio_files(voice_dir, ignore) -> list[Path]:
    """The files curation will take as inputs: all but those matching the ingest `ignore` globs."""
    out = []
    for dirpath, dirnames, filenames in os.walk(voice_dir, followlinks=True):
        dirnames[:] = sorted(d for d in dirnames if not any(fnmatch.fnmatch(d, p) for p in ignore))
        out += [Path(dirpath, f) for f in sorted(filenames) if not any(fnmatch.fnmatch(f, p) for p in ignore)]
    return out


def without_sidecar(files: list[Path]) -> list[Path]:
    return [f for f in files if not any(f.with_suffix(e).is_file() for e in SIDECAR_EXTS)]


def read_manifest(corpus_dir) -> list[dict]:
    path = Path(corpus_dir) / "manifest.jsonl"
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def rejection_reasons(corpus_dir) -> Counter:
    path = Path(corpus_dir) / "rejected.jsonl"
    if not path.is_file():
        return Counter()
    return Counter(json.loads(line)["reason"] for line in path.read_text(encoding="utf-8").splitlines() if line.strip())


def held_out_ids(ids: list[str], val_fraction: float) -> set[str]:
    n_val = max(1, round(val_fraction * len(ids)))
    return set(sorted(ids, key=lambda i: (zlib.crc32(i.encode()), i))[:n_val])


def split(corpus_dir, out_dir, name: str, val_fraction: float) -> dict:
    """Write out_dir/train and out_dir/val shards from the tokenized corpus (clips without codes
    are left out); out_dir/split.json, written last, records the split. Skipped when that record
    matches the corpus and settings. Returns the record."""
    corpus_dir, out_dir = Path(corpus_dir), Path(out_dir)
    key = {"manifest_sha1": hashlib.sha1((corpus_dir / "manifest.jsonl").read_bytes()).hexdigest(),
           "val_fraction": val_fraction, "name": name}
    record_path = out_dir / "split.json"
    if record_path.is_file():
        record = json.loads(record_path.read_text())
        if all(record.get(k) == v for k, v in key.items()):
            return record
    samples = [s for p in list_shards(corpus_dir / "shards") for s in iter_shard(p)]
    coded = [s for s in samples if s["codes"] is not None and s["row"] is not None]
    if len(coded) < 2:
        raise FinetuneError(f"{len(coded)} tokenized clips in {corpus_dir / 'shards'}: need at least 2 "
                         "(one to train on, one held out)")
    val = held_out_ids([s["key"] for s in coded], val_fraction)
    if len(val) >= len(coded):
        raise FinetuneError(f"val_fraction={val_fraction} holds out all {len(coded)} clips")
    seconds = {"train": 0.0, "val": 0.0}
    counts = {"train": 0, "val": 0}
    with atomic_dir(out_dir) as tmp:
        with ShardWriter(tmp / "train") as wt, ShardWriter(tmp / "val") as wv:
            for s in coded:
                part = "val" if s["key"] in val else "train"
                row = {**s["row"], "source": name, "speaker": name, "recording": s["row"]["source"]}
                (wv if part == "val" else wt).write(s["key"], s["flac"], row, s["codes"])
                seconds[part] += float(row["duration"])
                counts[part] += 1
        record = {**key, "clips": counts, "seconds": {k: round(v, 3) for k, v in seconds.items()},
                  "left_out_without_codes": len(samples) - len(coded), "val_ids": sorted(val)}
        (tmp / "split.json").write_text(json.dumps(record, indent=2))
    return record


def pick_reference(rows: list[dict], min_seconds: float, max_seconds: float) -> dict:
    """The preset's clip: the highest DNSMOS OVRL among clips of min..max seconds (a clip outside
    the range only when none is inside: the one nearest to it). The model copies its prompt's
    recording conditions, so the cleanest clip makes the best prompt; 3-15 s carry enough of the
    voice without a long prompt."""
    def ovrl(r):
        v = (r.get("quality") or {}).get("dnsmos_ovrl")
        return float(v) if isinstance(v, (int, float)) and v == v else float("-inf")

    def outside(r):
        d = float(r["duration"])
        return max(min_seconds - d, d - max_seconds, 0.0)

    if not rows:
        raise FinetuneError("no curated clips to choose a reference from")
    return min(rows, key=lambda r: (outside(r), -ovrl(r), r["id"]))


def write_preset(corpus_dir, row: dict, folder) -> dict:
    """folder/reference.wav (the clip, 24 kHz) + folder/reference.txt (its transcript)."""
    folder = Path(folder)
    shard = Path(corpus_dir) / row["shard"]
    sample = next((s for s in iter_shard(shard) if s["key"] == row["id"]), None)
    if sample is None:
        raise FinetuneError(f"clip {row['id']} is missing from {shard}")
    wav, sr = decode_flac(sample["flac"])
    save_audio(folder / "reference.wav", wav, sr)
    write_text_atomic(folder / "reference.txt", row["text"].strip() + "\n")
    return {"id": row["id"], "recording": row["source"], "start": row["start"], "duration": row["duration"],
            "dnsmos_ovrl": (row.get("quality") or {}).get("dnsmos_ovrl"), "text": row["text"]}
