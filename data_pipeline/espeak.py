"""espeak-ng speech for the synthetic corpus, the tests and the demo: the voices, the sentences,
and tts(). Deterministic and offline (espeak-ng is a system package; no model download).

    wav = tts("Hello there.", VOICES[3])        # float32 mono, 24 kHz, silence trimmed
    SENTENCES[:10]                             # 360 distinct sentences from templates and word lists
"""
from __future__ import annotations

import random
import shutil
import subprocess
from dataclasses import dataclass

import numpy as np
import soxr

ESPEAK_SR = 22050
SPEECH_RMS_DB = -20.0  # per-utterance level before the voice's own gain


@dataclass(frozen=True)
class Voice:
    name: str     # speaker label used in the truth
    espeak: str   # espeak-ng -v: language variant + voice variant (formant set)
    pitch: int    # espeak-ng -p, 0..99
    speed: int    # espeak-ng -s, words per minute
    gain_db: float = 0.0  # level relative to SPEECH_RMS_DB: speakers are not equally loud


# Accent, formant variant (m*/f*), pitch and speed all differ, so that both a
# listener and a speaker-embedding model can tell the voices apart. Pitches are
# chosen so the median f0 forms a ladder ~17% apart: about 69, 88, 101, 119, 142,
# 165, 200, 237 Hz (v0, v6, v2, v1, v4, v7, v5, v3). Resemblyzer's cosine between utterances
# of two different voices stays <= 0.81 (v2 and v7 were replaced when they scored 0.85-0.87
# against v1 and v5, as high as a voice against itself).
VOICES: list[Voice] = [
    Voice("v0", "en-us+m1", pitch=10, speed=150, gain_db=0.0),
    Voice("v1", "en-gb+f3", pitch=65, speed=170, gain_db=-2.0),
    Voice("v2", "en-gb-x-rp+iven3", pitch=50, speed=165, gain_db=1.5),
    Voice("v3", "en-us+f4", pitch=75, speed=180, gain_db=-1.0),
    Voice("v4", "en-029+m7", pitch=80, speed=155, gain_db=2.0),
    Voice("v5", "en-gb-x-rp+f2", pitch=52, speed=195, gain_db=-3.0),
    Voice("v6", "en-us-nyc+m5", pitch=30, speed=130, gain_db=0.5),
    Voice("v7", "en+steph", pitch=40, speed=160, gain_db=-1.5),
]
VOICE_BY_NAME = {v.name: v for v in VOICES}
# The codec check's probe (tests/test_codec_decodes.py, scripts/demo_codec/publish.py): one sentence,
# cut to PROBE_SECONDS, spoken by every voice above and by espeak-ng voices outside VOICES, never in
# any training corpus of this project.
PROBE_TEXT = "Please remember to open the kitchen window before Friday, my neighbour said."
UNSEEN_VOICES = [Voice("new_m", "en-us+m3", pitch=45, speed=160), Voice("new_f", "en-gb+f1", pitch=70, speed=150)]
PROBE_SECONDS = 3.0


# ---------------------------------------------------------------- sentences

_SUBJECTS = [
    "the old fisherman", "my neighbour", "a tired student", "the young doctor", "our teacher",
    "the baker across the street", "a quiet engineer", "my grandmother", "the new manager",
    "a curious child", "the taxi driver", "her brother", "the mayor", "a famous painter",
    "the night nurse", "our landlord", "a stranger in a red coat", "the gardener",
]
_VERBS = [  # (past, base)
    ("painted", "paint"), ("repaired", "repair"), ("found", "find"), ("sold", "sell"),
    ("borrowed", "borrow"), ("cleaned", "clean"), ("described", "describe"), ("carried", "carry"),
    ("forgot", "forget"), ("opened", "open"), ("measured", "measure"), ("hid", "hide"),
    ("photographed", "photograph"), ("ordered", "order"), ("returned", "return"), ("built", "build"),
]
_OBJECTS = [
    "a wooden boat", "the kitchen window", "an old map of the city", "three blue umbrellas",
    "the broken bicycle", "a letter from abroad", "the garden fence", "a basket of apples",
    "the piano in the hall", "a box of old records", "the yellow kite", "a pair of leather boots",
    "the clock on the tower", "a jar of honey", "the silver key", "a stack of newspapers",
]
_WHEN = [
    "before sunrise", "last winter", "on a rainy afternoon", "after the meeting", "yesterday evening",
    "during the holidays", "just before lunch", "late at night", "early on Sunday", "this morning",
]
_PLACES = [
    "near the station", "behind the library", "at the harbour", "in the village square",
    "by the river", "outside the museum", "on the third floor", "at the corner cafe",
]
_NUMBERS = ["two", "three", "five", "seven", "nine", "eleven", "twelve", "fifteen", "twenty", "forty"]
_DAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]
_THINGS = ["bread", "coffee", "train tickets", "fresh fish", "winter coats", "paint", "rent", "apples"]
_INTERJ = ["Honestly", "Well", "Look", "You know", "Believe it or not", "Of course", "Oh"]
_FEELINGS = ["surprised", "worried", "delighted", "confused", "relieved", "annoyed"]

_TEMPLATES = [
    "{S} {V} {O} {W}.",
    "Did {s} really {v} {o} {w}?",
    "I think {s} {V2} {o}, but nobody saw it happen.",
    "{I}, {s} {V2} {o} {p}!",
    "We should meet {p} at {n} o'clock on {d}.",
    "The price of {t} went up by {n} percent last year.",
    "Why would anyone {v} {o} {p}?",
    "{S} was {f} when we {V2} {o}.",
    "Please remember to {v} {o} before {d}.",
    "There were {n} people waiting {p} {w}.",
    "If it rains on {d}, {s} will not {v} {o}.",
    "{I}, I have never seen {o} {p} before.",
]


def _build_sentences(n: int = 360, seed: int = 1234) -> list[str]:
    rng = random.Random(seed)
    out, seen = [], set()
    while len(out) < n:
        past, base = rng.choice(_VERBS)
        subj = rng.choice(_SUBJECTS)
        s = rng.choice(_TEMPLATES).format(
            S=subj[0].upper() + subj[1:], s=subj, V=past, V2=past, v=base, O=rng.choice(_OBJECTS),
            o=rng.choice(_OBJECTS), W=rng.choice(_WHEN), w=rng.choice(_WHEN), p=rng.choice(_PLACES),
            n=rng.choice(_NUMBERS), d=rng.choice(_DAYS), t=rng.choice(_THINGS), I=rng.choice(_INTERJ),
            f=rng.choice(_FEELINGS))
        if s not in seen:
            seen.add(s)
            out.append(s)
    return out


SENTENCES: list[str] = _build_sentences()


# ---------------------------------------------------------------- speech

def _as_voice(voice) -> Voice:
    if isinstance(voice, Voice):
        return voice
    if voice in VOICE_BY_NAME:
        return VOICE_BY_NAME[voice]
    return Voice(str(voice), str(voice), 50, 160)  # a raw espeak-ng voice name


def _trim(wav: np.ndarray, sr: int, rel_db: float = -45.0) -> np.ndarray:
    """Cut leading/trailing silence: keep from the first to the last 2 ms frame whose
    peak is within `rel_db` of the utterance peak."""
    hop = max(1, sr // 500)
    n = len(wav) // hop
    if n == 0:
        return wav
    peaks = np.abs(wav[:n * hop]).reshape(n, hop).max(axis=1)
    loud = np.flatnonzero(peaks > peaks.max() * 10 ** (rel_db / 20))
    return wav[loud[0] * hop:(loud[-1] + 1) * hop]


def tts(text: str, voice=VOICES[0], sample_rate: int = 24000) -> np.ndarray:
    """Speak `text` with an espeak-ng voice (Voice, a VOICES name, or a raw espeak-ng
    voice name). Returns float32 mono at `sample_rate`, silence at both ends trimmed."""
    v = _as_voice(voice)
    if shutil.which("espeak-ng") is None:
        raise RuntimeError("espeak-ng is not installed (apt-get install espeak-ng)")
    proc = subprocess.run(["espeak-ng", "-v", v.espeak, "-p", str(v.pitch), "-s", str(v.speed), "--stdout"],
                          input=text.encode(), capture_output=True)
    raw = proc.stdout
    # espeak-ng streams a WAV whose header has placeholder sizes: read the PCM after "data".
    k = raw.find(b"data")
    if proc.returncode != 0 or raw[:4] != b"RIFF" or k < 0:
        raise RuntimeError(f"espeak-ng failed for voice {v.espeak!r}: {proc.stderr.decode(errors='replace')[-300:]}")
    sr = int.from_bytes(raw[24:28], "little")
    pcm = raw[k + 8:]
    wav = np.frombuffer(pcm[:len(pcm) // 2 * 2], dtype="<i2").astype(np.float32) / 32768.0
    wav = _trim(wav, sr)
    if sample_rate != sr:
        wav = soxr.resample(wav, sr, sample_rate, quality="HQ").astype(np.float32)
        wav = _trim(wav, sample_rate)  # resampling ringing adds a few near-silent samples
    return wav
