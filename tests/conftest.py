"""Shared fixtures: a synthetic speech corpus with ground truth (data_pipeline/synth.py).

synth_corpus  session-scoped; make_corpus(preset="tests") built once (~6 s) into a temp dir.
              A dict: "root" (Path), "files" [{path, truth, sample_rate, duration, n_speakers,
              speech_seconds, snr_db, music, sidecar}] with paths relative to root,
              "broken" (relative paths: broken/empty.wav, truncated.flac, random.mp3, text.wav).
              Files: conv_2spk.wav (16 kHz, json sidecar), conv_3spk.flac (24 kHz, txt sidecar),
              conv_4spk.mp3 (44.1 kHz), conv_noisy.wav (22.05 kHz, 10 dB SNR),
              conv_music.ogg (48 kHz, music), conv_aac.m4a (24 kHz), conv_opus.opus (48 kHz).
conversation  session-scoped factory: conversation(name="conv.wav", **make_conversation_kwargs)
              -> (path, utterances). Same arguments give the same cached file, so treat
              the files as read-only (copy them before changing them).
one_thread    module-scoped: torch runs single-threaded for a module that asks for it with
              `pytestmark = pytest.mark.usefixtures("one_thread")`, and the count is restored after.
vad, diarizer session-scoped: the default SileroVAD and EmbeddingClusterDiarizer stages, loaded once.
"""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from data_pipeline.synth import make_conversation, make_corpus


@pytest.fixture(scope="module")
def one_thread():
    # Tiny models on 2 shared cores: OpenMP hand-offs cost more than the small matmuls and convs
    # save (10-25x slower under load). Module scope, restored after: not every module wants it.
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="session")
def vad():
    from data_pipeline.stages.vad import SileroVAD
    return SileroVAD()


@pytest.fixture(scope="session")
def diarizer():
    from data_pipeline.stages.diarization import EmbeddingClusterDiarizer
    return EmbeddingClusterDiarizer()


@pytest.fixture(scope="session")
def synth_corpus(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("synth_corpus")
    summary = make_corpus(root, preset="tests", seed=0)
    summary["root"] = Path(root)
    return summary


@pytest.fixture(scope="session")
def conversation(tmp_path_factory):
    root = tmp_path_factory.mktemp("conversations")
    cache: dict = {}

    def make(name: str = "conv.wav", **kwargs):
        key = (name, tuple(sorted((k, repr(v)) for k, v in kwargs.items())))
        if key not in cache:
            path = root / f"{len(cache):03d}" / name  # own folder: equal names never collide
            path.parent.mkdir(parents=True)
            cache[key] = (path, make_conversation(path, **kwargs))
        return cache[key]

    return make
