"""Whisper ASR from a LOCAL model directory (nothing is fetched from a hub).

Two model formats, told apart by the directory's contents:
    model.bin (CTranslate2)        -> faster-whisper (pip install faster-whisper)
    config.json (Hugging Face)     -> transformers' WhisperForConditionalGeneration; the folder
                                      also needs the tokenizer and feature-extractor files,
                                      i.e. what `save_pretrained` of model and processor writes

language: null lets Whisper detect it per segment; the detected (or given) code is recorded.
Segments longer than 30 s go through transformers' long-form (sequential) decoding.

Confidence, on both paths, as Whisper itself judges a decoding: `asr_avg_logprob` (mean log-probability
of the decoded tokens, end-of-text included) and `asr_no_speech_prob` (the probability of the
no-speech token at the start of the transcript); `asr_confidence` = exp(asr_avg_logprob), the
geometric-mean token probability. Whisper treats avg_logprob < -1 (confidence < 0.37) as a failed
decoding. Long-form (> 30 s) transformers decoding is not scored: NaN there (missing_asr_confidence).
"""
from __future__ import annotations

from pathlib import Path

import math

import numpy as np
import soxr

from data_pipeline.stages.base import Segment, Transcript, Transcriber

WHISPER_SR = 16_000
_MODELS: dict = {}  # (path, device) -> loaded model, one per process


def _load_transformers(path: Path, device: str):
    import torch
    from transformers import WhisperForConditionalGeneration, WhisperProcessor

    processor = WhisperProcessor.from_pretrained(str(path), local_files_only=True)
    dtype = torch.float16 if device.startswith("cuda") else torch.float32
    model = WhisperForConditionalGeneration.from_pretrained(str(path), local_files_only=True, dtype=dtype)
    return processor, model.to(device).eval()


def _load_faster_whisper(path: Path, device: str):
    try:
        from faster_whisper import WhisperModel
    except ImportError:
        raise ImportError(f"{path} holds a CTranslate2 (faster-whisper) model, but faster-whisper is not "
                          "installed: pip install faster-whisper") from None
    return WhisperModel(str(path), device=device)


class WhisperTranscriber(Transcriber):
    def __init__(self, model_path: str | None, language: str | None = None, device: str = "cpu",
                 beam_size: int = 1, batch_size: int = 8, max_new_tokens: int | None = None):
        if not model_path:
            raise ValueError("transcribe=whisper needs transcribe.model_path=DIR (a local Whisper model folder)")
        self.path = Path(model_path).expanduser()
        if (self.path / "model.bin").is_file():
            self.backend = "faster_whisper"
        elif (self.path / "config.json").is_file():
            self.backend = "transformers"
        else:
            raise FileNotFoundError(f"Whisper model not found: {self.path} (expected config.json of a "
                                    "transformers model or model.bin of a CTranslate2 model)")
        self.language = language
        self.device = device
        self.beam_size = beam_size
        self.batch_size = batch_size
        self.max_new_tokens = max_new_tokens  # None: the model's own limit
    def _model(self):
        key = (str(self.path), self.device)
        if key not in _MODELS:
            load = _load_faster_whisper if self.backend == "faster_whisper" else _load_transformers
            _MODELS[key] = load(self.path, self.device)
        return _MODELS[key]

    def transcribe(self, clips, sr, segments: list[Segment], source_path: Path) -> list[Transcript]:
        clips16 = [np.asarray(c, np.float32).reshape(-1) for c in clips]
        if sr != WHISPER_SR:
            clips16 = [soxr.resample(c, sr, WHISPER_SR).astype(np.float32) for c in clips16]
        if self.backend == "faster_whisper":
            return [self._faster_whisper(c) for c in clips16]
        out: list[Transcript] = []
        for b in range(0, len(clips16), self.batch_size):
            out += self._transformers(clips16[b:b + self.batch_size])
        return out

    def _faster_whisper(self, wav16: np.ndarray) -> Transcript:
        cap = {"max_new_tokens": self.max_new_tokens} if self.max_new_tokens else {}
        pieces, info = self._model().transcribe(wav16, language=self.language, beam_size=self.beam_size,
                                                condition_on_previous_text=False, **cap)
        pieces = list(pieces)
        # Per piece avg_logprob is over its tokens and end-of-text: weighted by that count, the
        # segment's is the mean over all its decoded tokens, as on the transformers path.
        n = [len(p.tokens) + 1 for p in pieces]
        avg = sum(p.avg_logprob * k for p, k in zip(pieces, n)) / sum(n) if pieces else float("nan")
        no_speech = sum(p.no_speech_prob * k for p, k in zip(pieces, n)) / sum(n) if pieces else float("nan")
        return Transcript(text=" ".join(p.text.strip() for p in pieces).strip(),
                          language=self.language or info.language, scores=_scores(avg, no_speech))

    def _transformers(self, batch: list[np.ndarray]) -> list[Transcript]:
        import torch

        processor, model = self._model()
        long_form = max(len(c) for c in batch) > 30 * WHISPER_SR
        # Short clips are padded to Whisper's fixed 30 s input; longer ones need no truncation so
        # that generate() switches to sequential long-form decoding.
        feats = processor.feature_extractor(
            batch, sampling_rate=WHISPER_SR, return_tensors="pt", return_attention_mask=True,
            **({"truncation": False, "padding": "longest"} if long_form else {}))
        x = feats.input_features.to(self.device, model.dtype)  # [B, 80 mels, 3000+ frames]
        gen = model.generation_config
        tok = processor.tokenizer
        with torch.inference_mode():
            enc = model.get_encoder()(x[..., :3000])  # the first 30 s: what the scores below look at
            if self.language:
                languages = [self.language] * len(batch)
            else:  # one decoder step after <|startoftranscript|>, as Whisper's detect_language (generate()
                # would detect but not tell us what it found)
                sot = torch.full((len(batch), 1), gen.decoder_start_token_id, device=self.device)
                first = model(encoder_outputs=enc, decoder_input_ids=sot).logits[:, -1].float()
                lang_ids = torch.tensor(list(gen.lang_to_id.values()), device=self.device)
                best = lang_ids[first[:, lang_ids].argmax(-1)].tolist()
                languages = [t[2:-2] for t in tok.convert_ids_to_tokens(best)]
            ids = model.generate(x, attention_mask=feats.attention_mask.to(self.device), language=languages,
                                 task="transcribe", num_beams=self.beam_size,
                                 **({"max_new_tokens": self.max_new_tokens} if self.max_new_tokens else {}))
            ids = ids.sequences if hasattr(ids, "sequences") else ids
            scores = ([_scores(float("nan"), float("nan"))] * len(batch) if long_form
                      else _whisper_scores(model, tok, enc, ids))
        texts = tok.batch_decode(ids, skip_special_tokens=True)
        return [Transcript(text=t.strip(), language=lang, scores=sc) for t, lang, sc in zip(texts, languages, scores)]


def _whisper_scores(model, tok, enc, ids) -> list[dict]:
    """Whisper's own scores of each decoded sequence (prompt <|startoftranscript|><|lang|><|task|>
    <|notimestamps|>, text, <|endoftext|>), from one teacher-forced decoder pass: the mean
    log-probability of the text tokens and end-of-text, and the no-speech token's probability right
    after <|startoftranscript|>. One pass serves greedy and beam search alike."""
    gen = model.generation_config
    logits = model(encoder_outputs=enc, decoder_input_ids=ids).logits   # [B, T, vocab]
    norm = logits.float().logsumexp(-1)                                  # log-softmax without a vocab-wide copy
    # log p(token t | tokens < t): the logits at t-1 predict token t
    tok_lp = (logits[:, :-1].gather(-1, ids[:, 1:, None])[..., 0].float() - norm[:, :-1]).cpu().numpy()
    nospeech = [tok.convert_tokens_to_ids(t) for t in ("<|nospeech|>", "<|nocaptions|>")]
    nospeech = [i for i in nospeech if i is not None and i != tok.unk_token_id]
    no_speech = ((logits[:, 0, nospeech[0]].float() - norm[:, 0]).exp().tolist() if nospeech
                 else [float("nan")] * len(ids))
    out = []
    for lp, seq, ns in zip(tok_lp, ids.cpu().numpy(), no_speech):
        start = np.flatnonzero(seq == gen.no_timestamps_token_id)
        start = int(start[0]) + 1 if len(start) else 1
        end = np.flatnonzero(seq[start:] == gen.eos_token_id)
        end = start + int(end[0]) + 1 if len(end) else len(seq)
        text_lp = lp[start - 1:end - 1]   # the text tokens and end-of-text
        out.append(_scores(float(text_lp.mean()) if len(text_lp) else float("nan"), ns))
    return out


def _scores(avg_logprob: float, no_speech_prob: float) -> dict:
    """The quality keys of a Whisper transcript (NaN where the decoding gave none)."""
    r = (lambda v: round(float(v), 4) if math.isfinite(v) else float("nan"))
    return {"asr_confidence": r(math.exp(avg_logprob)) if math.isfinite(avg_logprob) else float("nan"),
            "asr_avg_logprob": r(avg_logprob), "asr_no_speech_prob": r(no_speech_prob)}
