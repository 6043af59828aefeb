"""Segmentation: speaker turns -> training-sized single-speaker segments.

1. Consecutive turns of the same speaker with a gap <= max_gap are merged. A speaker change
   without a pause (inside one speech region) whose both sides are shorter than min_duration is
   revisited: the shorter side takes its neighbour's speaker and they merge. Such a change is the
   diarizer's least certain call (embeddings of a few seconds of one voice differ as much as two
   voices'), and keeping it would drop both sides as too short: one short recording of one person
   split in two would be lost whole. Short turns with a pause between them, or next to a long
   turn of another speaker, stay turns (merging real short turns would make mixed segments).
2. A turn longer than max_duration is split at its longest pause (a gap
   between VAD speech regions, or between merged turns), preferring pauses
   that leave both sides >= min_duration; the pause itself is cut out. A turn
   with no pause at all is split at its quietest 100 ms frame. Repeat until
   every piece fits.
3. Pieces shorter than min_duration (or still longer than max_duration) are
   rejected with a reason.
"""
from __future__ import annotations

import bisect

import numpy as np

from data_pipeline.stages.base import ANALYSIS_SR, Segment, Turn


class Segmenter:
    """segment(turns, speech, wav16, sr) -> (kept: list[Segment], rejected: list[(Segment, reason)])."""

    def __init__(self, max_gap: float = 1.0, min_duration: float = 3.0, max_duration: float = 30.0):
        if not 0 < min_duration < max_duration:
            raise ValueError(f"need 0 < min_duration ({min_duration}) < max_duration ({max_duration})")
        self.max_gap = max_gap
        self.min_duration = min_duration
        self.max_duration = max_duration

    def merge(self, turns: list[Turn]) -> list[tuple[Turn, list[tuple[float, float]]]]:
        """Merged turns, each with the gaps that were bridged inside it; a change between two
        turns both under min_duration is undone (module doc, step 1), shortest turn first."""
        out: list[tuple[Turn, list]] = []
        for t in sorted(turns, key=lambda t: (t.start, t.end)):
            if out and out[-1][0].speaker == t.speaker and t.start - out[-1][0].end <= self.max_gap:
                self._join(out[-1], (Turn(t.start, t.end, t.speaker), []))
            else:
                out.append((Turn(t.start, t.end, t.speaker), []))
        while True:
            doubtful = {i: [j for j in (i - 1, i + 1) if 0 <= j < len(out) and self._doubtful(out[i], out[j])]
                        for i in range(len(out))}
            doubtful = {i: js for i, js in doubtful.items() if js}
            if not doubtful:
                return out
            i = min(doubtful, key=lambda i: out[i][0].duration)
            j = max(doubtful[i], key=lambda j: out[j][0].duration)
            out[i][0].speaker = out[j][0].speaker
            a = min(i, j)
            self._join(out[a], out.pop(a + 1))
            for k in (a + 1, a - 1):  # the relabelled turn may now continue a turn of that speaker
                if 0 <= k < len(out) and out[k][0].speaker == out[a][0].speaker and self._gap(out[a], out[k]) <= self.max_gap:
                    a = min(a, k)
                    self._join(out[a], out.pop(a + 1))

    def _doubtful(self, x, y) -> bool:
        """A change without a pause (the turns touch: the diarizer cut one speech region) between
        merged turns x and y that both fall under min_duration."""
        return (x[0].speaker != y[0].speaker and self._gap(x, y) <= 1e-3
                and max(x[0].duration, y[0].duration) < self.min_duration)

    @staticmethod
    def _gap(x, y) -> float:
        return max(x[0].start, y[0].start) - min(x[0].end, y[0].end)

    @staticmethod
    def _join(first, second) -> None:
        """Extend `first` (turn, gaps) by the later `second`, bridging the gap between them."""
        (prev, gaps), (t, more) = first, second
        if t.start > prev.end:
            gaps.append((prev.end, t.start))
        gaps.extend(more)
        prev.end = max(prev.end, t.end)

    @staticmethod
    def _pauses(a: float, b: float, speech: list[tuple[float, float]], ends: list[float], gaps) -> list:
        """Non-speech stretches strictly inside (a, b): VAD gaps and bridged diarization gaps.
        `speech` is sorted and disjoint; `ends` its end times (for bisect: hours of regions stay cheap)."""
        inside = []
        for s, e in speech[bisect.bisect_right(ends, a):]:
            if s >= b:
                break
            inside.append((max(s, a), min(e, b)))
        found = [(e0, s1) for (_, e0), (s1, _) in zip(inside, inside[1:]) if s1 > e0]
        found += [(s, e) for s, e in gaps if a < s and e < b]
        return sorted(set(found))

    def _quietest(self, a: float, b: float, wav16: np.ndarray, sr: int) -> float:
        """Time of the lowest-energy 100 ms frame, searched where both sides keep >= min_duration."""
        lo, hi = a + self.min_duration, b - self.min_duration
        if hi <= lo:
            lo, hi = a + (b - a) * 0.25, b - (b - a) * 0.25
        hop = sr // 10
        i0, i1 = int(lo * sr), int(hi * sr)
        n = (i1 - i0) // hop
        if wav16 is None or n < 1:
            return (a + b) / 2
        frames = np.asarray(wav16[i0:i0 + n * hop], np.float32).reshape(n, hop)
        k = int(np.argmin((frames ** 2).mean(axis=1)))
        return (i0 + k * hop + hop / 2) / sr

    def _split(self, a: float, b: float, pauses, wav16, sr) -> list[tuple[float, float]]:
        if b - a <= self.max_duration:
            return [(a, b)]
        inner = [(s, e) for s, e in pauses if a < s and e < b]
        fair = [(s, e) for s, e in inner if s - a >= self.min_duration and b - e >= self.min_duration]
        if fair or inner:
            s, e = max(fair or inner, key=lambda p: (p[1] - p[0], -abs((p[0] + p[1]) / 2 - (a + b) / 2)))
        else:
            s = e = self._quietest(a, b, wav16, sr)
        return self._split(a, s, inner, wav16, sr) + self._split(e, b, inner, wav16, sr)

    cost = 0.0

    def run(self, src) -> None:
        kept, dropped = self(src.turns, src.speech, src.audio.wav16, ANALYSIS_SR)
        # Ids follow time order over all pieces, so a segment keeps its id whatever the thresholds.
        for i, s in enumerate(sorted([*kept, *(s for s, _ in dropped)], key=lambda s: (s.start, s.end))):
            s.id = f"{src.key}_{i:04d}"
        for s, why in dropped:   # before the kept ones are set: drop() then has no list to filter
            src.drop(s, why)
        src.segments = kept
        if not kept:
            src.end()

    def __call__(self, turns: list[Turn], speech: list[tuple[float, float]], wav16: np.ndarray | None = None,
                 sr: int = ANALYSIS_SR) -> tuple[list[Segment], list[tuple[Segment, str]]]:
        kept: list[Segment] = []
        rejected: list[tuple[Segment, str]] = []
        speech = sorted(speech)
        ends = [e for _, e in speech]
        for turn, gaps in self.merge(turns):
            pauses = self._pauses(turn.start, turn.end, speech, ends, gaps)
            for a, b in self._split(turn.start, turn.end, pauses, wav16, sr):
                seg = Segment(round(a, 3), round(b, 3), turn.speaker)
                if seg.duration < self.min_duration:
                    rejected.append((seg, "too_short"))
                elif seg.duration > self.max_duration:
                    rejected.append((seg, "too_long"))
                else:
                    kept.append(seg)
        return kept, rejected
