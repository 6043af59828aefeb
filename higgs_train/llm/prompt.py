"""Chat-format samples (docs/model.md, "Prompt"), laid out as the release lays them out: token ids,
audio frames and shifted labels for one sequence.

    <|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nGenerate audio following instruction.
        [\n\n<|scene_desc_start|>\nSCENE\n<|scene_desc_end|>]<|eot_id|>
    [voice cloning: user turn = reference transcript, assistant turn = reference audio (not supervised)]
    <|start_header_id|>user<|end_header_id|>\n\nTEXT[<|audio_bos|>AUDIO_IN<|audio_eos|>]<|eot_id|>
    <|start_header_id|>assistant<|end_header_id|>\n\n<|audio_out_bos|>AUDIO<|audio_eos|><|eot_id|>

AUDIO is one position per delayed frame (delay.audio_stream: BOS frame, codes, EOS frame), its 8
codes in audio_codes; input_ids hold <|AUDIO_OUT|> there, and the delay token
(<|reserved_special_token_6|>) at the last K-1 positions, as the transformers port's processor
writes them (the model reads only the codes there). AUDIO_IN (a user/system turn's codes, the
release's `encode_audio_in_tokens`) is laid out the same way with <|AUDIO|> ids, as the original
code expands it. This is, position for position, the original collator's sequence after the
original model expands its one <|AUDIO|>/<|AUDIO_OUT|> token per stream.

Labels are the original collator's, shifted (label at t = target of position t's prediction):
audio: [ignore, codes, EOS] delayed with ignore padding, so the BOS frame and the delay's BOS
padding are never targets, each codebook's EOS is a target once and the trailing delay padding
(forced at generation) is not; text: the supervised assistant turn's <|audio_out_bos|>,
<|audio_eos|>, <|eot_id|> (and any text it holds). Dialogue: TEXT carries [SPEAKERn] tags and
AUDIO is the turns' codes back to back.

generation=True ends with the opened assistant turn `...<|audio_out_bos|>`, the release's
generation prompt; the engine then feeds the all-BOS frame (inference/engine.py).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from higgs_train.llm.delay import IGNORE, audio_stream, stream_labels
from higgs_train.llm.text_tokenizer import DELAY_TOKEN

SYSTEM_PROMPT = "Generate audio following instruction."

# The same layout as a Jinja chat template (higgs_train/llm/chat_template.jinja), for the transformers
# port's processor (processor.apply_chat_template; an hf export carries it as chat_template.jinja).
# Messages as the port documents them: role system | scene | user | assistant, content a string or a
# list of {"type": "text", "text": ...} / {"type": "audio", ...} blocks; a "scene" message after the
# system turn becomes its scene description; audio in an assistant turn is audio out.
CHAT_TEMPLATE_FILE = Path(__file__).with_name("chat_template.jinja")
CHAT_TEMPLATE = CHAT_TEMPLATE_FILE.read_text(encoding="utf-8")


@dataclass
class Message:
    role: str                       # system | user | assistant
    text: str | None = None         # the turn's text (assistant: text instead of audio)
    codes: np.ndarray | None = None  # [K, F] undelayed codes: assistant = audio out; user/system = audio in, after the text
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
    """Messages -> Sample (the layout and labels in the module docstring)."""
    bos, eos = codebook_size, codebook_size + 1
    K = num_codebooks
    audio_out, audio_in, delay = (tok.convert_tokens_to_ids(t) for t in ("<|AUDIO_OUT|>", "<|AUDIO|>", DELAY_TOKEN))
    ids: list[int] = []
    codes: list[np.ndarray] = []     # per position [K]
    text_lab: list[int] = []         # unshifted: the target at this position, or IGNORE
    audio_lab: list[np.ndarray] = []  # unshifted [K]
    is_audio: list[bool] = []
    zero, none = np.zeros(K, np.int64), np.full(K, IGNORE, np.int64)

    def text(s: str, supervised: bool = False) -> None:
        new = tok.encode(s, add_special_tokens=False)
        ids.extend(new)
        codes.extend([zero] * len(new))
        text_lab.extend(new if supervised else [IGNORE] * len(new))
        audio_lab.extend([none] * len(new))
        is_audio.extend([False] * len(new))

    def audio(c: np.ndarray, out: bool, supervised: bool) -> None:
        c = torch.as_tensor(np.asarray(c, np.int64))
        if c.ndim != 2 or c.shape[0] != K:
            raise ValueError(f"audio codes must be [{K}, frames], got {tuple(c.shape)}")
        frames = audio_stream(c, bos, eos).numpy()                       # [K, L]
        L = frames.shape[1]
        ids.extend([audio_out] * (L - K + 1) + [delay] * (K - 1) if out else [audio_in] * L)
        codes.extend(frames.T)
        text_lab.extend([IGNORE] * L)
        if supervised:
            audio_lab.extend(stream_labels(c, eos).numpy().T)
        else:
            audio_lab.extend([none] * L)
        is_audio.extend([True] * L)

    for i, m in enumerate(messages):
        if m.role == "assistant" and i + 1 < len(messages) and messages[i + 1].role == "assistant":
            raise ValueError("two assistant turns in a row (the release's <|eom_id|> layout) are not supported")
        text(("<|begin_of_text|>" if i == 0 else "") + f"<|start_header_id|>{m.role}<|end_header_id|>\n\n")
        sup = m.role == "assistant" and m.supervised
        if m.text:
            text(m.text, sup)
        if m.codes is not None:
            if m.role == "assistant":
                text("<|audio_out_bos|>", sup)
                audio(m.codes, True, sup)
            else:
                text("<|audio_bos|>")
                audio(m.codes, False, False)
            text("<|audio_eos|>", sup)
        text("<|eot_id|>", sup)
    if generation:
        text("<|start_header_id|>assistant<|end_header_id|>\n\n<|audio_out_bos|>")

    T = len(ids)
    input_ids = np.asarray(ids, np.int64)
    audio_codes = np.stack(codes) if codes else np.zeros((0, K), np.int64)
    audio_labels = np.full((T, K), IGNORE, np.int64)
    text_labels = np.full(T, IGNORE, np.int64)
    if T:
        audio_labels[:-1] = np.stack(audio_lab)[1:]
        text_labels[:-1] = np.asarray(text_lab, np.int64)[1:]
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
