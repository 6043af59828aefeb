"""The curation output layout and the per-source records: what run.py writes, merge.py finalizes
and report.py reads (one module below all three, so none of them imports another for it).

    OUT/parts/<key>.json   a source's record (new_record's shape), written last: the source is done
    OUT/parts/<key>.tar    its candidate segments (FLAC + rows)
    OUT/slices/            one summary per slice of a sliced run
    OUT/.sha1/, OUT/.attempts/   duplicate claims, crash counts
"""
from __future__ import annotations

import json
import os
from pathlib import Path

from data_pipeline.stages.ingest import source_key
from higgs_train.files import dumps, remove_stale_temps, write_text_atomic

PARTS, SLICES, SHA1_DIR, ATTEMPTS = "parts", "slices", ".sha1", ".attempts"


def write_json(path: Path, obj) -> None:
    write_text_atomic(path, dumps(obj))


def new_record(rel: str, fingerprint: str, ident: dict | None, transcribed: bool = False,
               rejected: list | None = None) -> dict:
    """A source's record before any stage has filled it in (the one shape every record has)."""
    return {"source": rel, "key": source_key(rel), "fingerprint": fingerprint, "identity": ident,
            "sha1": None, "duplicate_of": None, "audio": None, "transcribed": transcribed,
            "rejected": rejected or [], "segments": [], "timings": {}, "cpu_timings": {}}


def identity(path: Path) -> dict | None:
    """What says a file is still the one processed: size and mtime_ns (None: it cannot be stat'ed)."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns}


def save_record(rec: dict, parts: Path) -> dict:
    """Write a source's record (its part tar is already whole); returns a small summary."""
    for name in (f"{rec['key']}.json", f"{rec['key']}.tar"):   # from a run killed while writing them
        remove_stale_temps(parts / name)
    if not rec["segments"]:  # no candidates: no part tar (drop one left by an earlier config)
        (parts / f"{rec['key']}.tar").unlink(missing_ok=True)
    write_json(parts / f"{rec['key']}.json", rec)
    dur = rec["audio"]["duration"] if rec["audio"] else 0.0
    return {"source": rec["source"], "seconds": dur, "segments": len(rec["segments"])}


def load_record(out_dir: Path, rel: str) -> dict | None:
    p = Path(out_dir) / PARTS / f"{source_key(rel)}.json"
    try:
        return json.loads(p.read_text())
    except (OSError, ValueError):
        return None


def is_done(rec: dict | None, fingerprint: str, input_dir: Path, out_dir: Path | None = None) -> bool:
    """A record made with this config from this very file (same size and mtime), not marked for retry;
    a duplicate's original must still be an input, unchanged and done."""
    if rec is None or rec.get("fingerprint") != fingerprint or rec.get("retry"):
        return False
    if rec.get("identity") is None or rec["identity"] != identity(Path(input_dir) / rec["source"]):
        return False
    dup = rec.get("duplicate_of")
    if dup is None:
        return True
    if out_dir is None:
        return (Path(input_dir) / dup).is_file()
    orig = load_record(out_dir, dup)
    return orig is not None and orig.get("sha1") == rec.get("sha1") and is_done(orig, fingerprint, input_dir, out_dir)
