"""The curation report: summary numbers, figures, and an index.html whose example clips play the
right audio, taken from shards (kept), part files (rejected) or the source (last resort)."""
from __future__ import annotations

import json
import re

import numpy as np
import pytest
import soundfile as sf

from data_pipeline.report import CLIP_MAX_SECONDS, write_report
from data_pipeline.run import PARTS
from data_pipeline.synth import make_conversation
from higgs_train.audio import load_segment
from higgs_train.shards import ShardWriter, encode_flac


@pytest.fixture(scope="module")
def curated(tmp_path_factory):
    """A hand-made pipeline output: one source, kept rows in a shard, rejected rows of every kind."""
    root = tmp_path_factory.mktemp("curated")
    inp, out = root / "in", root / "out"
    utts = make_conversation(inp / "talk.wav", n_speakers=2, n_turns=6, seed=3)
    ovrl = [3.6, 3.2, 2.2, 2.7, 3.4, 1.8]
    manifest, rejected, parts = [], [], []
    with ShardWriter(out / "shards", max_bytes=150_000) as shards:
        for i, (u, q) in enumerate(zip(utts, ovrl)):
            row = {"id": f"talk_{i:04d}", "source": "talk.wav", "start": u["start"], "end": u["end"],
                   "duration": round(u["end"] - u["start"], 3), "speaker": u["speaker"], "text": u["text"],
                   "language": "en", "quality": {"dnsmos_ovrl": q, "snr_db": 30.0 + i, "clipping": 0.0}}
            wav = load_segment(inp / "talk.wav", u["start"], u["end"], 24_000)
            parts.append((row["id"], wav, row))
            if q >= 3.0:
                row["shard"] = "shards/" + shards.write(row["id"], encode_flac(wav), row)
                manifest.append(row)
            elif i == 2:  # rejected by a filter, no scores in the row: played from the part file
                rejected.append({k: row[k] for k in ("source", "start", "end", "speaker", "id")}
                                | {"stage": "filter", "reason": "low_dnsmos_ovrl"})
            else:  # rejected with its scores and text: also in the histograms and OVRL bands
                rejected.append({**row, "stage": "filter", "reason": "low_dnsmos_ovrl"})
    with ShardWriter(out / PARTS, pattern="talk.tar") as part:  # the pipeline's per-source part file
        for key, wav, row in parts:
            part.write(key, encode_flac(wav), row)
    # a segment whose part file is gone: played from the source through input_dir
    rejected.append({"source": "talk.wav", "stage": "segment", "reason": "too_short", "start": 0.1,
                     "end": 0.9, "speaker": "S9", "id": "gone_0000"})
    rejected += [{"source": "broken/empty.wav", "stage": "ingest", "reason": "empty file"},
                 {"source": "copy <b>.wav", "stage": "ingest", "reason": "duplicate",
                  "detail": "same audio as talk.wav"}]
    stats = {"input_seconds": 100.0, "sources": 3, "wall_seconds": 4.0, "timings": {"vad": 1.5, "quality": 2.0},
             "input_dir": str(inp), "thresholds": {"dnsmos_ovrl": 3.0}}
    (out / "report").mkdir(parents=True)
    (out / "report" / "stale.png").write_bytes(b"old")
    report = write_report(out, manifest, rejected, stats)
    return {"out": out, "report": report, "manifest": manifest, "rejected": rejected, "utts": utts}


def test_summary_numbers(curated):
    s = json.loads((curated["report"] / "summary.json").read_text())
    kept = sum(r["duration"] for r in curated["manifest"])
    assert s["hours_in"] == pytest.approx(100 / 3600, abs=1e-4)
    assert s["hours_kept"] == pytest.approx(kept / 3600, abs=1e-4)
    assert s["segments_kept"] == 3 and s["segments_rejected"] == 4 and s["files_rejected"] == 2
    assert s["rejected_by_reason"] == {"filter/low_dnsmos_ovrl": 3, "segment/too_short": 1, "ingest/empty file": 1,
                                       "ingest/duplicate": 1}
    assert s["timings"] == {"vad": 1.5, "quality": 2.0} and s["sources"] == 3
    assert s["real_time_factor"] == 25.0
    assert s["quality"]["dnsmos_ovrl"]["p50"] == pytest.approx(3.4)
    assert "input_dir" not in s
    # The floor removed 3 of 7 segments; its distribution holds the 5 that carry the score (one
    # removed row has none, the too_short one was never scored).
    f = s["filters"]["dnsmos_ovrl"]
    assert f["threshold"] == 3.0 and f["removed_segments"] == 3 and f["scored_segments"] == 5
    assert f["removed_fraction"] == pytest.approx(3 / 7, abs=1e-4)
    assert [sum(f["histogram"][g]) for g in ("kept", "removed", "removed_other")] == [3, 2, 0]
    removed = [r for r in curated["rejected"] if r["reason"] == "low_dnsmos_ovrl"]
    assert f["removed_hours"] == pytest.approx(sum(r["end"] - r["start"] for r in removed) / 3600, abs=1e-4)


def test_figures_are_pngs(curated):
    for name in ("durations.png", "quality.png", "speakers.png", "reasons.png", "filters.png"):
        data = (curated["report"] / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5_000, name
    assert not (curated["report"] / "stale.png").exists()  # the report is replaced whole
    assert not list(curated["out"].glob(".report*"))


def test_index_html_plays_the_right_clips(curated):
    report = curated["report"]
    page = (report / "index.html").read_text()
    for key in ("filter/low_dnsmos_ovrl", "segment/too_short", "ingest/empty file", "ingest/duplicate",
                "durations.png", "quality.png", "speakers.png", "reasons.png", "same audio as talk.wav"):
        assert key in page, key
    assert "copy &lt;b&gt;.wav" in page and "copy <b>" not in page  # escaped
    clips = re.findall(r'<audio controls preload="none" src="([^"]+)">', page)
    assert len(clips) >= 7 and len(set(clips)) == len(clips)
    for rel in clips:
        assert rel.startswith("clips/") and (report / rel).stat().st_size < 200_000
    # Every example segment is audible, and its clip is as long as the segment (capped).
    by_text = {}
    for m in re.finditer(r'src="(clips/[^"]+)"></audio><div><span class="meta">talk\.wav ([\d.]+)–([\d.]+) s', page):
        rel, start, end = m.group(1), float(m.group(2)), float(m.group(3))
        wav, sr = sf.read(str(report / rel))
        assert abs(len(wav) / sr - min(end - start, CLIP_MAX_SECONDS)) < 0.1, rel
        assert np.sqrt(np.mean(wav ** 2)) > 1e-3 or end - start < 1.0, rel
        by_text[rel] = (start, end)
    assert any(rel.startswith("clips/rejected") for rel in by_text)  # rejected: from the part / source
    assert any(rel.startswith("clips/ovrl") for rel in by_text)
    # All five OVRL bands are listed; rejected rows count where they carry scores (1.8 does, 2.2 not).
    for band in ("&lt; 2.0 (1 segment)", "2.0–2.5 (0 segments)", "2.5–3.0 (1 segment)", "3.0–3.5 (2 segments)",
                 "≥ 3.5 (1 segment)"):
        assert band in page, band
