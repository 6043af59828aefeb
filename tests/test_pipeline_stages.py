"""Curation core stages on their own: ingest, VAD (quality bar on the synthetic corpus),
segmentation, filters, shard packing."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest
import soundfile as sf

from data_pipeline.filters import FilterConfig, filter_source
from data_pipeline.stages.base import Turn
from data_pipeline.stages.export import WebDatasetExport, read_part
from data_pipeline.stages.ingest import Ingest, source_key
from data_pipeline.stages.segment import Segmenter
from data_pipeline.stages.vad import SileroVAD
from higgs_train.audio import AudioError, load_audio
from higgs_train.shards import decode_flac, iter_shard

IGNORE = ["*.txt", "*.json", ".*"]


# ---------------------------------------------------------------- ingest

def test_ingest_lists_inputs_not_companions(tmp_path):
    for rel in ["a.wav", "sub/b.flac", "sub/b.txt", "sub/b.flac.truth.json", ".hidden.wav", ".cache/x.wav",
                "notes.pdf"]:
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(b"x")
    assert Ingest(IGNORE).list_sources(tmp_path) == ["a.wav", "notes.pdf", "sub/b.flac"]
    keys = {source_key(r) for r in ["a.wav", "a-wav", "sub/b.flac", "sub-b.flac"]}
    assert len(keys) == 4 and all("." not in k and "/" not in k for k in keys)


def test_ingest_decodes_once_to_both_rates(tmp_path):
    sr = 44100
    t = np.arange(int(2.5 * sr)) / sr
    left = (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
    stereo = np.stack([left, 0.5 * left], axis=1)
    sf.write(tmp_path / "st.wav", stereo, sr, subtype="PCM_16")
    dec = Ingest()(tmp_path / "st.wav")
    try:
        assert (dec.sample_rate, dec.channels) == (44100, 2)
        assert dec.codec.startswith("WAV")
        assert abs(dec.duration - 2.5) < 1e-3
        assert abs(len(dec.wav16) - 2.5 * 16000) <= 2 and abs(dec.n24 - 2.5 * 24000) <= 2
        # mono = mean of the channels: 0.75 x the left channel's amplitude
        assert abs(np.abs(dec.read24(0.1, 2.4)).max() - 0.75 * 0.3) < 0.01
        assert len(dec.read24(1.0, 1.5)) == 12000 and len(dec.read24(2.4, 9.0)) == dec.n24 - 57600
        path24 = dec.path24
        assert path24.is_file()
    finally:
        dec.cleanup()
    assert not path24.exists()


def test_ingest_sha1_is_of_the_audio_not_the_file(tmp_path):
    sr = 16000
    # int16 in: libsndfile's float->int conversion differs between WAV (truncates) and FLAC (rounds)
    x = (3000 * np.random.default_rng(0).standard_normal(sr * 2)).astype(np.int16)
    sf.write(tmp_path / "a.wav", x, sr, subtype="PCM_16")
    sf.write(tmp_path / "b.flac", x, sr, subtype="PCM_16")   # other container, same PCM
    sf.write(tmp_path / "c.wav", x // 2, sr, subtype="PCM_16")
    ing = Ingest()
    decs = [ing(tmp_path / n) for n in ("a.wav", "b.flac", "c.wav")]
    for d in decs:
        d.cleanup()
    assert decs[0].sha1 == decs[1].sha1 != decs[2].sha1


def test_ingest_rejects_broken_files_with_reasons(tmp_path):
    from data_pipeline.synth import make_broken_files

    reasons = {}
    for p in make_broken_files(tmp_path):
        with pytest.raises(AudioError) as e:
            Ingest()(p)
        reasons[p.name] = e.value.reason
    assert set(reasons) == {"empty.wav", "truncated.flac", "random.mp3", "text.wav"}
    assert all(len(r) > 5 for r in reasons.values()), reasons
    assert "truncated" in reasons["truncated.flac"] or "corrupt" in reasons["truncated.flac"]


# ---------------------------------------------------------------- VAD

@pytest.mark.slow
def test_vad_quality_bar_on_synthetic_corpus(synth_corpus):
    """>= 90 % of truth utterances have both boundaries within 0.25 s of a detected region boundary
    (start near a region start, end near a region end); speech-time precision and recall >= 0.9."""
    root = synth_corpus["root"]
    vad = SileroVAD()
    hits = n_utts = 0
    tp = fp = fn = 0
    for f in synth_corpus["files"]:
        truth = json.loads((root / f["truth"]).read_text())
        wav, sr = load_audio(root / f["path"], 16000)
        regions = vad(wav, sr)
        assert regions == sorted(regions) and all(b > a for a, b in regions)
        assert all(r1[0] > r0[1] for r0, r1 in zip(regions, regions[1:]))  # disjoint
        starts, ends = np.array([a for a, _ in regions]), np.array([b for _, b in regions])
        ref, hyp = np.zeros(int(len(wav) / sr * 100) + 1, bool), np.zeros(int(len(wav) / sr * 100) + 1, bool)
        for u in truth["utterances"]:
            ref[int(u["start"] * 100):int(u["end"] * 100)] = True
            hits += np.abs(starts - u["start"]).min() <= 0.25 and np.abs(ends - u["end"]).min() <= 0.25
            n_utts += 1
        for a, b in regions:
            hyp[int(a * 100):int(b * 100)] = True
        p_tp, p_fp, p_fn = (ref & hyp).sum(), (~ref & hyp).sum(), (ref & ~hyp).sum()
        assert p_tp / (p_tp + p_fp) >= 0.9 and p_tp / (p_tp + p_fn) >= 0.9, (f["path"], p_tp, p_fp, p_fn)
        tp, fp, fn = tp + p_tp, fp + p_fp, fn + p_fn
    assert n_utts >= 50
    assert hits / n_utts >= 0.9, (hits, n_utts)
    assert tp / (tp + fp) >= 0.9 and tp / (tp + fn) >= 0.9, (tp, fp, fn)


def test_vad_silence_and_empty():
    vad = SileroVAD()
    assert vad(np.zeros(0, np.float32), 16000) == []
    assert vad(np.zeros(16000 * 3, np.float32), 16000) == []
    with pytest.raises(ValueError):
        vad(np.zeros(100, np.float32), 8000)


# ---------------------------------------------------------------- segmentation

def test_segmenter_merges_same_speaker_turns_within_max_gap():
    seg = Segmenter(max_gap=1.0, min_duration=3.0, max_duration=30.0)
    turns = [Turn(0.0, 2.0, "S0"), Turn(2.8, 5.0, "S0"),      # gap 0.8: merged -> 0-5
             Turn(6.5, 9.0, "S0"),                              # gap 1.5: separate, 2.5 s: too short
             Turn(9.2, 13.0, "S1"), Turn(13.5, 14.0, "S0"),    # other speaker in between: no merge
             Turn(14.5, 18.0, "S1")]
    speech = [(t.start, t.end) for t in turns]
    kept, rejected = seg(turns, speech)
    assert [(s.start, s.end, s.speaker) for s in kept] == [(0.0, 5.0, "S0"), (9.2, 13.0, "S1"),
                                                           (14.5, 18.0, "S1")]
    assert [(s.start, s.end, why) for s, why in rejected] == [(6.5, 9.0, "too_short"), (13.5, 14.0, "too_short")]


def test_segmenter_splits_long_turns_at_the_longest_pause():
    seg = Segmenter(max_gap=1.0, min_duration=3.0, max_duration=30.0)
    # 70 s of one speaker, VAD regions with pauses of 0.3 s, except 0.9 s at 33 s and 0.6 s at 52 s.
    edges = [0.0, 8.0, 16.0, 24.0, 33.0, 41.0, 52.0, 60.0, 70.0]
    pause = {33.0: 0.9, 52.0: 0.6}
    speech = [(a, b - pause.get(b, 0.3)) for a, b in zip(edges, edges[1:])]
    kept, rejected = seg([Turn(0.0, speech[-1][1], "S0")], speech)
    assert not rejected
    assert all(s.duration <= 30.0 for s in kept)
    # 69.7 s: the 0.9 s pause (32.1-33.0) is cut out first; that leaves 32.1 s on the left, split
    # at one of its 0.3 s pauses, and 36.7 s on the right, split at its longest pause (51.4-52.0).
    assert len(kept) == 4
    cuts = [(a.end, b.start) for a, b in zip(kept, kept[1:])]
    assert (32.1, 33.0) in cuts and (51.4, 52.0) in cuts, cuts


def test_segmenter_splits_pauseless_turn_at_quietest_frame():
    sr = 16000
    wav = np.full(sr * 40, 0.3, np.float32)
    wav[int(17.0 * sr):int(17.1 * sr)] = 0.001  # the only dip
    seg = Segmenter(max_gap=1.0, min_duration=3.0, max_duration=30.0)
    kept, rejected = seg([Turn(0.0, 40.0, "S0")], [(0.0, 40.0)], wav, sr)
    assert not rejected and len(kept) == 2
    assert abs(kept[0].end - 17.05) < 0.06 and kept[1].start == kept[0].end


def test_segmenter_config_short_utterances():
    kept, rejected = Segmenter(min_duration=1.0)([Turn(0, 1.5, "S0"), Turn(5, 5.5, "S1")], [(0, 1.5), (5, 5.5)])
    assert [s.duration for s in kept] == [1.5] and [why for _, why in rejected] == ["too_short"]
    with pytest.raises(ValueError):
        Segmenter(min_duration=5, max_duration=4)


# ---------------------------------------------------------------- filters

def _row(i, dur, text, ovrl=3.5, clip=0.0):
    return {"id": f"k_{i:04d}", "source": "a.wav", "start": float(i * 10), "end": float(i * 10 + dur),
            "duration": dur, "speaker": "S0", "text": text, "language": "en",
            "quality": {"dnsmos_ovrl": ovrl, "clipping": clip}}


def test_filters_thresholds_and_text():
    rows = [_row(0, 5.0, "x" * 60), _row(1, 5.0, "x" * 60, ovrl=2.99), _row(2, 5.0, "a"),
            _row(3, 5.0, "x" * 60, clip=0.02), _row(4, 5.0, "x" * 60, ovrl=float("nan"))]
    cfg = FilterConfig(min={"dnsmos_ovrl": 3.0}, max={"clipping": 0.01}, rate_iqr_k=None)
    got = [why for _, why in filter_source(rows, cfg, transcribed=True)]
    assert got == [None, "low_dnsmos_ovrl", "text_too_short", "high_clipping", "missing_dnsmos_ovrl"]
    # re-thresholding from the stored scores alone
    got = [why for _, why in filter_source(rows, FilterConfig(min={"dnsmos_ovrl": 2.5}, rate_iqr_k=None), True)]
    assert got == [None, None, "text_too_short", None, "missing_dnsmos_ovrl"]
    # no transcriber: text filters off
    got = [why for _, why in filter_source(rows[:3], FilterConfig(min={}, rate_iqr_k=None), transcribed=False)]
    assert got == [None, None, None]


def test_filters_speech_rate_fences_per_source():
    # 14-16 chars per second, one at 3 (transcript missing words), one at 60 (hallucinated text)
    rows = [_row(i, 10.0, "x" * n) for i, n in enumerate([150, 145, 155, 160, 140, 150, 30, 600])]
    got = [why for _, why in filter_source(rows, FilterConfig(min={}), transcribed=True)]
    assert got == [None] * 6 + ["speech_rate_outlier"] * 2
    # too few segments for quartiles: no fences
    assert [why for _, why in filter_source(rows[:2] + rows[6:7], FilterConfig(min={}), True)] == [None] * 3


# ---------------------------------------------------------------- export

def test_pack_names_the_right_shard_and_rolls_over(tmp_path):
    exp = WebDatasetExport(max_shard_bytes=60_000)
    sr = 24000
    items = []
    for i in range(12):
        wav = (0.1 * np.sin(np.arange(sr * (1 + i % 3)) * 0.05 * (i + 1))).astype(np.float32)
        items.append((f"src_{i:04d}", wav, {"id": f"src_{i:04d}", "duration": len(wav) / sr}))
    part = exp.write_part(tmp_path / "parts", "src", items)
    assert [p.name for p in (tmp_path / "parts").iterdir()] == ["src.tar"]
    rows = list(exp.pack(read_part(part), tmp_path / "shards", prefix="shards/"))
    shards = sorted((tmp_path / "shards").iterdir())
    assert len(shards) >= 3 and all(p.name.startswith("shard-") for p in shards)
    where = {}
    for p in shards:
        assert p.stat().st_size <= 60_000 + 64 * 1024  # a shard overflows by at most one sample
        for s in iter_shard(p):
            where[s["key"]] = f"shards/{p.name}"
            assert s["row"]["shard"] == f"shards/{p.name}"
            wav, r = decode_flac(s["flac"])
            assert r == 24000 and abs(len(wav) / r - s["row"]["duration"]) < 0.02
    assert where == {r["id"]: r["shard"] for r in rows} and len(where) == 12


def test_ingest_skips_its_own_output_and_link_loops(tmp_path):
    (tmp_path / "in/a").mkdir(parents=True)
    (tmp_path / "in/a/x.wav").write_bytes(b"x")
    (tmp_path / "in/out/shards").mkdir(parents=True)
    (tmp_path / "in/out/shards/shard-000000.tar").write_bytes(b"x")
    os.symlink(tmp_path / "in", tmp_path / "in/a/loop")  # a folder link back up
    assert Ingest(IGNORE).list_sources(tmp_path / "in", exclude=tmp_path / "in/out") == ["a/x.wav"]
