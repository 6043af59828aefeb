"""Export: 24 kHz mono FLAC + JSON per segment, into WebDataset shards.

Two steps, so that a parallel, resumable, sliced run still gives one
deterministic set of shards:
  1. write_part (in the worker, per source): every candidate segment of the
     source, FLAC-encoded, into OUT/parts/<source_key>.tar (the same tar layout
     as a shard). Atomic: temp name, renamed when whole.
  2. pack (once, at the end or in the merge step): the kept segments of all
     sources, in source order, copied into OUT/shards/shard-NNNNNN.tar of at
     most `max_shard_bytes` each. Pure byte copying: no decode, no encode.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np

from higgs_train.shards import SAMPLE_RATE, ShardWriter, encode_flac, iter_shard


class WebDatasetExport:
    def __init__(self, max_shard_bytes: int = 1_000_000_000):
        self.max_shard_bytes = int(max_shard_bytes)
        self.sample_rate = SAMPLE_RATE

    cost = 0.05

    def run(self, src) -> None:
        """The kept segments' audio and rows -> OUT/parts/<key>.tar; the rows into the record."""
        rows = [{"id": s.id, "source": src.rel, "start": s.start, "end": s.end, "duration": round(s.end - s.start, 3),
                 "speaker": s.speaker, "text": s.text, "language": s.language, "quality": s.quality}
                for s in src.segments]
        self.write_part(src.parts, src.key, ((row["id"], src.audio.read24(s.start, s.end), row)
                                             for s, row in zip(src.segments, rows)))
        src.rec["segments"] = rows

    def write_part(self, parts_dir, key: str, items: Iterable[tuple[str, np.ndarray, dict]]) -> Path:
        """items: (segment_id, wav24 [T] float32, row). Returns the part's path."""
        parts_dir = Path(parts_dir)
        w = ShardWriter(parts_dir, max_bytes=1 << 62, pattern=f"{key}.tar")
        with w:
            for seg_id, wav24, row in items:
                w.write(seg_id, encode_flac(wav24, self.sample_rate), row)
        return parts_dir / f"{key}.tar"

    def pack(self, samples: Iterable[tuple[str, bytes, dict]], shards_dir, prefix: str) -> Iterator[dict]:
        """Write (id, flac, row) into fresh shards under `shards_dir` (emptied first).

        Each row gets `shard` = prefix + shard file name before it is written, so the
        KEY.json inside the shard is the final manifest row. Yields the rows in order.
        Shards appear only when whole (ShardWriter renames them on close).
        """
        shards_dir = Path(shards_dir)
        if shards_dir.exists():
            shutil.rmtree(shards_dir)
        with ShardWriter(shards_dir, max_bytes=self.max_shard_bytes) as w:
            for seg_id, flac, row in samples:
                name = w.write(seg_id, flac, row, shard_key="shard", shard_prefix=prefix)
                yield {**row, "shard": prefix + name}


def read_part(path) -> Iterator[tuple[str, bytes, dict]]:
    """(segment_id, flac_bytes, row) for every sample of a part file."""
    if not os.path.exists(path):
        return
    for s in iter_shard(path):
        yield s["key"], s["flac"], s["row"]
