"""Synthetic speech corpus with known ground truth, made with espeak-ng.

Used by the tests (tests/conftest.py) and the demo. Everything is deterministic
for a seed and needs no downloads: voices are espeak-ng voices varied in accent,
variant (formants), pitch and speed; texts come from SENTENCES, built from
templates and word lists (both in data_pipeline/espeak.py, with tts()).

Files written by make_conversation(path, ...):

    path                  the audio (format from the extension: wav, flac, ogg,
                          opus, mp3, m4a)
    <path>.truth.json     the ground truth, e.g. conv.wav.truth.json:
        {"audio": "conv.wav", "sample_rate": 24000, "duration": 41.2, "seed": 0,
         "snr_db": null,                      # SNR of the added noise, null: none
         "speakers": ["v0", "v3"],            # voice names, first appearance order
         "voices": {"v0": {"espeak": "en-us+m1", "pitch": 30, "speed": 150}, ...},
         "utterances": [{"start": 0.61, "end": 2.87, "speaker": "v0", "text": "..."}, ...],
         "music": [{"start": 12.0, "end": 15.5, "under_speech": false}, ...]}
      Utterance start/end are the first and last audible sample of the speech
      (espeak's leading and trailing silence is trimmed before placing it);
      pauses inside a sentence (commas) stay inside the utterance. Utterances
      never overlap. Music "under_speech" spans lie under utterances at a
      level well below the speech; the others fill a gap on their own.

Sidecar transcripts (sidecar=True or "txt", or sidecar="json"), the files the curation
pipeline's sidecar transcriber reads; both sit beside the audio with the
audio's stem:

    <stem>.txt    the plain full transcript: utterance texts in order, one per line
    <stem>.json   {"text": "<full transcript, utterances joined by spaces>",
                   "segments": [{"start": 0.61, "end": 2.87, "speaker": "v0",
                                 "text": "..."}, ...]}   (same times as the truth)

SNR is defined as 10*log10(mean power of the speech over the utterance spans /
mean power of the noise), so it can be measured back from the file by
comparing the utterance spans with the gaps.

CLI: python -m data_pipeline.synth out_dir=DIR [preset=tests|demo|bench] [seed=0]
"""
from __future__ import annotations

import json
import random
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import soundfile as sf
from omegaconf import MISSING
from scipy.signal import lfilter

from data_pipeline.espeak import (SENTENCES, SPEECH_RMS_DB, VOICE_BY_NAME, VOICES, Voice,  # noqa: F401 (re-exported)
                                   _as_voice, tts)
from higgs_train.audio import save_audio
from higgs_train.files import write_text_atomic

# ---------------------------------------------------------------- music and noise

def music_tones(seconds: float, sample_rate: int, rng: np.random.Generator) -> np.ndarray:
    """Music-like tones: a melody of 2-3 note chords with harmonics, notes change every 0.15-0.6 s."""
    n = int(seconds * sample_rate)
    out = np.zeros(n, np.float32)
    pos = 0
    scale = np.array([0, 2, 4, 5, 7, 9, 11, 12])  # major scale, semitones
    root = 220.0 * 2 ** (rng.integers(0, 12) / 12)
    while pos < n:
        dur = min(n - pos, int(rng.uniform(0.15, 0.6) * sample_rate))
        t = np.arange(dur) / sample_rate
        note = np.zeros(dur)
        for deg in rng.choice(scale, size=rng.integers(2, 4), replace=False):
            f0 = root * 2 ** (deg / 12)
            for h, amp in ((1, 1.0), (2, 0.4), (3, 0.2)):
                if h * f0 < sample_rate / 2:
                    note += amp * np.sin(2 * np.pi * h * f0 * t + rng.uniform(0, 2 * np.pi))
        env = np.minimum(1.0, t / 0.01) * np.exp(-t * rng.uniform(1.0, 4.0))  # pluck: fast attack, decay
        env *= np.minimum(1.0, (dur - np.arange(dur)) / (0.005 * sample_rate))  # no click at the note end
        out[pos:pos + dur] = note * env
        pos += dur
    return out / (np.sqrt(np.mean(out ** 2)) + 1e-9) * 10 ** (-20 / 20)  # -20 dBFS RMS


def _noise(n: int, rng: np.random.Generator) -> np.ndarray:
    """Stationary, slightly low-passed (pinkish) noise, unit power."""
    x = lfilter([1.0], [1.0, -0.7], rng.standard_normal(n)).astype(np.float32)
    return x / np.sqrt(np.mean(x ** 2))


# ---------------------------------------------------------------- conversations

def _speaker_order(rng: np.random.Generator, n_speakers: int, n_turns: int | None) -> "iter":
    """Each speaker once first (so all appear), then mostly alternating with occasional repeats."""
    first = list(rng.permutation(n_speakers))
    i, prev = 0, None
    while n_turns is None or i < n_turns:
        if i < n_speakers:
            s = int(first[i])
        elif rng.random() < 0.15:
            s = prev  # the same speaker again after a pause
        else:
            s = int(rng.choice([k for k in range(n_speakers) if k != prev] or [prev]))
        prev = s
        i += 1
        yield s


def _compose(voices: list[Voice], n_turns: int | None, min_seconds: float, seed: int, sample_rate: int,
             gap_range: tuple[float, float], with_music: bool):
    rng = np.random.default_rng(seed)
    sr = sample_rate
    pieces, utts, music_spans = [], [], []
    t = float(rng.uniform(0.3, 1.0))
    pieces.append(np.zeros(int(round(t * sr)), np.float32))
    pos = len(pieces[0])
    lo, hi = np.log(gap_range[0]), np.log(gap_range[1])
    for i, s in enumerate(_speaker_order(rng, len(voices), n_turns)):
        if n_turns is None and pos >= min_seconds * sr:
            break
        if i > 0:
            gap = float(np.exp(rng.uniform(lo, hi)))  # log-uniform: many short gaps, a few long ones
            if with_music and rng.random() < 0.25 or (with_music and i == 2 and not music_spans):
                m = float(rng.uniform(2.0, 4.0))
                music_spans.append(((pos + int(0.3 * sr)) / sr, (pos + int(0.3 * sr) + int(m * sr)) / sr, False))
                gap = m + 0.6
            g = int(round(gap * sr))
            pieces.append(np.zeros(g, np.float32))
            pos += g
        v = voices[s]
        text = str(rng.choice(SENTENCES))
        if rng.random() < 0.3:
            text += " " + str(rng.choice(SENTENCES))
        wav = tts(text, v, sr)
        wav *= 10 ** ((SPEECH_RMS_DB + v.gain_db) / 20) / (np.sqrt(np.mean(wav ** 2)) + 1e-9)
        utts.append({"start": round(pos / sr, 4), "end": round((pos + len(wav)) / sr, 4),
                     "speaker": v.name, "text": text})
        pieces.append(wav)
        pos += len(wav)
    tail = int(round(rng.uniform(0.3, 1.0) * sr))
    pieces.append(np.zeros(tail, np.float32))
    speech = np.concatenate(pieces)
    mix = speech.copy()
    for a, b, _ in music_spans:
        seg = music_tones(b - a, sr, rng)
        i0 = int(round(a * sr))
        mix[i0:i0 + len(seg)] += seg
    if with_music and len(utts) >= 3:
        # A quiet bed under a stretch of speech (-15 dB below -20 dBFS speech).
        k = int(rng.integers(0, len(utts) - 2))
        a, b = utts[k]["start"], utts[k + 2]["end"]
        seg = music_tones(b - a, sr, rng) * 10 ** (-15 / 20)
        i0 = int(round(a * sr))
        mix[i0:i0 + len(seg)] += seg
        music_spans.append((a, b, True))
    music_out = [{"start": round(a, 4), "end": round(b, 4), "under_speech": u} for a, b, u in music_spans]
    return mix, speech, utts, music_out, rng


def _finish(path, mix, speech, utts, music_spans, rng, voices, seed, sample_rate, snr_db, sidecar):
    sr = sample_rate
    if snr_db is not None:
        spans = np.concatenate([speech[int(round(u["start"] * sr)):int(round(u["end"] * sr))] for u in utts])
        p_speech = float(np.mean(spans.astype(np.float64) ** 2))
        mix = mix + _noise(len(mix), rng) * np.sqrt(p_speech / 10 ** (snr_db / 10))
    peak = float(np.abs(mix).max())
    if peak > 0.95:  # scale everything alike so the SNR and relative levels hold
        mix = mix * (0.95 / peak)
    path = Path(path)
    save_audio(path, mix.astype(np.float32), sr)
    used = [v for v in voices if any(u["speaker"] == v.name for u in utts)]
    order = sorted(used, key=lambda v: next(i for i, u in enumerate(utts) if u["speaker"] == v.name))
    truth = {"audio": path.name, "sample_rate": sr, "duration": round(len(mix) / sr, 4), "seed": seed,
             "snr_db": snr_db, "speakers": [v.name for v in order],
             "voices": {v.name: {"espeak": v.espeak, "pitch": v.pitch, "speed": v.speed} for v in order},
             "utterances": utts, "music": music_spans}
    _write_text(path.with_name(path.name + ".truth.json"), json.dumps(truth, indent=1))
    if sidecar:
        write_sidecar(path, utts, "txt" if sidecar is True else sidecar)
    return utts


def write_sidecar(audio_path, utts: list[dict], kind: str = "txt") -> Path:
    """Write `<stem>.txt` (one utterance text per line) or `<stem>.json` (see module doc)."""
    audio_path = Path(audio_path)
    if kind == "txt":
        return _write_text(audio_path.with_suffix(".txt"), "\n".join(u["text"] for u in utts) + "\n")
    if kind == "json":
        doc = {"text": " ".join(u["text"] for u in utts),
               "segments": [{k: u[k] for k in ("start", "end", "speaker", "text")} for u in utts]}
        return _write_text(audio_path.with_suffix(".json"), json.dumps(doc, indent=1))
    raise ValueError(f"sidecar must be 'txt' or 'json', got {kind!r}")


def _write_text(path: Path, text: str) -> Path:
    return write_text_atomic(path, text)


def _pick_voices(rng: np.random.Generator, n_speakers: int, voices) -> list[Voice]:
    pool = [_as_voice(v) for v in (voices or VOICES)]
    if n_speakers > len(pool):
        raise ValueError(f"n_speakers={n_speakers} but only {len(pool)} voices given")
    return [pool[i] for i in sorted(rng.choice(len(pool), size=n_speakers, replace=False))]


def make_conversation(path, n_speakers: int = 2, n_turns: int = 10, seed: int = 0, sample_rate: int = 24000,
                      snr_db: float | None = None, music: bool = False, gap_range=(0.2, 1.5),
                      voices=None, sidecar: bool | str = False) -> list[dict]:
    """Write a conversation between `n_speakers` voices (chosen from `voices`, default VOICES)
    to `path` and its truth to `<path>.truth.json`. Returns the utterances
    [{start, end, speaker, text}]. sidecar: False, True/"txt" or "json" (see module doc)."""
    if n_turns < n_speakers:
        raise ValueError(f"n_turns={n_turns} < n_speakers={n_speakers}: not every speaker would speak")
    chosen = _pick_voices(np.random.default_rng([seed, 7]), n_speakers, voices)
    mix, speech, utts, music_spans, rng = _compose(chosen, n_turns, 0.0, seed, sample_rate,
                                                   tuple(gap_range), music)
    return _finish(path, mix, speech, utts, music_spans, rng, chosen, seed, sample_rate, snr_db, sidecar)


def make_long_file(path, minutes: float = 10.0, seed: int = 0, sample_rate: int = 24000,
                   n_speakers: int = 3, snr_db: float | None = 30.0) -> list[dict]:
    """A conversation of at least `minutes` minutes (for memory/throughput benchmarks), with a little
    noise and some music. Same outputs as make_conversation."""
    chosen = _pick_voices(np.random.default_rng([seed, 7]), n_speakers, None)
    mix, speech, utts, music_spans, rng = _compose(chosen, None, minutes * 60.0, seed, sample_rate,
                                                   (0.2, 2.0), True)
    return _finish(path, mix, speech, utts, music_spans, rng, chosen, seed, sample_rate, snr_db, False)


def make_voice_folder(out_dir, voice=VOICES[0], n_clips: int = 10, seed: int = 0, sample_rate: int = 24000,
                      ext: str = "wav") -> list[Path]:
    """One voice, one sentence or two per file, each with a `<stem>.txt` transcript and a truth file:
    the shape of a fine-tuning voice folder."""
    out_dir = Path(out_dir)
    paths = []
    for i in range(n_clips):
        p = out_dir / f"clip_{i:03d}.{ext}"
        make_conversation(p, n_speakers=1, n_turns=1, seed=seed * 1000 + i, sample_rate=sample_rate,
                          voices=[voice], sidecar="txt")
        paths.append(p)
    return paths


def make_eval_set(out_dir, target=VOICES[7], others=tuple(VOICES[:4]), n_items: int = 4, seed: int = 0) -> Path:
    """An evaluation set for `python -m recipes.evaluate` (format: higgs_train/evaluate/evalset.py):
    sentences no clip here speaks, each prompted with one recording of `target` (a cloning prompt)
    and scored for similarity against other recordings of `target` (sim_<target>) and one of each
    voice in `others` (sim_<other>). Returns the eval.jsonl path."""
    out = Path(out_dir)
    rng = np.random.default_rng([seed, 7])
    texts = [SENTENCES[i] for i in rng.choice(len(SENTENCES), n_items + 4 + len(others), replace=False)]
    clips = make_voice_folder(out / target.name, target, n_clips=4, seed=seed + 500)
    speakers = {target.name: [str(c.relative_to(out)) for c in clips[1:]]}
    for v, text in zip(others, texts[n_items:]):
        save_audio(out / f"{v.name}.wav", tts(text, v), 24000)
        speakers[v.name] = [f"{v.name}.wav"]
    ref = {"reference_audio": str(clips[0].relative_to(out)),
           "reference_text": clips[0].with_suffix(".txt").read_text().strip()}
    rows = [{"id": f"item{i}", "text": t, **ref, "speakers": speakers} for i, t in enumerate(texts[:n_items])]
    path = out / "eval.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def make_broken_files(out_dir, seed: int = 0) -> list[Path]:
    """Files every loader must reject: empty.wav, truncated.flac, random.mp3, text.wav."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng([seed, 99])
    (out_dir / "empty.wav").write_bytes(b"")
    full = out_dir / ".whole.flac"
    sf.write(str(full), tts("This file is cut short in the middle.", VOICES[0], 24000), 24000, format="FLAC")
    data = full.read_bytes()
    full.unlink()
    (out_dir / "truncated.flac").write_bytes(data[:len(data) // 3])
    (out_dir / "random.mp3").write_bytes(rng.integers(0, 256, 48_000, dtype=np.uint8).tobytes())
    (out_dir / "text.wav").write_text("This is not audio. It is a text file with a .wav name.\n" * 20)
    return [out_dir / n for n in ("empty.wav", "truncated.flac", "random.mp3", "text.wav")]


# ---------------------------------------------------------------- presets

# name, n_speakers, n_turns, sample_rate, snr_db, music, sidecar
_TESTS = [
    ("conv_2spk.wav", 2, 9, 16000, None, False, "json"),
    ("conv_3spk.flac", 3, 9, 24000, None, False, "txt"),
    ("conv_4spk.mp3", 4, 10, 44100, None, False, False),
    ("conv_noisy.wav", 2, 8, 22050, 10.0, False, False),
    ("conv_music.ogg", 3, 8, 48000, None, True, False),
    ("conv_aac.m4a", 2, 7, 24000, None, False, False),
    ("conv_opus.opus", 2, 5, 48000, None, False, False),
]
_DEMO_FORMATS = [("wav", 24000), ("flac", 24000), ("flac", 48000), ("mp3", 44100), ("wav", 16000),
                 ("ogg", 22050)]


def make_corpus(out_dir, preset: str = "tests", seed: int = 0) -> dict:
    """Write a corpus; returns {"out_dir", "preset", "seed", "files": [{path, truth, ...}], "broken": [...],
    "speech_seconds", "audio_seconds"} with paths relative to out_dir."""
    if preset not in ("tests", "demo", "bench"):
        raise ValueError(f"unknown preset {preset!r}: tests, demo or bench")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    files = []

    def add(rel, utts, **meta):
        truth = json.loads((out / (rel + ".truth.json")).read_text())
        files.append({"path": rel, "truth": rel + ".truth.json", "sample_rate": truth["sample_rate"],
                      "duration": truth["duration"], "n_speakers": len(truth["speakers"]),
                      "speech_seconds": round(sum(u["end"] - u["start"] for u in utts), 3), **meta})

    if preset == "tests":
        for i, (name, n_spk, n_turns, sr, snr, mus, side) in enumerate(_TESTS):
            utts = make_conversation(out / name, n_spk, n_turns, seed=seed * 1000 + i, sample_rate=sr,
                                     snr_db=snr, music=mus, sidecar=side)
            add(name, utts, snr_db=snr, music=mus, sidecar=side or None)
    else:
        # ~10 minutes of speech from 4 voices, mostly clean: enough for the tiny demo models.
        demo_voices = VOICES[:4]
        for i in range(10):
            ext, sr = _DEMO_FORMATS[i % len(_DEMO_FORMATS)]
            n_spk = 2 + i % 3
            snr = 25.0 if i % 5 == 4 else None
            name = f"conversations/conv_{i:02d}.{ext}"
            side = "json"  # the demo curates with transcribe=sidecar: exact text, no ASR time
            utts = make_conversation(out / name, n_spk, 12, seed=seed * 1000 + i, sample_rate=sr, snr_db=snr,
                                     music=(i % 7 == 3), voices=demo_voices, sidecar=side)
            add(name, utts, snr_db=snr, music=(i % 7 == 3), sidecar=side or None)
        for p in make_voice_folder(out / "voice_v1", VOICES[1], n_clips=12, seed=seed):
            rel = str(p.relative_to(out))
            add(rel, json.loads((out / (rel + ".truth.json")).read_text())["utterances"], snr_db=None,
                music=False, sidecar="txt")
        if preset == "bench":
            utts = make_long_file(out / "long/long_conversation.flac", minutes=10.5, seed=seed)
            add("long/long_conversation.flac", utts, snr_db=30.0, music=True, sidecar=None)
    broken = [str(p.relative_to(out)) for p in make_broken_files(out / "broken", seed)]
    return {"out_dir": str(out), "preset": preset, "seed": seed, "files": files, "broken": broken,
            "speech_seconds": round(sum(f["speech_seconds"] for f in files), 2),
            "audio_seconds": round(sum(f["duration"] for f in files), 2)}


PRESETS_HELP = """presets:
  tests: 7 short conversations (2-4 speakers, noisy, music, wav/flac/mp3/ogg/m4a/opus, 16-48 kHz) + broken/ files
  demo:  ~10 min of speech, 4 voices, sidecar transcripts, a one-voice folder + broken/
  bench: demo + a 10.5-minute file in long/"""


@dataclass
class Args:
    out_dir: str = field(default=MISSING, metadata={"help": "where the corpus is written"})
    preset: str = field(default="tests", metadata={"help": "tests | demo | bench"})
    seed: int = field(default=0, metadata={"help": "one seed, one corpus"})


def main(argv: list[str]) -> int:
    from higgs_train.cli import parse

    args = parse(Args, argv, "python -m data_pipeline.synth", PRESETS_HELP)
    if args.preset not in ("tests", "demo", "bench"):
        print(f"error: preset={args.preset!r}: use tests, demo or bench", file=sys.stderr)
        return 2
    summary = make_corpus(args.out_dir, args.preset, args.seed)
    print(f"wrote {len(summary['files'])} files ({summary['audio_seconds'] / 60:.1f} min audio, "
          f"{summary['speech_seconds'] / 60:.1f} min speech) and {len(summary['broken'])} broken files "
          f"to {summary['out_dir']}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
