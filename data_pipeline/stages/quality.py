"""Quality stage: scores for every candidate segment. Filtering on them is a separate step.

    scorer = QualityScorer()                       # configs/pipeline/quality/dnsmos.yaml: a metric map
    scores = scorer.score(clips, sr)               # one dict per clip, merged from its metrics:
        dnsmos_sig, dnsmos_bak, dnsmos_ovrl        DNSMOS P.835 MOS (1..5): speech, background, overall
        snr_db                                     estimated SNR from frame-energy percentiles
        clipping                                   fraction of samples at/near digital full scale
        bandwidth_hz                               highest frequency still carrying energy
        loudness_lufs                              ITU-R BS.1770 integrated loudness (pyloudnorm)

DNSMOS follows Microsoft's official dnsmos_local.py (as vendored in the speechmos
wheel, whose ONNX file we load): 16 kHz audio, clips shorter than 9.01 s tiled by
repetition, 9.01 s windows every `hop_seconds` (1 s in the official script), the
P.835 model's raw outputs mapped through the official polynomial fits per window,
then averaged over the windows of a clip. Unlike the official script we do not run
the P.808 model (we do not report it) and we batch windows from many clips into one
session.run call, with one InferenceSession per process.
"""
from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pyloudnorm
import scipy.signal
import soxr

from data_pipeline import cores
from data_pipeline.stages.base import EXPORT_SR

DNSMOS_SR = 16_000
WINDOW_SECONDS = 9.01
WINDOW = int(round(WINDOW_SECONDS * DNSMOS_SR))  # 144160 samples: the model's fixed input length

# Official polynomial fits of the non-personalised P.835 model (dnsmos_local.py, get_polyfit_val).
_FIT_SIG = np.poly1d([-0.08397278, 1.22083953, 0.0052439])
_FIT_BAK = np.poly1d([-0.13166888, 1.60915514, -0.39604546])
_FIT_OVR = np.poly1d([-0.06766283, 1.11546468, 0.04602535])

_SESSIONS: dict = {}  # (path, threads) -> InferenceSession: one per process, built lazily (after fork)


def default_model_path() -> Path:
    spec = importlib.util.find_spec("speechmos")
    if spec is None or spec.origin is None:
        raise FileNotFoundError("DNSMOS model not found: the `speechmos` wheel is not installed "
                                "(pip install speechmos) and quality.model_path is not set")
    return Path(spec.origin).parent / "dnsmos_models" / "sig_bak_ovr.onnx"


def _session(path: Path, threads: int):
    key = (str(path), threads)
    if key not in _SESSIONS:
        import onnxruntime as ort

        if not path.is_file():
            raise FileNotFoundError(f"DNSMOS model not found: {path}")
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        # The arena holds on to each batch's peak (+1.8 GiB at batch 16 on a 2-hour file); off: +0.12 GiB.
        opts.enable_cpu_mem_arena = False
        opts.inter_op_num_threads = 1
        _SESSIONS[key] = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    return _SESSIONS[key]


def window_starts(n_samples: int, hop_seconds: float) -> list[int]:
    """Window start samples for a clip of n_samples (already tiled to >= WINDOW), official formula:
    num_hops = int((floor(seconds) - 9.01) / hop) + 1, windows running past the end dropped."""
    hop = int(round(hop_seconds * DNSMOS_SR))
    n = int((np.floor(n_samples / DNSMOS_SR) - WINDOW_SECONDS) / hop_seconds) + 1
    return [i * hop for i in range(max(n, 1)) if i * hop + WINDOW <= n_samples]


def tile(wav: np.ndarray, length: int = WINDOW) -> np.ndarray:
    """Repeat a short clip until it is at least `length` long (the official script's np.append loop)."""
    if len(wav) == 0:
        wav = np.zeros(1, np.float32)  # nothing to score: score silence rather than crash
    while len(wav) < length:
        wav = np.concatenate([wav, wav])
    return wav


# ---------------------------------------------------------------- signal measurements

def snr_db(wav: np.ndarray, sr: int, frame_seconds: float = 0.02) -> float:
    """Blind SNR: speech power from the frames above the median frame power, noise power from the
    quietest 10 % of frames (pauses between words). Needs pauses; clamped to [-20, 100] dB."""
    n = int(frame_seconds * sr)
    frames = len(wav) // n
    if frames < 10:
        return 0.0
    power = np.sort(np.mean(wav[:frames * n].astype(np.float64).reshape(frames, n) ** 2, axis=1))
    noise = max(float(power[:max(1, frames // 10)].mean()), 1e-12)  # 1e-12: -120 dBFS, digital silence
    speech = float(power[frames // 2:].mean())
    return float(np.clip(10 * np.log10(max(speech - noise, 1e-12) / noise), -20.0, 100.0))


def clipping_fraction(wav: np.ndarray, level: float) -> float:
    """Fraction of samples with |x| >= level (of digital full scale 1.0). A level a little under 1
    still counts clipped plateaus after resampling, whose ringing moves them by ~1 %."""
    return float(np.mean(np.abs(wav) >= level)) if len(wav) else 0.0


def bandwidth_hz(wav: np.ndarray, sr: int, drop_db: float) -> float:
    """Highest frequency whose long-term spectrum level (smoothed over ~250 Hz) is within `drop_db`
    of the spectrum's peak: ~Nyquist for full-band audio, the cut-off for low-passed or upsampled
    narrow-band audio (e.g. ~3.5 kHz for telephone speech)."""
    n = len(wav) // 512
    if n == 0:
        return 0.0
    frames = wav[:n * 512].reshape(n, 512) * np.hanning(512).astype(np.float32)  # [n, 512]
    psd = np.mean(np.abs(np.fft.rfft(frames, axis=1)) ** 2, axis=0)  # [257] bins of sr/512 Hz
    freqs = np.fft.rfftfreq(512, 1 / sr)
    level = scipy.signal.medfilt(10 * np.log10(psd + 1e-20), 2 * (int(250 / (sr / 512)) // 2) + 1)
    above = np.flatnonzero(level >= level.max() - drop_db)
    return float(freqs[above[-1]])


_METERS: dict[int, pyloudnorm.Meter] = {}


def loudness_lufs(wav: np.ndarray, sr: int) -> float:
    """Integrated loudness (BS.1770-4, gated). Clips under one 400 ms block are tiled (repetition
    keeps the loudness); silence reads as the absolute gate, -70 LUFS, never -inf."""
    if sr not in _METERS:
        _METERS[sr] = pyloudnorm.Meter(sr)
    value = _METERS[sr].integrated_loudness(tile(wav.astype(np.float64), int(0.4 * sr) + 1))
    return float(max(value, -70.0)) if np.isfinite(value) else -70.0


# ---------------------------------------------------------------- the metrics

class DNSMOS:
    """dnsmos_sig, dnsmos_bak, dnsmos_ovrl: DNSMOS P.835 MOS (1..5) of speech, background, overall."""

    def __init__(self, model_path: str | None = None, batch_size: int = 2, hop_seconds: float = 9.01,
                 threads: int = 0):
        self.model_path = Path(model_path) if model_path else default_model_path()
        if not self.model_path.is_file():
            raise FileNotFoundError(f"DNSMOS model not found: {self.model_path}")
        self.batch_size = batch_size
        self.hop_seconds = hop_seconds
        self.threads = threads

    def dnsmos(self, clips: list[np.ndarray], sr: int = DNSMOS_SR) -> np.ndarray:
        """[n_clips, 3] (sig, bak, ovrl). Windows of consecutive clips share run calls; only one
        clip's 16 kHz copy exists at a time, so memory stays ~ the clips passed in + the batches in
        flight. threads=0: batches side by side on one onnxruntime thread each, as many as this
        worker's share of the cores (data_pipeline/cores.py), so a long source's last windows take
        the cores of workers that ran out of sources; threads=N: one batch at a time on N threads."""
        sess = _session(self.model_path, self.threads or 1)
        sums, counts = np.zeros((len(clips), 3)), np.zeros(len(clips))

        def batches():
            batch, owner, n = np.empty((self.batch_size, WINDOW), np.float32), np.empty(self.batch_size, np.int64), 0
            for k, clip in enumerate(clips):
                wav = np.asarray(clip, np.float32).reshape(-1)
                if sr != DNSMOS_SR:
                    wav = soxr.resample(wav, sr, DNSMOS_SR).astype(np.float32)
                wav = tile(np.clip(wav, -1.0, 1.0))
                for start in window_starts(len(wav), self.hop_seconds):
                    batch[n], owner[n] = wav[start:start + WINDOW], k  # owner: the clip of each row
                    n += 1
                    if n == self.batch_size:
                        yield batch, owner
                        batch, owner, n = np.empty_like(batch), np.empty_like(owner), 0
            if n:
                yield batch[:n], owner[:n]

        def run(item):
            return sess.run(None, {"input_1": item[0]})[0], item[1]  # [n, 3] raw sig, bak, ovr

        scored = cores.side_by_side(run, batches()) if not self.threads else map(run, batches())
        for raw, owner in scored:
            fitted = np.stack([_FIT_SIG(raw[:, 0]), _FIT_BAK(raw[:, 1]), _FIT_OVR(raw[:, 2])], axis=1)
            np.add.at(sums, owner, fitted)  # official: fit per window, then mean over windows
            np.add.at(counts, owner, 1)
        return sums / np.maximum(counts, 1)[:, None]

    def __call__(self, clips: list[np.ndarray], sr: int) -> list[dict]:
        return [{"dnsmos_sig": round(float(sig), 4), "dnsmos_bak": round(float(bak), 4),
                 "dnsmos_ovrl": round(float(ovrl), 4)} for sig, bak, ovrl in self.dnsmos(clips, sr)]


class _PerClip:
    """A metric computed clip by clip: subclasses define name and value(wav, sr)."""

    name = ""

    def value(self, wav: np.ndarray, sr: int) -> float:
        raise NotImplementedError

    def __call__(self, clips: list[np.ndarray], sr: int) -> list[dict]:
        return [{self.name: self.value(np.asarray(w, np.float32).reshape(-1), sr)} for w in clips]


class SNR(_PerClip):
    """snr_db: estimated SNR from frame-energy percentiles (snr_db())."""

    name = "snr_db"

    def value(self, wav, sr):
        return round(snr_db(wav, sr), 2)


class Clipping(_PerClip):
    """clipping: fraction of samples at or above `level` of digital full scale."""

    name = "clipping"

    def __init__(self, level: float = 0.98):
        self.level = level

    def value(self, wav, sr):
        return round(clipping_fraction(wav, self.level), 6)


class Bandwidth(_PerClip):
    """bandwidth_hz: highest frequency within `drop_db` of the spectrum's peak."""

    name = "bandwidth_hz"

    def __init__(self, drop_db: float = 50.0):
        self.drop_db = drop_db

    def value(self, wav, sr):
        return round(bandwidth_hz(wav, sr, self.drop_db), 1)


class Loudness(_PerClip):
    """loudness_lufs: ITU-R BS.1770 integrated loudness (pyloudnorm)."""

    name = "loudness_lufs"

    def value(self, wav, sr):
        return round(loudness_lufs(wav, sr), 2)


def default_metrics(**dnsmos) -> dict:
    """configs/pipeline/quality/dnsmos.yaml's metrics, built by hand (dnsmos: DNSMOS's arguments)."""
    return {"dnsmos": DNSMOS(**dnsmos), "snr": SNR(), "clipping": Clipping(), "bandwidth": Bandwidth(),
            "loudness": Loudness()}


# ---------------------------------------------------------------- the stage

class QualityScorer:
    """The quality stage: every metric of `metrics` on each kept segment. A metric is any object
    with metric(clips, sr) -> one dict of scores per clip; their dicts are merged into the
    segment's .quality. A new metric is one class and one entry under `metrics:` in the YAML
    (configs/pipeline/quality/dnsmos.yaml); `quality.metrics.NAME=null` drops one."""

    cost = 0.81   # DNSMOS: ~85 % of a source's time without ASR (benchmarks/README.md)

    def __init__(self, metrics: dict | None = None):
        self.metrics = {k: m for k, m in (default_metrics() if metrics is None else metrics).items() if m is not None}

    def run(self, src) -> None:
        """Scores into every kept segment's .quality, in chunks (a multi-hour source's clips never
        all sit in memory at once)."""
        chunks = src.chunks()
        for i, chunk in enumerate(chunks):
            for s, q in zip(chunk, self.score([src.audio.read24(s.start, s.end) for s in chunk], EXPORT_SR)):
                s.quality.update(q)
            src.progress((i + 1) / len(chunks))

    def score(self, clips: list[np.ndarray], sr: int) -> list[dict]:
        out: list[dict] = [{} for _ in clips]
        for metric in self.metrics.values():
            for scores, new in zip(out, metric(clips, sr)):
                scores.update(new)
        return out
