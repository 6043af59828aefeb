"""Chat-format samples (SPEC §2): token ids, audio frames and shifted labels for one sequence.

    <|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nGenerate audio following instruction.
        [\n\n<|scene_desc_start|>\nSCENE\n<|scene_desc_end|>]<|eot_id|>
    [voice cloning: user turn = reference transcript, assistant turn = reference audio (not supervised)]
    <|start_header_id|>user<|end_header_id|>\n\nTEXT<|eot_id|>
    <|start_header_id|>assistant<|end_header_id|>\n\n<|audio_out_bos|>AUDIO<|audio_eos|><|eot_id|>

AUDIO is one position per delayed frame (delay.audio_stream: BOS frame, codes, EOS frame), each
holding the <|AUDIO_OUT|> placeholder id in input_ids and its 8 codes in audio_codes. Labels are
shifted (label at t = target of position t): audio_labels at the positions before each supervised
frame (never the first, all-BOS frame, and never the stream-BOS padding the delay forces);
text_labels on the supervised assistant turn's text tokens. Dialogue: TEXT carries [SPEAKERn]
tags and AUDIO is the turns' codes back to back.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from higgs_train.llm.delay import audio_stream
from higgs_train.llm.model import IGNORE

SYSTEM_PROMPT = "Generate audio following instruction."
BOS_FRAME_ONLY = "bos_frame"  # generation prompt: assistant turn opened, BOS frame in place


@dataclass
class Message:
    role: str                       # system | user | assistant
    text: str | None = None         # system / user text
    codes: np.ndarray | None = None  # assistant audio [K, F] (undelayed codes)
    supervised: bool = False        # assistant turn whose audio (and text tokens) are targets


@dataclass
class Sample:
    input_ids: np.ndarray     # [T] int64
    audio_codes: np.ndarray   # [T, K] int64 (0 at text positions)
    audio_mask: np.ndarray    # [T] bool
    audio_labels: np.ndarray  # [T, K] int64, IGNORE where unsupervised
    text_labels: np.ndarray   # [T] int64, IGNORE where unsupervised

    def __len__(self) -> int:
        return len(self.input_ids)


def system_message(scene: str | None = None) -> Message:
    text = SYSTEM_PROMPT
    if scene:
        text += f"\n\n<|scene_desc_start|>\n{scene}\n<|scene_desc_end|>"
    return Message("system", text)


def encode_chat(tok, messages: list[Message], num_codebooks: int = 8, codebook_size: int = 1024,
                generation: bool = False) -> Sample:
    """Messages -> Sample. generation=True ends with an opened assistant turn and its BOS frame,
    which is where inference starts decoding frames (it uses input_ids/audio_* only)."""
    bos, eos = codebook_size, codebook_size + 1
    placeholder = tok.convert_tokens_to_ids("<|AUDIO_OUT|>")
    ids: list[int] = []
    codes: list[np.ndarray] = []          # per position [K]
    text_sup: list[bool] = []             # position is a supervised text target
    audio_sup: list[bool] = []            # position is a supervised audio target
    is_audio: list[bool] = []
    zero = np.zeros(num_codebooks, np.int64)

    def text(s: str, supervised: bool = False) -> None:
        new = tok.encode(s, add_special_tokens=False)
        ids.extend(new)
        codes.extend([zero] * len(new))
        text_sup.extend([supervised] * len(new))
        audio_sup.extend([False] * len(new))
        is_audio.extend([False] * len(new))

    def audio(frames: np.ndarray, supervised: bool) -> None:   # frames [K, L] delayed
        L = frames.shape[1]
        ids.extend([placeholder] * L)
        codes.extend(frames.T.astype(np.int64))
        text_sup.extend([False] * L)
        audio_sup.extend([False] + [supervised] * (L - 1))    # the BOS frame is given, not predicted
        is_audio.extend([True] * L)

    text("<|begin_of_text|>")
    for m in messages:
        text(f"<|start_header_id|>{m.role}<|end_header_id|>\n\n")
        if m.role != "assistant":
            text(f"{m.text}<|eot_id|>")
            continue
        text("<|audio_out_bos|>", m.supervised)
        audio(audio_stream(torch.as_tensor(np.asarray(m.codes, np.int64)), bos, eos).numpy(), m.supervised)
        text("<|audio_eos|><|eot_id|>", m.supervised)
    if generation:
        text("<|start_header_id|>assistant<|end_header_id|>\n\n<|audio_out_bos|>")
        audio(np.full((num_codebooks, 1), bos, np.int64), False)

    T = len(ids)
    input_ids = np.asarray(ids, np.int64)
    audio_codes = np.stack(codes) if codes else np.zeros((0, num_codebooks), np.int64)
    audio_labels = np.full((T, num_codebooks), IGNORE, np.int64)
    text_labels = np.full(T, IGNORE, np.int64)
    a_sup = np.asarray(audio_sup, bool)
    t_sup = np.asarray(text_sup, bool)
    audio_labels[:-1][a_sup[1:]] = audio_codes[1:][a_sup[1:]]
    audio_labels[audio_labels == bos] = IGNORE   # delay padding at the start is forced, not learned
    text_labels[:-1][t_sup[1:]] = input_ids[1:][t_sup[1:]]
    return Sample(input_ids, audio_codes, np.asarray(is_audio, bool), audio_labels, text_labels)


def speaker_tagged(turns: list[tuple[str, str]]) -> str:
    """[(speaker, text)] -> '[SPEAKER0] text [SPEAKER1] text ...', speakers numbered by first turn."""
    order: dict[str, int] = {}
    parts = []
    for spk, t in turns:
        order.setdefault(spk, len(order))
        parts.append(f"[SPEAKER{order[spk]}] {t}")
    return " ".join(parts)


def tts_sample(tok, text: str, codes: np.ndarray, scene: str | None = None, **kw) -> Sample:
    return encode_chat(tok, [system_message(scene), Message("user", text),
                             Message("assistant", codes=codes, supervised=True)], **kw)


def clone_sample(tok, ref_text: str, ref_codes: np.ndarray, text: str, codes: np.ndarray,
                 scene: str | None = None, **kw) -> Sample:
    return encode_chat(tok, [system_message(scene), Message("user", ref_text),
                             Message("assistant", codes=ref_codes),
                             Message("user", text), Message("assistant", codes=codes, supervised=True)], **kw)


def dialogue_sample(tok, turns: list[tuple[str, str, np.ndarray]], scene: str | None = None, **kw) -> Sample:
    """turns: [(speaker, text, codes [K, F])] of one source, in time order."""
    text = speaker_tagged([(s, t) for s, t, _ in turns])
    codes = np.concatenate([c for _, _, c in turns], axis=1)
    return tts_sample(tok, text, codes, scene, **kw)
