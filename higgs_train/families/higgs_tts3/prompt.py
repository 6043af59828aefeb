"""Higgs TTS 3 prompts and training samples (no chat template), laid out as the release's reference
code lays them out:

    zero-shot      <|tts|> <|text|> TEXT <|audio|>
    voice cloning  <|tts|> [<|ref_text|> REF_TEXT] <|ref_audio|> [-100] x (T_ref + K - 1) <|text|> TEXT <|audio|>
                   (several references: one [<|ref_text|> ..] <|ref_audio|> [-100] x .. group each, in order)
    training       either prompt, then [-100] x (T + K - 1): the target audio

Special-token ids are read from the text tokenizer's added vocabulary (special_ids), never
constants; a tokenizer without <|ref_text|> clones from the audio alone, as the reference does.
Audio spans hold the delayed codes (higgs_train/llm/delay.py: codebook c shifted by c, BOS 1024
before, EOS 1025 after; [K, T] -> T + K - 1 rows) in audio_codes, with -100 as their input ids
(the release's audio_token_id; the model embeds the codes there, never the id).

Generation: the hidden state at <|audio|> predicts the first delayed row, each row the next (no
begin-of-stream frame is fed, unlike v2); the begin-of-stream codes of codebooks c > r at row r are
forced, not sampled; the stream ends once codebook 0 emits EOS and the other codebooks have
finished their delay (T + K - 1 rows).

Labels (the rule; Sample.audio_labels at position p is the target of p's prediction): a position
predicting row r of the target (the <|audio|> position predicts row 0, row r's position row r + 1)
carries, for codebook c,
    row r < c              IGNORE   the forced begin-of-stream padding: generation never samples it
    c <= r < c + T         the code the real frames
    r == c + T             1025     the codebook's end-of-stream, once: codebook 0's is the one that
                                    ends the stream; the later codebooks' follow it (forced by the
                                    engine's delay state, free in the release's sampler, which drops
                                    them), supervised once as the v2 labels are; for K = 8 codebooks
                                    0..6 have theirs inside the T + 7 rows, codebook 7's would come
                                    after the last row
    r > c + T              IGNORE   trailing end-of-stream padding
The last target row's position predicts nothing, and no prompt position (reference audio included)
carries a label: 8 T + 7 labels for T frames and K = 8. No text labels (the stream's end is the
audio EOS, not a text token).
"""
from __future__ import annotations

import numpy as np
import torch

from higgs_train.llm.delay import IGNORE, apply_delay, stream_labels
from higgs_train.llm.prompt import Sample

TTS, REF_TEXT, REF_AUDIO, TEXT, AUDIO = "<|tts|>", "<|ref_text|>", "<|ref_audio|>", "<|text|>", "<|audio|>"
SPECIAL_TOKENS = (TTS, REF_TEXT, REF_AUDIO, TEXT, AUDIO)
AUDIO_PLACEHOLDER = IGNORE   # input id at audio positions: the release's audio_token_id (-100)


def special_ids(tok) -> dict[str, int]:
    """{token: id} from the tokenizer's added vocabulary; ValueError naming the required ones it lacks."""
    vocab = dict(tok.get_added_vocab())
    missing = [t for t in SPECIAL_TOKENS if t != REF_TEXT and t not in vocab]
    if missing:
        raise ValueError(f"the text tokenizer lacks the Higgs TTS 3 special tokens {missing} "
                         "(add_special_tokens adds them to a tokenizer trained here)")
    return {t: vocab[t] for t in SPECIAL_TOKENS if t in vocab}


def add_special_tokens(tok):
    """`tok` with every SPECIAL_TOKENS entry in its added vocabulary (a release tokenizer has them)."""
    missing = [t for t in SPECIAL_TOKENS if t not in tok.get_added_vocab()]
    if missing:
        tok.add_special_tokens({"additional_special_tokens": missing}, replace_extra_special_tokens=False)
    return tok


def delayed_rows(codes, codebook_size: int = 1024) -> np.ndarray:
    """codes [K, T] -> the delayed rows [T + K - 1, K] (BOS codebook_size, EOS codebook_size + 1)."""
    c = torch.as_tensor(np.asarray(codes, np.int64))
    if c.ndim != 2:
        raise ValueError(f"audio codes must be [codebooks, frames], got {tuple(c.shape)}")
    return apply_delay(c, codebook_size, codebook_size + 1).T.numpy()


def stream_targets(codes, codebook_size: int = 1024) -> np.ndarray:
    """The targets of the delayed rows [T + K - 1, K] of codes [K, T]: the labels rule above. It is
    the v2 stream's (higgs_train.llm.delay.stream_labels: codes, each codebook's first EOS, IGNORE
    at forced BOS and trailing EOS) without its all-BOS first frame, which v3 does not feed."""
    c = torch.as_tensor(np.asarray(codes, np.int64))
    K, T = c.shape
    return stream_labels(c, codebook_size + 1)[:, 1:T + K].T.numpy()


def encode(tok, text: str, refs=(), codes=None, num_codebooks: int = 8, codebook_size: int = 1024) -> Sample:
    """A prompt (codes None: ends at <|audio|>, what generation starts from) or a training sample
    (codes [K, T]: the prompt, the delayed target rows and the labels of the module docstring).
    refs [(transcript or None, codes [K, T_ref])]: voice cloning from them, in order (a transcript
    only when the tokenizer has <|ref_text|>)."""
    ids_of = special_ids(tok)
    K = num_codebooks
    ids: list[int] = [ids_of[TTS]]
    spans: list[tuple[int, np.ndarray]] = []   # (first position, delayed rows)

    def audio(c) -> None:
        rows = delayed_rows(c, codebook_size)
        if rows.shape[1] != K:
            raise ValueError(f"audio codes must have {K} codebooks, got {rows.shape[1]}")
        spans.append((len(ids), rows))
        ids.extend([AUDIO_PLACEHOLDER] * len(rows))

    for ref_text, ref_codes in refs:
        if ref_text and REF_TEXT in ids_of:
            ids.append(ids_of[REF_TEXT])
            ids.extend(tok.encode(ref_text, add_special_tokens=False))
        ids.append(ids_of[REF_AUDIO])
        audio(ref_codes)
    ids.append(ids_of[TEXT])
    ids.extend(tok.encode(text, add_special_tokens=False))
    ids.append(ids_of[AUDIO])
    start = len(ids)   # the first target row's position
    if codes is not None:
        audio(codes)

    T = len(ids)
    audio_codes = np.zeros((T, K), np.int64)
    audio_mask = np.zeros(T, bool)
    for first, rows in spans:
        audio_codes[first:first + len(rows)] = rows
        audio_mask[first:first + len(rows)] = True
    audio_labels = np.full((T, K), IGNORE, np.int64)
    if codes is not None:
        targets = stream_targets(codes, codebook_size)
        audio_labels[start - 1:start - 1 + len(targets)] = targets   # position p predicts row p - start + 1
    return Sample(np.asarray(ids, np.int64), audio_codes, audio_mask, audio_labels, np.full(T, IGNORE, np.int64))


def tts_sample(tok, text: str, codes, **kw) -> Sample:
    """Zero-shot training sample (the signature of higgs_train.llm.prompt.tts_sample)."""
    return encode(tok, text, codes=codes, **kw)


def clone_sample(tok, ref_text: str, ref_codes, text: str, codes, **kw) -> Sample:
    """Voice-cloning training sample (the signature of higgs_train.llm.prompt.clone_sample)."""
    return encode(tok, text, [(ref_text, ref_codes)], codes=codes, **kw)


def load_text_tokenizer(path):
    """The text tokenizer of a model directory (a release's has the special tokens; one trained
    here gets them appended)."""
    from transformers import PreTrainedTokenizerFast   # not AutoTokenizer: it reads config.json's model_type

    return add_special_tokens(PreTrainedTokenizerFast.from_pretrained(str(path), local_files_only=True))


class Tts3Prompts:
    """The family's prompts for one text tokenizer and model config: what the engine asks for a
    generation prompt and the training data for samples.

    generation(text, refs, history): the references (objects with .text and .codes [K, F]) and then
    the earlier chunks of a long text [(text, codes)] as further references of the same voice, then
    the text; the prompt ends at <|audio|>, whose logits give the first delayed row (the release
    feeds no begin-of-stream frame). The release's prompt has no scene description and no dialogue
    layout: asking for either is an error, not a silent drop."""

    audio_token = AUDIO_PLACEHOLDER   # the input id of an audio position (never looked up)
    kinds = ("tts", "clone")          # no dialogue layout (higgs_train/llm/data.py refuses data.kinds.dialogue)

    def __init__(self, tok, cfg):
        special_ids(tok)   # fail now, naming the missing tokens
        self.tok, self.kw = tok, dict(num_codebooks=cfg.num_codebooks, codebook_size=cfg.codebook_size)

    @staticmethod
    def _no_scene(scene) -> None:
        if scene:
            raise ValueError("Higgs TTS 3 prompts have no scene description (scene must be empty)")

    def generation(self, text: str, refs, history, scene: str | None = None):
        self._no_scene(scene)
        voice = [(r.text, np.asarray(r.codes)) for r in refs] + [(t, np.asarray(c)) for t, c in history]
        s = encode(self.tok, text, voice, **self.kw)
        return torch.from_numpy(s.input_ids), torch.from_numpy(s.audio_codes), torch.from_numpy(s.audio_mask)

    def tts(self, text: str, codes, scene: str | None = None) -> Sample:
        self._no_scene(scene)
        return tts_sample(self.tok, text, codes, **self.kw)

    def clone(self, ref_text: str, ref_codes, text: str, codes, scene: str | None = None) -> Sample:
        self._no_scene(scene)
        return clone_sample(self.tok, ref_text, ref_codes, text, codes, **self.kw)

    def dialogue(self, turns, scene: str | None = None) -> Sample:
        raise ValueError("Higgs TTS 3 has no dialogue prompt layout: set data.kinds.dialogue=0")
