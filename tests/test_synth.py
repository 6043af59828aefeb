"""The synthetic corpus tells the truth: its ground truth agrees with its audio."""
from __future__ import annotations

import json

import numpy as np
import pytest

from data_pipeline import synth
from data_pipeline.synth import SENTENCES, VOICES, make_conversation, make_long_file, tts
from higgs_train.audio import load_audio

SR = 16000


def _spans(utts, sr, n, margin=0.0):
    """Sample masks: inside utterances, and in gaps at least `margin` s from any utterance."""
    speech = np.zeros(n, bool)
    near = np.zeros(n, bool)
    for u in utts:
        speech[int(round(u["start"] * sr)):int(round(u["end"] * sr))] = True
        near[max(0, int((u["start"] - margin) * sr)):int((u["end"] + margin) * sr)] = True
    return speech, ~near


def _db(x):
    return 10 * np.log10(np.mean(np.square(x, dtype=np.float64)) + 1e-20)


def _truth(root, rel):
    return json.loads((root / (rel + ".truth.json")).read_text())


@pytest.mark.parametrize("name", ["conv_2spk.wav", "conv_3spk.flac", "conv_4spk.mp3", "conv_aac.m4a",
                                  "conv_opus.opus"])
def test_truth_speech_regions_hold_the_energy(synth_corpus, name):
    root = synth_corpus["root"]
    truth = _truth(root, name)
    wav, sr = load_audio(root / name, SR)
    assert abs(len(wav) / sr - truth["duration"]) < 0.01
    speech, gaps = _spans(truth["utterances"], sr, len(wav), margin=0.03)
    assert gaps.sum() > sr  # at least a second of gaps to measure
    speech_db, gap_db = _db(wav[speech]), _db(wav[gaps])
    assert speech_db > -30, speech_db
    assert speech_db - gap_db > 40, (speech_db, gap_db)
    # Boundaries are the real speech edges: sound in the first/last 30 ms of each
    # utterance, silence in the 30 ms before and after it.
    w = int(0.03 * sr)
    for u in truth["utterances"]:
        a, b = int(round(u["start"] * sr)), int(round(u["end"] * sr))
        assert _db(wav[a:a + w]) > -60 and _db(wav[b - w:b]) > -60, u
        if a >= w:
            assert _db(wav[a - w:a]) < speech_db - 35, u  # lossy codecs smear a little
        if b + w <= len(wav):
            assert _db(wav[b:b + w]) < speech_db - 35, u


def test_truth_is_well_formed(synth_corpus):
    root = synth_corpus["root"]
    rates, exts, gaps = set(), set(), []
    for f in synth_corpus["files"]:
        truth = _truth(root, f["path"])
        utts = truth["utterances"]
        assert 2 <= len(truth["speakers"]) <= 4
        assert {u["speaker"] for u in utts} == set(truth["speakers"]) <= {v.name for v in VOICES}
        assert all(0 <= u["start"] < u["end"] <= truth["duration"] and u["text"] for u in utts)
        gaps += [b["start"] - a["end"] for a, b in zip(utts, utts[1:])]
        assert min(gaps[-len(utts) + 1:]) > 0  # ordered, never overlapping
        assert 25 < truth["duration"] < 60
        rates.add(truth["sample_rate"])
        exts.add(f["path"].rsplit(".", 1)[1])
    assert rates == {16000, 22050, 24000, 44100, 48000}
    assert exts == {"wav", "flac", "mp3", "ogg", "m4a", "opus"}
    assert min(gaps) < 0.4 and max(gaps) > 1.2 and np.std(gaps) > 0.25  # varied gaps
    assert sorted(synth_corpus["broken"]) == ["broken/empty.wav", "broken/random.mp3", "broken/text.wav",
                                             "broken/truncated.flac"]
    texts = [u["text"] for f in synth_corpus["files"] for u in _truth(root, f["path"])["utterances"]]
    assert len(set(texts)) > 0.8 * len(texts)


def test_sidecars_match_truth(synth_corpus):
    root = synth_corpus["root"]
    utts = _truth(root, "conv_2spk.wav")["utterances"]
    side = json.loads((root / "conv_2spk.json").read_text())
    assert side["segments"] == utts
    assert side["text"] == " ".join(u["text"] for u in utts)
    utts3 = _truth(root, "conv_3spk.flac")["utterances"]
    assert (root / "conv_3spk.txt").read_text().splitlines() == [u["text"] for u in utts3]


def test_noisy_file_snr_within_1_5_db(synth_corpus):
    root = synth_corpus["root"]
    truth = _truth(root, "conv_noisy.wav")
    wav, sr = load_audio(root / "conv_noisy.wav")  # native rate: no resampler in the measurement
    speech, gaps = _spans(truth["utterances"], sr, len(wav), margin=0.05)
    p_noise = np.mean(np.square(wav[gaps], dtype=np.float64))
    p_mix = np.mean(np.square(wav[speech], dtype=np.float64))
    snr = 10 * np.log10((p_mix - p_noise) / p_noise)
    assert abs(snr - truth["snr_db"]) < 1.5, snr


def test_music_between_and_under_speech(synth_corpus):
    root = synth_corpus["root"]
    truth = _truth(root, "conv_music.ogg")
    wav, sr = load_audio(root / "conv_music.ogg", SR)
    alone = [m for m in truth["music"] if not m["under_speech"]]
    under = [m for m in truth["music"] if m["under_speech"]]
    assert alone and under
    speech, _ = _spans(truth["utterances"], sr, len(wav), margin=0.0)
    for m in alone:
        a, b = int(m["start"] * sr), int(m["end"] * sr)
        assert not speech[a:b].any()  # fills a gap on its own
        assert _db(wav[a:b]) > -30  # and is loud enough to fool an energy VAD
        # tones: most energy in a few narrow spectral peaks
        spec = np.abs(np.fft.rfft(wav[a:b])) ** 2
        assert np.sort(spec)[-len(spec) // 100:].sum() > 0.8 * spec.sum()
    m = under[0]
    assert speech[int(m["start"] * sr):int(m["end"] * sr)].mean() > 0.5


def test_deterministic_for_a_seed(tmp_path):
    kw = dict(n_speakers=2, n_turns=3, sample_rate=16000, snr_db=20.0, music=True)
    a = make_conversation(tmp_path / "a.wav", seed=5, **kw)
    b = make_conversation(tmp_path / "b.wav", seed=5, **kw)
    c = make_conversation(tmp_path / "c.wav", seed=6, **kw)
    assert a == b and a != c
    assert (tmp_path / "a.wav").read_bytes() == (tmp_path / "b.wav").read_bytes()
    assert (tmp_path / "a.wav").read_bytes() != (tmp_path / "c.wav").read_bytes()


def _median_f0(wav, sr):
    """Median f0 of the loud frames, by autocorrelation (60 ms frames, 60-500 Hz)."""
    n, hop = int(0.06 * sr), int(0.01 * sr)
    frames = np.lib.stride_tricks.sliding_window_view(wav, n)[::hop] * np.hanning(n)
    rms = np.sqrt(np.mean(frames ** 2, axis=1))
    frames = frames[rms > 0.3 * rms.max()]
    def acorr(x):
        return np.fft.irfft(np.abs(np.fft.rfft(x, 2 * n, axis=-1)) ** 2, axis=-1)[..., :n]

    ac = acorr(frames) / np.maximum(acorr(np.hanning(n)), 1e-3)  # undo the window's taper
    lo, hi = sr // 500, sr // 60
    lag = lo + np.argmax(ac[:, lo:hi], axis=1)
    voiced = ac[np.arange(len(ac)), lag] > 0.5 * ac[:, 0]
    return float(np.median(sr / lag[voiced]))


def test_voices_differ_in_pitch():
    assert len(VOICES) >= 6 and len({(v.espeak, v.pitch, v.speed) for v in VOICES}) == len(VOICES)
    text = "The quick brown fox jumps over the lazy dog near the station."
    f0 = sorted(_median_f0(tts(text, v, SR), SR) for v in VOICES)
    ratios = np.array(f0[1:]) / np.array(f0[:-1])
    assert ratios.min() > 1.1, (f0, ratios)  # every voice at least 10% apart from the next
    assert f0[0] < 85 and f0[-1] > 200  # low male to high female


def test_tts_is_trimmed_and_at_rate():
    w24 = tts("Hello there.", VOICES[0], 24000)
    w16 = tts("Hello there.", VOICES[0], 16000)
    assert w24.dtype == np.float32 and abs(len(w24) / 24000 - len(w16) / 16000) < 0.01
    edge = int(0.01 * 24000)
    peak = np.abs(w24).max()
    assert np.abs(w24[:edge]).max() > 0.005 * peak and np.abs(w24[-edge:]).max() > 0.005 * peak


def test_sentences_are_many_and_varied():
    assert len(SENTENCES) >= 300 and len(set(SENTENCES)) == len(SENTENCES)
    assert len({s.split()[0] for s in SENTENCES}) >= 10
    assert any(s.endswith("?") for s in SENTENCES) and any(s.endswith("!") for s in SENTENCES)


def test_long_file_reaches_its_length(tmp_path):
    utts = make_long_file(tmp_path / "long.flac", minutes=0.5, seed=1)
    truth = json.loads((tmp_path / "long.flac.truth.json").read_text())
    assert truth["duration"] >= 30 and utts[-1]["end"] <= truth["duration"]
    assert truth["snr_db"] == 30.0 and truth["music"]


def test_conversation_fixture_caches(conversation):
    p1, u1 = conversation("x.flac", n_speakers=3, n_turns=3, seed=2, sample_rate=16000)
    p2, u2 = conversation("x.flac", n_speakers=3, n_turns=3, seed=2, sample_rate=16000)
    assert p1 == p2 and u1 == u2 and len({u["speaker"] for u in u1}) == 3


def test_cli_help_and_bad_args(capsys):
    with pytest.raises(SystemExit) as e:
        synth.main(["--help"])
    assert e.value.code == 0 and "preset=" in capsys.readouterr().out
    for argv, reason in ((["preset=demo"], "missing out_dir"), (["out_dir=x", "colour=red"], "unknown option 'colour'"),
                         (["out_dir=x", "seed=two"], "'two'")):
        with pytest.raises(SystemExit) as e:
            synth.main(argv)
        assert e.value.code == 2 and reason in capsys.readouterr().err
    assert synth.main(["out_dir=x", "preset=huge"]) == 2
    with pytest.raises(ValueError):
        synth.make_corpus("unused", preset="huge")
