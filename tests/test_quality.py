"""Quality stage: DNSMOS P.835 as the official script computes it, and the signal measurements
behave as they should on espeak-ng speech made noisy, clipped, low-passed or quieter."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import scipy.signal
import soxr
from hydra.utils import instantiate
from omegaconf import OmegaConf

from data_pipeline.stages.quality import (DNSMOS, DNSMOS_SR, QualityScorer, default_metrics, bandwidth_hz, clipping_fraction,
                                          loudness_lufs, snr_db, window_starts)
from data_pipeline.synth import SENTENCES, tts

SR = 24_000  # the pipeline hands the quality stage 24 kHz clips
CONFIG = Path(__file__).resolve().parents[1] / "configs/pipeline/quality/dnsmos.yaml"
KEYS = {"dnsmos_sig", "dnsmos_bak", "dnsmos_ovrl", "snr_db", "clipping", "bandwidth_hz", "loudness_lufs"}


def _speech(n_sentences: int, sr: int = SR) -> np.ndarray:
    parts = []
    for s in SENTENCES[:n_sentences]:
        parts += [tts(s, "v0", sr), np.zeros(int(0.3 * sr), np.float32)]
    x = np.concatenate(parts)
    return (x * (0.5 / np.abs(x).max())).astype(np.float32)  # peak -6 dBFS (espeak's crest factor ~20 dB)


@pytest.fixture(scope="module")
def clean() -> np.ndarray:
    return _speech(3)  # ~9 s


@pytest.fixture(scope="module")
def noisy(clean) -> np.ndarray:
    rng = np.random.default_rng(0)
    return np.clip(clean + rng.standard_normal(len(clean)).astype(np.float32) * 0.05, -1, 1)  # ~0 dB white noise


@pytest.fixture(scope="module")
def scored(clean, noisy) -> list[dict]:
    return QualityScorer(default_metrics(hop_seconds=9.01)).score([clean, noisy], SR)


def test_window_placement_follows_official_formula():
    # int(floor(seconds) - 9.01) + 1 windows, 1 s apart, none running past the end.
    assert window_starts(144_160, 1.0) == [0]
    assert window_starts(int(10.9 * DNSMOS_SR), 1.0) == [0]
    assert window_starts(11 * DNSMOS_SR, 1.0) == [0, 16_000]
    assert len(window_starts(30 * DNSMOS_SR, 1.0)) == 21
    assert window_starts(30 * DNSMOS_SR, 9.01) == [0, 144_160, 288_320]


@pytest.mark.slow
def test_dnsmos_matches_official_script(clean):
    from speechmos import dnsmos

    clip = soxr.resample(clean, SR, DNSMOS_SR).astype(np.float32)[:int(5.7 * DNSMOS_SR)]
    assert len(window_starts(len(np.tile(clip, 2)), 1.0)) == 2  # tiled to 11.4 s: two windows 1 s apart
    ours = DNSMOS(hop_seconds=1.0, batch_size=1).dnsmos([clip])[0]  # one window per run call
    ref = dnsmos.run(clip, DNSMOS_SR)
    np.testing.assert_allclose(ours, [ref["sig_mos"], ref["bak_mos"], ref["ovrl_mos"]], atol=1e-3)


def test_noise_lowers_dnsmos_and_snr(scored):
    clean, noisy = scored
    assert noisy["dnsmos_ovrl"] < clean["dnsmos_ovrl"] - 0.5, (clean, noisy)
    assert noisy["dnsmos_bak"] < clean["dnsmos_bak"] - 1.0, (clean, noisy)
    assert clean["snr_db"] > 40 and noisy["snr_db"] < 10, (clean, noisy)


def test_scores_are_plain_floats_batching_and_odd_clips(clean, scored):
    tiny, empty = clean[:int(0.3 * SR)], np.zeros(0, np.float32)
    out = QualityScorer(default_metrics(hop_seconds=9.01, batch_size=2)).score([empty, tiny, clean], SR)
    assert len(out) == 3
    for row in out:
        assert set(row) == KEYS and all(type(v) is float and np.isfinite(v) for v in row.values()), row
    json.dumps(out)  # goes into manifest rows as is
    # Batched with other clips, in another batch position: the same DNSMOS scores.
    for k in ("dnsmos_sig", "dnsmos_bak", "dnsmos_ovrl"):
        assert out[2][k] == pytest.approx(scored[0][k], abs=1e-3)
    assert out[0]["loudness_lufs"] == -70.0  # nothing: the absolute gate, not -inf


def test_clipping_fraction(clean):
    hot = np.clip(clean * 8, -1, 1)  # +18 dB: peaks driven far past full scale
    true_frac = float(np.mean(np.abs(clean * 8) >= 1))
    assert clipping_fraction(clean, 0.98) == 0.0
    assert clipping_fraction(hot, 0.98) == pytest.approx(true_frac, rel=0.05)
    assert true_frac > 0.005
    # Resampling rings around the clipped plateaus; the 0.98 level still counts most of them.
    hot16 = soxr.resample(hot, SR, DNSMOS_SR)
    assert clipping_fraction(hot16, 0.98) > 0.7 * true_frac
    scores = QualityScorer(default_metrics(hop_seconds=9.01)).score([hot], SR)[0]
    assert scores["clipping"] > 100 * max(clipping_fraction(clean, 0.98), 1e-5)


def test_bandwidth_of_lowpassed_and_narrowband_audio(clean):
    full = bandwidth_hz(clean, SR, 50.0)
    lowpassed = scipy.signal.sosfilt(scipy.signal.butter(10, 4000, fs=SR, output="sos"), clean)
    telephone = soxr.resample(soxr.resample(clean, SR, 8000), 8000, SR)  # 8 kHz source, upsampled
    assert full > 9000, full
    assert 4000 < bandwidth_hz(lowpassed, SR, 50.0) < 6000
    assert 3000 < bandwidth_hz(telephone, SR, 50.0) <= 4100


def test_loudness_and_snr_measurements(clean):
    assert loudness_lufs(clean * 0.5, SR) == pytest.approx(loudness_lufs(clean, SR) - 6.02, abs=0.1)
    assert loudness_lufs(np.zeros(SR, np.float32), SR) == -70.0
    rng = np.random.default_rng(1)
    noise = rng.standard_normal(len(clean)).astype(np.float32)
    power = float(np.mean(clean.astype(np.float64) ** 2))  # over the whole clip, pauses included
    at = {snr: snr_db(clean + noise * np.sqrt(power * 10 ** (-snr / 10)), SR) for snr in (0, 10, 20, 30)}
    assert at[0] < at[10] < at[20] < at[30], at
    for snr in (10, 20, 30):  # measured: ~2.5 dB above (speech power is taken from the louder frames)
        assert abs(at[snr] - snr) < 4.0, at


def test_config_builds_scorer_and_missing_model_is_named(tmp_path):
    scorer = instantiate(OmegaConf.load(CONFIG))
    assert isinstance(scorer, QualityScorer) and scorer.metrics["dnsmos"].model_path.is_file()
    assert list(scorer.metrics) == ["dnsmos", "snr", "clipping", "bandwidth", "loudness"]
    missing = tmp_path / "no_such_model.onnx"
    with pytest.raises(FileNotFoundError, match="no_such_model.onnx"):
        DNSMOS(model_path=str(missing))


def test_a_metric_is_one_entry_of_the_map(clean):
    """The scorer map: a metric added by config alone lands beside the others; one set to null is gone."""
    cfg = OmegaConf.load(CONFIG)
    cfg.metrics.peak = {"_target_": "test_quality.Peak"}
    cfg.metrics.loudness = None
    scores = instantiate(cfg, _convert_="all").score([clean, 0.5 * clean], SR)
    assert scores[0]["peak"] == pytest.approx(float(np.abs(clean).max()), rel=1e-6)
    assert scores[1]["peak"] == pytest.approx(0.5 * scores[0]["peak"], rel=1e-6)
    assert {"dnsmos_ovrl", "snr_db", "clipping", "bandwidth_hz", "peak"} <= set(scores[0])
    assert "loudness_lufs" not in scores[0]


class Peak:
    def __call__(self, clips, sr):
        return [{"peak": float(np.abs(c).max())} for c in clips]
