"""Two-speaker conversations spliced from real single-voice recordings, with known turns.

Synthetic voices (data_pipeline/synth.py) are easy to tell apart; real people are not. To score
diarization on real voices with a known truth, each recording's speech regions (from the VAD, on
the recording alone) are grouped into `turns` consecutive stretches of about equal speech, and the
stretches of the two voices alternate, A B A B ..., with a pause between turns. The truth is the
source regions at their new times, labelled with the voice's name: what a perfect diarizer would
output given that VAD.
"""
from __future__ import annotations

import numpy as np


def _groups(regions: list[tuple[float, float]], n: int) -> list[list[tuple[float, float]]]:
    """Consecutive regions in up to n groups of about equal speech (fewer when there are fewer regions)."""
    n = max(1, min(n, len(regions)))
    before = np.cumsum([0.0] + [b - a for a, b in regions])[:-1]   # speech before each region
    group = np.minimum(n - 1, (before * n / (before[-1] + regions[-1][1] - regions[-1][0])).astype(int))
    return [[r for r, g in zip(regions, group) if g == k] for k in sorted(set(group))]


def splice_conversation(a: tuple, b: tuple, sr: int, turns: int = 3, pause_range=(0.5, 1.0),
                        seed: int = 0) -> tuple[np.ndarray, list[dict]]:
    """a, b: (name, wav, speech regions in s) of two single-voice recordings at rate sr.
    -> (wav of the conversation, truth utterances [{start, end, speaker}] in time order)."""
    rng = np.random.default_rng(seed)
    sides = [(name, wav, _groups(list(regions), turns)) for name, wav, regions in (a, b)]
    parts, utts, t = [], [], 0.0
    for i in range(max(len(g) for _, _, g in sides)):
        for name, wav, groups in sides:
            if i >= len(groups):
                continue
            if parts:
                pause = np.zeros(int(rng.uniform(*pause_range) * sr), np.float32)
                parts.append(pause)
                t += len(pause) / sr
            g = groups[i]
            s0, s1 = int(round(g[0][0] * sr)), int(round(g[-1][1] * sr))
            parts.append(np.asarray(wav[s0:s1], np.float32))
            utts += [{"start": round(t + r0 - s0 / sr, 3), "end": round(t + r1 - s0 / sr, 3), "speaker": name}
                     for r0, r1 in g]
            t += (s1 - s0) / sr
    return np.concatenate(parts), utts
