"""The evaluation set: a JSONL file, one item per line.

    {"id": "a1", "text": "Hello there.", "voice": "alice"}
    {"text": "Good morning.", "reference_audio": "clips/bob.wav", "reference_text": "Bob's words.",
     "speakers": {"bob": ["clips/bob2.wav"], "alice": ["clips/alice.wav"]}}

`text` is required; `voice` (a preset name) or `reference_audio` + `reference_text` (a cloning
prompt) choose the voice. `speakers` maps a name to audio of that speaker: similarity is reported
per name (sim_<name>), so one run shows similarity to the target voice and to the others. Without
`speakers`, the reference audio is the one target (sim_ref). Relative paths resolve against the
JSONL's folder. A bad line (no text, a missing file, broken JSON) is reported, never fatal.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class EvalItem:
    id: str
    text: str
    voice: str | None = None
    reference_audio: Path | None = None
    reference_text: str | None = None
    speakers: dict[str, list[Path]] = field(default_factory=dict)   # similarity targets by name


@dataclass
class BadItem:
    id: str
    error: str


def _item(row: dict, line: int, root: Path) -> EvalItem:
    if not isinstance(row, dict):
        raise ValueError("not a JSON object")
    text = row.get("text")
    if not isinstance(text, str) or not text.strip():
        raise ValueError("no text")

    def path(p) -> Path:
        f = root / str(p)   # an absolute p replaces root
        if not f.is_file():
            raise ValueError(f"file not found: {f}")
        return f

    ref = path(row["reference_audio"]) if row.get("reference_audio") else None
    if ref is not None and not str(row.get("reference_text") or "").strip():
        raise ValueError("reference_audio needs reference_text (its transcript)")
    speakers = {str(k): [path(p) for p in (v if isinstance(v, list) else [v])]
                for k, v in (row.get("speakers") or {}).items()}
    if not speakers and ref is not None:
        speakers = {"ref": [ref]}
    return EvalItem(id=str(row.get("id") or f"{line:03d}"), text=" ".join(text.split()),
                    voice=row.get("voice") or None, reference_audio=ref,
                    reference_text=row.get("reference_text") or None, speakers=speakers)


def load_eval_set(path) -> tuple[list[EvalItem], list[BadItem]]:
    """Items in file order, and the lines that could not be used (with why)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"eval set {path} does not exist")
    items, bad = [], []
    for line, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not raw.strip():
            continue
        row = None
        try:
            row = json.loads(raw)
            items.append(_item(row, line, path.parent))
        except (ValueError, TypeError) as e:
            rid = row.get("id") if isinstance(row, dict) else None
            bad.append(BadItem(str(rid or f"{line:03d}"), f"line {line}: {e}"))
    seen: set[str] = set()
    for it in items:   # ids name the wav files: keep them unique and file-safe
        it.id = re.sub(r"[^A-Za-z0-9_.-]+", "_", it.id)[:60] or "item"
        while it.id in seen:
            it.id += "_"
        seen.add(it.id)
    return items, bad
