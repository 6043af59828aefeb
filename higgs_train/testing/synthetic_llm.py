"""Synthetic LLM shards for tests and benchmarks: codes are a deterministic function of the text.

Each word maps to a fixed run of frames (2-5 frames of 8 random codes, seeded by the word and
speaker), so a model can learn (and memorise) text -> codes without the audio codec.
"""
from __future__ import annotations

import zlib
from pathlib import Path

import numpy as np

from higgs_train.shards import ShardWriter, encode_flac

WORDS = ("the quick brown fox jumps over a lazy dog while seven happy voices sing about rain "
         "and bright morning light on quiet hills").split()


def word_codes(word: str, speaker: str, num_codebooks: int = 8, codebook_size: int = 1024) -> np.ndarray:
    rng = np.random.default_rng(zlib.crc32(f"{speaker}/{word}".encode()))
    return rng.integers(0, codebook_size, (num_codebooks, 2 + len(word) % 4))


def text_codes(text: str, speaker: str, **kw) -> np.ndarray:
    return np.concatenate([word_codes(w, speaker, **kw) for w in text.split()], axis=1)


def write_synthetic_shards(out_dir, n_sources: int = 4, segments_per_source: int = 8,
                           words: tuple[int, int] = (3, 9), samples_per_shard: int = 16, seed: int = 0) -> list[dict]:
    """Shards of n_sources x segments_per_source segments (2 speakers per source); returns the rows."""
    rng = np.random.default_rng(seed)
    flac = encode_flac(np.zeros(240, np.float32))  # the LLM never reads audio
    rows = []
    out = Path(out_dir)
    n = 0
    writer = ShardWriter(out, max_bytes=1 << 40)
    with writer:
        for src in range(n_sources):
            t = 0.0
            for i in range(segments_per_source):
                speaker = f"SPEAKER_{(i + rng.integers(0, 2)) % 2:02d}"
                text = " ".join(rng.choice(WORDS, rng.integers(words[0], words[1] + 1)))
                codes = text_codes(text, speaker)
                dur = codes.shape[1] / 25
                row = {"id": f"src{src:03d}_{i:04d}", "source": f"conv{src:03d}.wav", "start": t, "end": t + dur,
                       "duration": dur, "speaker": speaker, "text": text, "language": "en"}
                t += dur + 0.3
                if n and n % samples_per_shard == 0:
                    writer.close_shard()
                writer.write(row["id"], flac, row, codes)
                rows.append(row)
                n += 1
    return rows
