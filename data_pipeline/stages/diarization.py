"""Offline speaker diarization: resemblyzer speaker embeddings + clustering with an automatic count.

    speech regions ─► 1.6 s windows, hop 0.8 s ─► VoiceEncoder (batched LSTM) ─► E [N, 256]
          │
          └─► pieces (≤ 3 s of one region) = mean of their windows
                 │  pieces ≥ 1 s only: short ones are too noisy and form clusters of their own
                 ▼
              AHC on file-centred embeddings; count = largest cut whose silhouette is within
              `tolerance` of the best; two clusters whose raw centroids are as similar as two
              halves of one voice with that much speech would be are then one speaker
                 │
                 ▼
    0.1 s cells ◄── one Viterbi pass over the file ◄── window-to-centroid similarities
          │          (a change costs `switch_penalty` inside a region, nothing across a pause)
          ▼
    turns: a region < 1 s with an unsure label joins its nearer neighbour; a change inside a
    region is placed by embedding both sides of candidate cuts, then at the quietest frame

Why this shape:
- A speech region (VAD output) is usually one speaker: people pause when the turn changes. So
  regions (cut into pieces of ≤ 3 s) are clustered on averaged embeddings, much less noisy than
  single windows, and the Viterbi pass finds the rare change inside a region.
- The count. Resemblyzer embeddings of *different* people are similar in absolute terms
  (cosine 0.5-0.87), so the clustering runs on embeddings centred on the file's mean, which
  removes what all voices in the file share. The silhouette's maximum tends to pick k = 2
  when one voice stands apart from the rest, so the largest k near the maximum is taken.
  Centring cannot tell one speaker from two; that call is made on the raw embeddings, and it
  weighs how much speech each cluster holds. On real voices a fixed cosine cannot decide: split
  in two, 8 s of one expressive speaker (benchmarks/diarization.py's real clips) scores 0.85,
  while the two people of pyannote's sample conversation score 0.88 with 8 s and 14 s each. A
  centroid of t s is the voice plus noise of variance ~ 1/t, so clusters merge when their cosine
  exceeds min(merge_threshold, 1 - centroid_noise (1/t_a + 1/t_b)): a short recording needs a
  much larger difference than a long one to count as two people.
- A cut of the tree that only splits off a cluster with less than `min_speaker` s of speech
  (or one piece) is not a new speaker: such clusters are outliers, folded into the nearest one.
- Short regions ("Well," before a pause) are the usual error: a tiled 0.5 s window picks the
  wrong speaker about one time in twenty. Unless its margin is clear, such a region goes with
  the neighbour across the clearly shorter pause (a pause inside a turn is shorter than one
  between turns).

Overlapped speech is not detected by this backend (the encoder sees one voice per window), so
there is nothing to drop: use the pyannote backend for overlap-heavy material. The encoder
weights ship inside the resemblyzer wheel and load on CPU: no download.
"""
from __future__ import annotations

import numpy as np
import torch

from data_pipeline import cores
from data_pipeline.stages.base import ANALYSIS_SR, Diarizer, Turn

FPS = 100            # mel frames per second (resemblyzer: 25 ms window, 10 ms hop, 40 mel bands)
CELL = 10            # frames per decision cell (0.1 s)
N_MELS = 40
TARGET_DBFS = -30.0  # speech level resemblyzer's preprocessing normalises to
MAX_PIECES = 2000    # pieces clustered at most (~1.7 h of speech); the rest are labelled by the Viterbi pass


class EmbeddingClusterDiarizer(Diarizer):
    """diarizer(wav16, sr, speech) -> list[Turn] (see data_pipeline/stages/base.py).

    window, hop:      embedding window and its hop, seconds (the encoder was trained on 1.6 s)
    piece:            longest stretch of a region clustered as one unit, seconds
    min_piece:        pieces shorter than this (s) are left out of the clustering
    min_speaker:      a cluster needs this much speech (s) to count as a speaker
    max_speakers:     upper bound of the automatic count
    tolerance:        the count is the largest k whose silhouette >= tolerance x the best one
    merge_threshold:  raw cosine similarity of two cluster centroids above which they always merge
    centroid_noise:   two centroids of one voice from t_a and t_b s of speech sit at a cosine of
                      about 1 - centroid_noise (1/t_a + 1/t_b); more similar ones merge
    switch_penalty:   Viterbi cost of a change inside a region (similarity x seconds)
    sure:             similarity margin above which a region shorter than min_piece keeps its own
                      label instead of its nearer neighbour's
    snap:             how far (s) a change inside a region is searched around the Viterbi estimate
    batch_size:       windows per encoder call
    """

    def __init__(self, window: float = 1.6, hop: float = 0.8, piece: float = 3.0, min_piece: float = 1.0,
                 min_speaker: float = 3.0, max_speakers: int = 8, tolerance: float = 0.9,
                 merge_threshold: float = 0.90, centroid_noise: float = 0.47, switch_penalty: float = 0.1,
                 sure: float = 0.1, snap: float = 1.0, batch_size: int = 128, device: str = "cpu"):
        import warnings

        import librosa
        with warnings.catch_warnings():  # resemblyzer imports a deprecated scipy.ndimage path
            warnings.simplefilter("ignore", DeprecationWarning)
            from resemblyzer import VoiceEncoder  # heavy imports: only when the stage is built

        self.win = int(round(window * FPS))
        self.hop = max(1, int(round(hop * FPS)))
        self.piece = max(1, int(round(piece * FPS)))
        self.min_piece = min_piece * FPS
        self.min_speaker = min_speaker * FPS
        self.max_speakers = max_speakers
        self.tolerance = tolerance
        self.merge_threshold = merge_threshold
        self.centroid_noise = centroid_noise
        self.switch_penalty = switch_penalty
        self.sure = sure
        self.snap = int(round(snap * FPS))
        self.batch_size = batch_size
        self.device = torch.device(device)
        self.encoder = VoiceEncoder(self.device, verbose=False).eval()
        # resemblyzer's own mel filterbank; the STFT runs in torch (librosa's first call JIT-compiles
        # for seconds, and torch is several times faster on long inputs).
        self.mel_fb = torch.from_numpy(librosa.filters.mel(sr=ANALYSIS_SR, n_fft=400, n_mels=N_MELS)).float()
        self.stft_window = torch.hann_window(400)

    # ------------------------------------------------------------------ embeddings

    def _mel(self, wav: np.ndarray) -> np.ndarray:
        """Power mel spectrogram equal to resemblyzer.audio.wav_to_mel_spectrogram: [frames, 40]."""
        x = torch.from_numpy(np.ascontiguousarray(wav, dtype=np.float32))
        if len(x) < 201:  # centred STFT needs n_fft // 2 samples of padding room
            x = torch.nn.functional.pad(x, (0, 201 - len(x)))
        spec = torch.stft(x, 400, 160, window=self.stft_window, center=True, pad_mode="constant",
                          return_complex=True).abs().pow(2)                 # [201, F]
        return (self.mel_fb @ spec).T.contiguous().numpy()                  # [F, 40]

    def _starts(self, n_frames: int) -> list[int]:
        """Window starts covering a region of n_frames; a short region gets one (short) window."""
        if n_frames <= self.win:
            return [0]
        starts = list(range(0, n_frames - self.win + 1, self.hop))
        if starts[-1] != n_frames - self.win:
            starts.append(n_frames - self.win)
        return starts

    def _embed(self, chunks) -> np.ndarray:
        """chunks: iterable of [<= win, 40] mel arrays -> [N, 256] L2-normed embeddings. A window
        shorter than the encoder's 1.6 s is filled by repeating its own frames (tested better than
        zero padding or a shorter input for 0.4-1.3 s clips). Batches run side by side on one torch
        thread each, as many as this worker's share of the cores (data_pipeline/cores.py): split
        over threads, one batch's small LSTM steps wait on each other."""
        def batches():
            batch, n = np.empty((self.batch_size, self.win, N_MELS), np.float32), 0
            for m in chunks:
                batch[n] = m if len(m) == self.win else np.tile(m, (-(-self.win // len(m)), 1))[:self.win]
                n += 1
                if n == self.batch_size:
                    yield batch
                    batch, n = np.empty_like(batch), 0
            if n:
                yield batch[:n]

        def encode(batch: np.ndarray) -> np.ndarray:
            torch.set_num_threads(1)  # OpenMP's thread count is per calling thread
            with torch.inference_mode():
                return self.encoder(torch.from_numpy(batch).to(self.device)).cpu().numpy()

        threads = torch.get_num_threads()
        try:
            return np.concatenate(list(cores.side_by_side(encode, batches())))
        finally:
            torch.set_num_threads(threads)

    # ------------------------------------------------------------------ clustering

    def _centroids(self, X: np.ndarray, weight: np.ndarray, labels: np.ndarray, ks) -> np.ndarray:
        C = np.stack([(weight[labels == k, None] * X[labels == k]).sum(0) for k in ks])
        return C / np.linalg.norm(C, axis=1, keepdims=True)

    def _cluster(self, X: np.ndarray, weight: np.ndarray) -> np.ndarray:
        """Labels 0..K-1 for piece embeddings X [n, 256] (L2-normed) weighted by duration (frames)."""
        from scipy.cluster.hierarchy import fcluster, linkage
        from scipy.spatial.distance import squareform
        from sklearn.metrics import silhouette_score

        n = len(X)
        labels = np.zeros(n, int)
        if n >= 3:
            Xc = X - (weight[:, None] * X).sum(0) / weight.sum()
            Xc /= np.linalg.norm(Xc, axis=1, keepdims=True) + 1e-8
            dist = np.clip(1.0 - Xc @ Xc.T, 0.0, 2.0)                  # cosine distances, once
            np.fill_diagonal(dist, 0.0)
            tree = linkage(squareform(dist, checks=False), method="average")
            cuts = []  # (silhouette, labels with outlier clusters folded in)
            for k in range(2, min(n - 1, 2 * self.max_speakers) + 1):
                cut0 = cut = fcluster(tree, k, criterion="maxclust") - 1
                big = [c for c in np.unique(cut)
                       if (cut == c).sum() >= 2 and weight[cut == c].sum() >= self.min_speaker]
                if len(big) < 2 or len(big) > self.max_speakers:
                    continue
                small = ~np.isin(cut, big)
                if small.any():
                    C = self._centroids(X, weight, cut, big)
                    cut = cut.copy()
                    cut[small] = np.asarray(big)[np.argmax(X[small] @ C.T, axis=1)]
                cuts.append((silhouette_score(dist, cut0, metric="precomputed"), cut))
            if cuts:
                top = max(s for s, _ in cuts)
                labels = [cut for s, cut in cuts if s >= self.tolerance * top][-1]
        elif n == 2 and weight.min() >= self.min_speaker:
            labels = np.array([0, 1])
        return self._merge(X, weight, labels)

    def _merge(self, X: np.ndarray, weight: np.ndarray, labels: np.ndarray) -> np.ndarray:
        """Merge the two clusters that are most clearly one voice while any pair is: raw centroids
        more similar than min(merge_threshold, 1 - centroid_noise / t), t = t_a t_b / (t_a + t_b)
        from the clusters' speech (s). A centroid from t s of speech is the voice's direction plus
        noise of variance ~ 1/t, so two centroids of one voice sit at a cosine of about
        1 - c (1/t_a + 1/t_b): a few seconds of one expressive voice split in two score 0.84-0.88,
        as low as two real people. The cap keeps long recordings of one voice together, where
        1 - c / t nears 1 but centroids of one voice stay near 0.9-0.97 (what does not average out:
        mood, microphone). Merging best pair first lets merged centroids draw closer still."""
        labels = np.asarray(labels).copy()
        while True:
            ks = np.unique(labels)
            if len(ks) < 2:
                break
            C = self._centroids(X, weight, labels, ks)
            t = np.asarray([weight[labels == k].sum() / FPS for k in ks])
            t_eff = np.outer(t, t) / (t[:, None] + t[None, :])
            excess = C @ C.T - np.minimum(self.merge_threshold, 1.0 - self.centroid_noise / t_eff)
            np.fill_diagonal(excess, -np.inf)
            i, j = np.unravel_index(np.argmax(excess), excess.shape)
            if excess[i, j] < 0:
                break
            labels[labels == ks[j]] = ks[i]
        return np.unique(labels, return_inverse=True)[1]

    # ------------------------------------------------------------------ resegmentation

    @staticmethod
    def _viterbi(scores: np.ndarray, penalty: np.ndarray) -> np.ndarray:
        """Best label path for [T, K] scores; a change before step t costs penalty[t]."""
        T, K = scores.shape
        back = np.zeros((T, K), np.int32)
        acc = scores[0].copy()
        for t in range(1, T):
            switch = acc.max() - penalty[t]
            back[t] = np.where(acc >= switch, np.arange(K), acc.argmax())
            acc = np.maximum(acc, switch) + scores[t]
        path = np.empty(T, int)
        path[-1] = acc.argmax()
        for t in range(T - 1, 0, -1):
            path[t - 1] = back[t, path[t]]
        return path

    def _refine(self, mel: np.ndarray, cuts: list[int], labels: list[int], C: np.ndarray) -> list[int]:
        """Move each change inside a region (cuts[1:-1], frames) to where the speech before it looks
        most like the speaker before and the speech after it like the speaker after: candidates
        every 50 ms within `snap` s, each scored by embedding up to 1.6 s on both sides; then to the
        quietest 10 ms frame among the candidates scoring within 0.05 of the best (a pause, if any)."""
        cuts = list(cuts)
        # log energy smoothed over 50 ms: a pause is a dip even under steady noise
        energy = np.convolve(np.log(mel.sum(1) + 1e-8), np.ones(5) / 5, mode="same")
        for j in range(1, len(cuts) - 1):
            lo, hi = max(cuts[j - 1] + 10, cuts[j] - self.snap), min(cuts[j + 1] - 10, cuts[j] + self.snap)
            if hi <= lo:
                continue
            cand = np.arange(lo, hi + 1, 5)
            left = [mel[max(cuts[j - 1], c - self.win):c] for c in cand]
            right = [mel[c:min(cuts[j + 1], c + self.win)] for c in cand]
            e = self._embed(left + right) @ C[[labels[j - 1], labels[j]]].T          # [2n, 2]
            n = len(cand)
            score = (e[:n, 0] - e[:n, 1]) + (e[n:, 1] - e[n:, 0])
            # The embedding score is flat for a few tenths of a second around the change: take the
            # deepest pause within the stretch that scores close to the best.
            near = cand[score >= score.max() - 0.05]
            a, b = max(lo, int(near.min()) - 5), min(hi, int(near.max()) + 5)
            cuts[j] = a + int(np.argmin(energy[a:b + 1]))
        return cuts

    # ------------------------------------------------------------------ main

    def __call__(self, wav16: np.ndarray, sr: int, speech: list[tuple[float, float]]) -> list[Turn]:
        """Embed sliding windows, cluster the pieces they form, decode a speaker path over 0.1 s
        cells, then place each change at the best pause (steps below, in that order)."""
        wav = np.asarray(wav16, dtype=np.float32).reshape(-1)
        if sr != ANALYSIS_SR:
            raise ValueError(f"EmbeddingClusterDiarizer expects {ANALYSIS_SR} Hz analysis audio, got {sr}")
        regions = _clean_regions(speech, len(wav) / sr)
        if not regions:
            return []
        mels, win = self._windows(wav, sr, regions)
        lengths = np.asarray([len(m) for m in mels])
        P, piece_of, piece_weight = self._pieces(win, lengths)
        piece_labels = self._piece_labels(P, piece_weight)
        K = int(piece_labels.max()) + 1
        C, scores, first = self._cell_scores(win, piece_labels[piece_of], K, lengths)
        penalty = np.full(first[-1], self.switch_penalty)
        penalty[first[1:-1]] = 0.0  # a change between regions (across a pause) is free
        path = self._viterbi(scores, penalty) if K > 1 else np.zeros(first[-1], int)
        if K > 1:
            self._absorb_short_regions(path, scores, regions, lengths, first)
        return self._turns(path, regions, lengths, first, mels, C)

    def _windows(self, wav: np.ndarray, sr: int, regions) -> tuple[list[np.ndarray], dict]:
        """Log-mels per region (at one gain for the file, so speech sits at the level the encoder
        was trained on) and the sliding windows' region, frame span and embedding E [N, 256]."""
        power = sum(float(np.sum(wav[int(a * sr):int(b * sr)].astype(np.float64) ** 2)) for a, b in regions)
        power /= max(1, sum(int(b * sr) - int(a * sr) for a, b in regions))
        gain = np.float32(10 ** (TARGET_DBFS / 20) / np.sqrt(power)) if power > 0 else np.float32(1)
        mels = []
        for a, b in regions:
            m = self._mel(wav[int(round(a * sr)):int(round(b * sr))] * gain)
            mels.append(m[:max(1, int(round((b - a) * FPS)))])  # centred frames: drop the one past the end
        starts = [self._starts(len(m)) for m in mels]
        region = np.repeat(np.arange(len(mels)), [len(s) for s in starts])       # [N]
        f0 = np.concatenate([np.asarray(s) for s in starts])                      # [N] frame in region
        f1 = np.minimum(f0 + self.win, np.asarray([len(mels[r]) for r in region]))
        E = self._embed(mels[r][a:b] for r, a, b in zip(region, f0, f1))          # [N, 256]
        return mels, {"region": region, "f0": f0, "f1": f1, "E": E}

    def _pieces(self, win: dict, lengths: np.ndarray):
        """A region of L frames is cut into ceil(L / piece) equal stretches; a window belongs to the
        stretch holding its centre. -> (piece embeddings P: normalised sums of their windows,
        piece of each window, frames per piece)."""
        region, E = win["region"], win["E"]
        n_cuts = np.asarray([max(1, -(-n // self.piece)) for n in lengths])
        centre = (win["f0"] + win["f1"]) / 2
        local = np.minimum(n_cuts[region] - 1, (centre * n_cuts[region] / lengths[region]).astype(int))
        first_cut = np.concatenate([[0], np.cumsum(n_cuts)])
        _, piece_of = np.unique(first_cut[region] + local, return_inverse=True)   # [N] -> piece
        n_pieces = piece_of.max() + 1
        P = np.zeros((n_pieces, E.shape[1]))
        np.add.at(P, piece_of, E)
        P /= np.linalg.norm(P, axis=1, keepdims=True)
        piece_region = np.zeros(n_pieces, int)
        piece_region[piece_of] = region
        return P, piece_of, (lengths / n_cuts)[piece_region]

    def _piece_labels(self, P: np.ndarray, weight: np.ndarray) -> np.ndarray:
        """Speaker of each piece by clustering the reliable ones (>= min_piece frames; an even
        spread of MAX_PIECES of them on hours of speech: AHC needs n^2 memory); -1 for the rest."""
        reliable = weight >= self.min_piece
        if not reliable.any():
            reliable[:] = True
        if reliable.sum() > MAX_PIECES:
            chosen = np.flatnonzero(reliable)[np.linspace(0, reliable.sum() - 1, MAX_PIECES).astype(int)]
            reliable[:] = False
            reliable[chosen] = True
        labels = np.full(len(P), -1)
        labels[reliable] = self._cluster(P[reliable], weight[reliable])
        return labels

    def _cell_scores(self, win: dict, win_labels: np.ndarray, K: int, lengths: np.ndarray):
        """Centroids C from the reliable pieces' windows; every window scored against every centroid,
        relative to its mean over speakers (the contrast matters, not the shared level); then 0.1 s
        cells over all regions in time order, a cell's score the mean of the windows covering it,
        in similarity x seconds. -> (C [K, 256], scores [cells, K], first cell of each region)."""
        E = win["E"]
        C = np.stack([E[win_labels == k].mean(0) for k in range(K)])
        C /= np.linalg.norm(C, axis=1, keepdims=True)
        S = E @ C.T
        S -= S.mean(1, keepdims=True)                                             # [N, K]
        n_cells = -(-lengths // CELL)
        first = np.concatenate([[0], np.cumsum(n_cells)])
        scores = np.zeros((first[-1], K))
        cover = np.zeros(first[-1])
        for r, f0, f1, s in zip(win["region"], win["f0"], win["f1"], S):
            c0, c1 = first[r] + f0 // CELL, first[r] - (-f1 // CELL)
            scores[c0:c1] += s
            cover[c0:c1] += 1
        scores *= (CELL / FPS) / np.maximum(cover, 1)[:, None]
        return C, scores, first

    def _absorb_short_regions(self, path, scores, regions, lengths, first) -> None:
        """A region too short to cluster (< min_piece) whose own embedding is not clearly for one
        speaker (margin < `sure`) takes the speaker of its nearer neighbour when one pause is
        clearly the shorter: a short burst next to a turn is most likely part of it, and its tiled
        1.6 s window is wrong about one time in twenty. Changes `path` in place."""
        bounds = [(-np.inf, -np.inf)] + regions + [(np.inf, np.inf)]
        for r, (a, b) in enumerate(regions):
            if lengths[r] >= self.min_piece:
                continue
            mean = np.sort(scores[first[r]:first[r + 1]].sum(0))[::-1] / (lengths[r] / FPS)
            if mean[0] - mean[1] >= self.sure:
                continue
            gap_prev, gap_next = a - bounds[r][1], bounds[r + 2][0] - b
            if gap_prev < 0.8 * gap_next:
                path[first[r]:first[r + 1]] = path[first[r] - 1]
            elif gap_next < 0.8 * gap_prev:
                path[first[r]:first[r + 1]] = path[first[r + 1]]

    def _turns(self, path, regions, lengths, first, mels, C) -> list[Turn]:
        """The path's changes, each moved to its best pause (_refine), as turns named S0, S1, ...
        in order of first appearance."""
        turns: list[tuple[float, float, int]] = []
        for r, (a, b) in enumerate(regions):
            p = path[first[r]:first[r + 1]]
            cuts = [0] + [int(c) * CELL for c in np.flatnonzero(np.diff(p)) + 1] + [lengths[r]]
            labels = [p[c // CELL] for c in cuts[:-1]]
            if len(cuts) > 2:
                cuts = self._refine(mels[r], cuts, labels, C)
            for j, k in enumerate(labels):
                turns.append((a + cuts[j] / FPS, min(b, a + cuts[j + 1] / FPS), int(k)))
        names: dict[int, str] = {}
        out = []
        for a, b, k in turns:
            if b > a:
                out.append(Turn(round(float(a), 3), round(float(b), 3), names.setdefault(k, f"S{len(names)}")))
        return out


def _clean_regions(speech, duration: float) -> list[tuple[float, float]]:
    """Sorted, clipped, overlap-free speech regions of at least 50 ms."""
    out: list[list[float]] = []
    for a, b in sorted((max(0.0, float(a)), min(duration, float(b))) for a, b in speech):
        if b <= a:
            continue
        if out and a <= out[-1][1]:
            out[-1][1] = max(out[-1][1], b)
        else:
            out.append([a, b])
    return [(a, b) for a, b in out if b - a >= 0.05]
