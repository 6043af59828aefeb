"""higgs_train.audio: every format in and out, broken files rejected with AudioError."""
from __future__ import annotations

import tracemalloc

import numpy as np
import pytest
import soundfile as sf

from higgs_train.audio import AudioError, audio_info, iter_audio, load_audio, load_segment, save_audio


def _signal(sr: int, seconds: float = 3.0) -> np.ndarray:
    """A speech-band test signal: gliding tone with amplitude modulation and a silent gap."""
    t = np.arange(int(sr * seconds)) / sr
    x = 0.3 * np.sin(2 * np.pi * (200 * t + 150 * t ** 2)) * (0.6 + 0.4 * np.sin(2 * np.pi * 3 * t))
    x[(t > 1.2) & (t < 1.5)] = 0.0
    return x.astype(np.float32)


# (extension, rate): every format, every rate the corpus uses.
ROUND_TRIPS = [("wav", 16000), ("flac", 24000), ("ogg", 22050), ("mp3", 44100), ("m4a", 48000),
               ("opus", 48000), ("wav", 44100), ("flac", 22050), ("mp3", 24000), ("m4a", 16000)]


@pytest.mark.parametrize("ext,sr", ROUND_TRIPS)
def test_round_trip(tmp_path, ext, sr):
    x = _signal(sr)
    path = save_audio(tmp_path / f"x.{ext}", x, sr)
    assert [p.name for p in tmp_path.iterdir()] == [f"x.{ext}"]  # no temp file left behind
    info = audio_info(path)
    assert info.sample_rate == sr and info.channels == 1
    assert abs(info.duration - 3.0) < 0.01
    wav, got_sr = load_audio(path)
    assert got_sr == sr and wav.dtype == np.float32 and wav.ndim == 1
    assert abs(len(wav) / sr - 3.0) < 0.01
    # Aligned (no codec delay left in) and faithful: correlation at lag 0.
    n = min(len(x), len(wav))
    corr = np.corrcoef(x[:n], wav[:n])[0, 1]
    assert corr > (0.999 if ext in ("wav", "flac") else 0.9), corr
    # Resampled to a requested rate.
    w16, r16 = load_audio(path, 16000)
    assert r16 == 16000 and abs(len(w16) / 16000 - 3.0) < 0.01
    assert abs(np.sqrt(np.mean(w16 ** 2)) - np.sqrt(np.mean(x ** 2))) < 0.02


def test_stereo_is_downmixed_and_save_clips(tmp_path):
    x = _signal(16000)
    sf.write(str(tmp_path / "st.wav"), np.stack([x, -0.5 * x], axis=1), 16000, subtype="FLOAT")
    wav, _ = load_audio(tmp_path / "st.wav")
    assert np.allclose(wav, 0.25 * x, atol=1e-6)
    save_audio(tmp_path / "loud.wav", 3 * x, 16000)
    assert np.abs(load_audio(tmp_path / "loud.wav")[0]).max() <= 1.0


@pytest.mark.parametrize("name", ["empty.wav", "truncated.flac", "random.mp3", "text.wav"])
def test_broken_corpus_files_raise(synth_corpus, name):
    path = synth_corpus["root"] / "broken" / name
    with pytest.raises(AudioError) as e:
        load_audio(path, 16000)
    assert e.value.path == str(path) and e.value.reason
    with pytest.raises(AudioError):
        list(iter_audio(path))


def test_other_bad_files_raise(tmp_path):
    with pytest.raises(AudioError, match="not found"):
        load_audio(tmp_path / "missing.wav")
    # A WAV cut off mid-data: libsndfile alone would load it as a shorter file.
    save_audio(tmp_path / "ok.wav", _signal(16000), 16000)
    data = (tmp_path / "ok.wav").read_bytes()
    (tmp_path / "cut.wav").write_bytes(data[:len(data) // 2])
    with pytest.raises(AudioError, match="truncated"):
        load_audio(tmp_path / "cut.wav")
    # A valid header with no samples.
    sf.write(str(tmp_path / "zero.wav"), np.zeros(0, np.float32), 16000)
    with pytest.raises(AudioError):
        load_audio(tmp_path / "zero.wav")
    # An MP3 cut in half (its Xing header still promises the full length).
    save_audio(tmp_path / "ok.mp3", _signal(24000, 6.0), 24000)
    data = (tmp_path / "ok.mp3").read_bytes()
    (tmp_path / "cut.mp3").write_bytes(data[:len(data) // 2])
    with pytest.raises(AudioError, match="truncated"):
        load_audio(tmp_path / "cut.mp3")


@pytest.mark.parametrize("ext,rate", [("flac", None), ("flac", 16000), ("ogg", None), ("opus", 16000),
                                      ("m4a", None), ("m4a", 16000), ("mp3", 16000)])
def test_blocks_equal_whole_load(tmp_path, ext, rate):
    path = save_audio(tmp_path / f"x.{ext}", _signal(24000, 4.0), 24000)
    whole, _ = load_audio(path, rate)
    blocks = list(iter_audio(path, rate, block_seconds=0.37))
    assert len(blocks) >= 10
    assert np.array_equal(np.concatenate(blocks), whole)


@pytest.mark.parametrize("ext,rate,tol", [("wav", None, 0), ("flac", None, 0), ("flac", 16000, 1e-4),
                                          ("ogg", None, 0), ("m4a", 16000, 0),
                                          ("mp3", None, 0)])
def test_load_segment_equals_slice(tmp_path, ext, rate, tol):
    path = save_audio(tmp_path / f"x.{ext}", _signal(24000), 24000)
    whole, sr = load_audio(path, rate)
    for start, end in [(0.0, 0.5), (1.1, 2.37), (2.5, 3.5)]:
        seg = load_segment(path, start, end, rate)
        ref = whole[int(round(start * sr)):int(round(end * sr))]
        assert len(seg) == len(ref)
        assert np.abs(seg - ref).max() <= tol, (start, end, np.abs(seg - ref).max())


def test_long_file_loads_in_one_output_copy(tmp_path):
    sr, seconds = 16000, 300
    x = (np.random.default_rng(0).standard_normal(sr * seconds) * 0.1).astype(np.float32)
    sf.write(str(tmp_path / "long.wav"), x, sr, subtype="PCM_16")
    out_bytes = x.nbytes
    del x
    tracemalloc.start()
    try:
        wav, _ = load_audio(tmp_path / "long.wav")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(wav) == sr * seconds
    # One output copy plus a few 30 s blocks (1.9 MB each); decoding the whole
    # file at once and then copying would need twice the output (38 MB).
    assert peak < out_bytes + 10e6, peak / 1e6
