"""Splitting long text into chunks the model speaks one at a time.

Sentences are grouped greedily up to `max_words` words; a dialogue is split at its
[SPEAKERn] tags too, and every chunk starts with the tag of the speaker who speaks first in
it, so a turn cut in two keeps its speaker.
"""
from __future__ import annotations

import re

TAG = re.compile(r"\[SPEAKER(\d+)\]")
SENTENCE = re.compile(r"(?<=[.!?。！？])\s+")


def speaker_ids(text: str) -> list[int]:
    """Speaker indices in order of first appearance ([] for untagged text)."""
    out: list[int] = []
    for m in TAG.finditer(text):
        if int(m.group(1)) not in out:
            out.append(int(m.group(1)))
    return out


def turns(text: str) -> list[tuple[str | None, str]]:
    """'[SPEAKER0] a [SPEAKER1] b' -> [('[SPEAKER0]', 'a'), ('[SPEAKER1]', 'b')]; untagged -> [(None, text)]."""
    parts = TAG.split(text)
    out: list[tuple[str | None, str]] = []
    if parts[0].strip():
        out.append((None, parts[0].strip()))
    for i in range(1, len(parts), 2):
        if parts[i + 1].strip():
            out.append((f"[SPEAKER{parts[i]}]", parts[i + 1].strip()))
    return out


def split_text(text: str, max_words: int) -> list[str]:
    """Chunks of whole sentences with <= max_words words each (a longer sentence is cut at words)."""
    units: list[tuple[str | None, str]] = []       # (speaker tag, sentence)
    for tag, body in turns(" ".join(text.split())):
        for sent in SENTENCE.split(body):
            words = sent.split()
            for i in range(0, len(words), max_words):
                units.append((tag, " ".join(words[i:i + max_words])))
    chunks: list[list[tuple[str | None, str]]] = []
    n = 0
    for u in units:
        w = len(u[1].split())
        if chunks and n + w <= max_words:
            chunks[-1].append(u)
            n += w
        else:
            chunks.append([u])
            n = w
    out = []
    for chunk in chunks:
        parts, last = [], None
        for tag, sent in chunk:
            parts.append(f"{tag} {sent}" if tag and tag != last else sent)
            last = tag
        out.append(" ".join(parts))
    return out
