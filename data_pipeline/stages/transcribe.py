"""Transcription stage: one Transcript (text, language, scores) per segment of a source.

Backends (configs/pipeline/transcribe/<name>.yaml), all with the same call:

    transcriber.transcribe(clips, sr, segments, source_path) -> list[Transcript]

    sidecar       SidecarTranscriber (here): a transcript file beside the audio
    pocketsphinx  PocketsphinxTranscriber (transcribe_pocketsphinx.py): offline English ASR
    whisper       WhisperTranscriber (transcribe_whisper.py): faster-whisper or transformers,
                  from a local model directory
    none          no `_target_`: no transcriber is built, segments keep empty text and
                  language, and the pipeline skips the text filters (an empty text is then
                  expected, not a defect of the segment)

Every backend records, per segment, the language it detected or was told (`language`) and how far
its text can be trusted, `quality.asr_confidence` in 0..1, which `filter.min.asr_confidence`
thresholds (configs/pipeline/filter/default.yaml):
    sidecar       1.0: the text is supplied with the audio, not recognised; whoever supplied it vouches
                  for it (a wrong sidecar is caught by the speech-rate fences, not by a score)
    pocketsphinx  the mean lattice posterior of the recognised words
    whisper       exp(mean token log-probability), with `asr_avg_logprob` and `asr_no_speech_prob`
A backend that cannot transcribe a segment's speech at all (a language its model does not know)
rejects the segment with the reason (Transcript.rejected) instead of labelling foreign words.

A backend raises TranscriptError for a source it cannot transcribe (no sidecar file,
an untimed transcript that cannot be split across segments); the pipeline rejects the
source with `err.reason` and goes on.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import jiwer
import numpy as np

from data_pipeline.stages.base import Segment, Transcript, Transcriber, TranscriptError  # noqa: F401 (re-exported)


# ---------------------------------------------------------------- text helpers

def normalize_text(text: str) -> list[str]:
    """Lower-case words without punctuation (apostrophes kept): the form WER is computed on."""
    return re.sub(r"[^\w' ]+", " ", text.lower().replace("_", " ")).split()


def word_error_rate(reference: str, hypothesis: str) -> float:
    """(substitutions + deletions + insertions) / reference words, on normalize_text words (jiwer)."""
    ref, hyp = normalize_text(reference), normalize_text(hypothesis)
    if not ref:  # jiwer refuses an empty reference: any word said is all error, silence none
        return float(len(hyp) > 0)
    return float(jiwer.wer(" ".join(ref), " ".join(hyp)))


# ---------------------------------------------------------------- sidecar

def find_sidecar(source_path: Path) -> Path | None:
    """`<stem>.json` (may carry times) before `<stem>.txt`, beside the audio."""
    for ext in (".json", ".txt"):
        p = source_path.with_suffix(ext)
        if p.is_file():
            return p
    return None


def read_sidecar(path: Path) -> tuple[list[dict] | None, str, str]:
    """Returns (utterances [{start, end, text}] or None when untimed, full text, language).

    Accepted: plain .txt (untimed); .json {"text": ...} (untimed) or with "segments" or
    "utterances": [{"start", "end", "text"}, ...] (the synth format, and Whisper's JSON
    output), optionally "language"; or a bare JSON list of such utterances. Text is UTF-8 (a BOM
    is dropped); a file that is not valid UTF-8 is read as Latin-1.
    """
    data = path.read_bytes()
    try:
        raw = data.decode("utf-8-sig")
    except UnicodeDecodeError:  # not UTF-8: legacy editors write Latin-1 (every byte is a character)
        raw = data.decode("latin-1")
    if path.suffix == ".txt":
        return None, " ".join(raw.split()), ""
    doc = json.loads(raw)
    if isinstance(doc, list):
        doc = {"segments": doc}
    utts = doc.get("segments", doc.get("utterances"))
    language = str(doc.get("language") or "")
    if utts:
        timed = [{"start": float(u["start"]), "end": float(u["end"]), "text": str(u.get("text", "")).strip()}
                 for u in utts]
        return sorted(timed, key=lambda u: u["start"]), " ".join(u["text"] for u in timed), language
    return None, " ".join(str(doc.get("text", "")).split()), language


def assign_words(utterances: list[dict], segments: list[Segment]) -> list[str]:
    """Text per segment from timed utterances. Words are spread evenly over their utterance's
    time span and each goes to the segment that holds its midpoint, so an utterance cut by a
    segment boundary is split near the right word; words in no segment (dropped overlap, gaps)
    are dropped."""
    words: list[list[str]] = [[] for _ in segments]
    order = sorted(range(len(segments)), key=lambda k: segments[k].start)
    starts = np.array([segments[k].start for k in order])
    for u in utterances:
        ws = u["text"].split()
        for i, w in enumerate(ws):
            t = u["start"] + (i + 0.5) / len(ws) * (u["end"] - u["start"])
            j = int(np.searchsorted(starts, t, side="right")) - 1
            if j >= 0 and t <= segments[order[j]].end:
                words[order[j]].append(w)
    return [" ".join(w) for w in words]


class SidecarTranscriber(Transcriber):
    """Reads `<stem>.json` or `<stem>.txt` beside the source audio.

    Timed JSON: each segment gets the words whose time falls inside it (assign_words).
    Untimed text (a .txt, or JSON with only "text") can only be used when the source gave
    exactly one segment, as in one-utterance-per-file corpora; splitting it across several
    segments would need forced alignment, so such a source is rejected with that reason.
    """

    cost = 0.0   # reads a file: no time worth a share of the bar

    def __init__(self, language: str = "en"):
        self.language = language  # used when the sidecar does not name its language

    def transcribe(self, clips, sr, segments: list[Segment], source_path: Path) -> list[Transcript]:
        source_path = Path(source_path)
        path = find_sidecar(source_path)
        if path is None:
            raise TranscriptError(source_path, f"no sidecar transcript ({source_path.stem}.json or "
                                               f"{source_path.stem}.txt) beside the audio")
        try:
            utts, full, language = read_sidecar(path)
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            raise TranscriptError(path, f"unreadable sidecar transcript: {e}") from None
        language = language or self.language
        if utts is not None:
            return [Transcript(text=t, language=language, scores={"asr_confidence": 1.0})
                    for t in assign_words(utts, segments)]
        if len(segments) > 1:
            raise TranscriptError(path, f"untimed sidecar transcript cannot be split across {len(segments)} "
                                        "segments (give per-utterance times in a .json sidecar)")
        return [Transcript(text=full, language=language, scores={"asr_confidence": 1.0}) for _ in segments]
