"""Quality stage: scores for every candidate segment. Filtering on them is a separate step.

    scorer = QualityScorer()                       # configs/pipeline/quality/dnsmos.yaml
    scores = scorer.score(clips, sr)               # one dict per clip:
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
        opts.intra_op_num_threads = threads  # 0: onnxruntime picks (all cores)
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


# ---------------------------------------------------------------- the stage

class QualityScorer:
    """DNSMOS P.835 + signal measurements. Built from configs/pipeline/quality/dnsmos.yaml."""

    def __init__(self, model_path: str | None = None, batch_size: int = 2, hop_seconds: float = 9.01,
                 threads: int = 0, clip_level: float = 0.98, bandwidth_drop_db: float = 50.0):
        self.model_path = Path(model_path) if model_path else default_model_path()
        if not self.model_path.is_file():
            raise FileNotFoundError(f"DNSMOS model not found: {self.model_path}")
        self.batch_size = batch_size
        self.hop_seconds = hop_seconds
        self.threads = threads
        self.clip_level = clip_level
        self.bandwidth_drop_db = bandwidth_drop_db

    def dnsmos(self, clips: list[np.ndarray], sr: int = DNSMOS_SR) -> np.ndarray:
        """[n_clips, 3] (sig, bak, ovrl). Windows of consecutive clips share run calls; only one
        clip's 16 kHz copy exists at a time, so memory stays ~ the clips passed in + one batch."""
        sess = _session(self.model_path, self.threads)
        batch = np.empty((self.batch_size, WINDOW), np.float32)
        owner = np.empty(self.batch_size, np.int64)  # which clip each batch row belongs to
        sums, counts = np.zeros((len(clips), 3)), np.zeros(len(clips))
        n = 0

        def flush(n: int) -> None:
            raw = sess.run(None, {"input_1": batch[:n]})[0]  # [n, 3] raw sig, bak, ovr
            fitted = np.stack([_FIT_SIG(raw[:, 0]), _FIT_BAK(raw[:, 1]), _FIT_OVR(raw[:, 2])], axis=1)
            np.add.at(sums, owner[:n], fitted)  # official: fit per window, then mean over windows
            np.add.at(counts, owner[:n], 1)

        for k, clip in enumerate(clips):
            wav = np.asarray(clip, np.float32).reshape(-1)
            if sr != DNSMOS_SR:
                wav = soxr.resample(wav, sr, DNSMOS_SR).astype(np.float32)
            wav = tile(np.clip(wav, -1.0, 1.0))
            for start in window_starts(len(wav), self.hop_seconds):
                batch[n], owner[n] = wav[start:start + WINDOW], k
                n += 1
                if n == self.batch_size:
                    flush(n)
                    n = 0
        if n:
            flush(n)
        return sums / np.maximum(counts, 1)[:, None]

    def score(self, clips: list[np.ndarray], sr: int) -> list[dict]:
        mos = self.dnsmos(clips, sr)
        out = []
        for wav, (sig, bak, ovrl) in zip(clips, mos):
            wav = np.asarray(wav, np.float32).reshape(-1)
            out.append({
                "dnsmos_sig": round(float(sig), 4),
                "dnsmos_bak": round(float(bak), 4),
                "dnsmos_ovrl": round(float(ovrl), 4),
                "snr_db": round(snr_db(wav, sr), 2),
                "clipping": round(clipping_fraction(wav, self.clip_level), 6),
                "bandwidth_hz": round(bandwidth_hz(wav, sr, self.bandwidth_drop_db), 1),
                "loudness_lufs": round(loudness_lufs(wav, sr), 2),
            })
        return out

