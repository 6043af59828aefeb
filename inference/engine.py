"""The generation engine: load the exported LLM and audio tokenizer once, then speak many times.

    engine = Engine.from_pretrained(llm_dir, tokenizer_dir, device="cuda", dtype=torch.bfloat16)
    [result] = engine.generate([Request("Hello there.", voice="alice")])   # result.audio at 24 kHz
    for chunk in engine.stream(Request("Hello there.")): play(chunk)

One decode step of a batch:
    prompt (the release's chat format, higgs_train.llm.prompt, ending <|audio_out_bos|>) + the
    all-BOS frame at slot P-1 (fed, never predicted)
    -> prefill (in slices of `prefill_chunk` positions) into a static KV cache (length bucket)
    -> per step: audio logits [B, K, A] of the last position -> one delayed frame per row
       (sampling.sample_frame, constrained by the delay pattern) -> fed back at slot P-1+j.
Delay pattern (higgs_train.llm.delay): stream position j of codebook k holds frame j-k; frame 0
is the BOS frame, so positions with j <= k are forced BOS. When any codebook draws EOS at
position j, frame j-k is the EOS frame: every codebook is forced to EOS from that frame on,
the later ones finish their delay, and the stream ends at the all-EOS position.
A batch is left-padded (token_mask) so every row decodes at the same slot; rows that finish
early keep feeding EOS frames, which no other row attends to.
Each row's StopWatch (higgs_train.llm.stops: the rules the evaluation harness and the fine-tuning
stop check share) sets its frame limit from its text's budget, may end it early (silence, loop),
and says why it ended (Result.stop_reasons).
Decode steps are audio only (the engine never emits text: its stream runs from the prompt's
<|audio_out_bos|> to the all-EOS frame, and a text chunk is a new prompt), so they run the model's
fast paths: audio_only (dual layers skip the text norms/FFN and the split), text_head=False, and
attention over the first EngineConfig.attend_step multiple of slots that holds the sequence; on
CUDA each step is replayed from a CUDA graph per multiple (inference.decode_graphs); on CPU the
decode linears multiply by weights packed for the batch (inference.packed_gemm: bf16 at any batch,
fp32 at 4 or more rows).
use_cache=False is the reference: full recomputation of every position by the plain forward.
"""
from __future__ import annotations

import logging
import math
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch
from torch import Tensor

from higgs_train.llm.delay import strip_stream
from higgs_train.llm.checkpoints import load_llm
from higgs_train.llm.model import DualFFNModel, KVCache
from higgs_train.llm.prompt import Message, encode_chat, system_message
from higgs_train.llm.stops import StopRules, StopWatch, overall_reason
from higgs_train.llm.text_tokenizer import load_text_tokenizer, special_token_ids
from higgs_train.tokenizer import AudioTokenizer
from inference.decode_graphs import DecodeSteps, cuda_capture
from inference.packed_gemm import PackedLinears
from inference.sampling import SamplingConfig, sample_frame
from inference.streaming import StreamDecoder
from inference.text import speaker_ids, split_text
from inference.voices import VoiceError, VoiceLibrary

log = logging.getLogger(__name__)


class RequestError(ValueError):
    """A request the engine cannot serve as asked (too long, bad reference): the client's fault."""


@dataclass
class EngineConfig:
    buckets: tuple[int, ...] = (1024, 4096, 8192)  # static KV-cache lengths (slots); the smallest that fits
    prefill_chunk: int = 1024        # prompt positions per prefill forward (caps activation memory)
    # attention reads the first multiple of attend_step slots that holds every written slot, not the
    # whole bucket: a static shape per multiple (one CUDA graph each), ~P + frames slots read per step
    attend_step: int = 128
    cuda_graphs: bool = True         # on CUDA, decode steps replayed from CUDA graphs (inference.decode_graphs)
    packed_gemm: bool = True         # on CPU decode steps multiply by packed weights (inference.packed_gemm)
    chunk_words: int = 40            # long text is spoken in chunks of whole sentences up to this many words
    context_chunks: int = 2          # earlier generated chunks fed back as context (keeps the voice)
    max_reference_seconds: float = 30.0
    # streaming (frames at 25/s)
    first_chunk_frames: int = 10     # frames emitted in the first audio chunk
    stream_chunk_frames: int = 25    # frames per later chunk
    decode_context_frames: int = 12  # already-played frames each streamed decode sees on the left
    lookahead_frames: int = 10       # frames held back until their right neighbours exist (the DAC decoder sees ±10 frames)
    crossfade_frames: int = 3


@dataclass
class Reference:
    """A voice prompt: a transcript and its codes [K, F]."""
    text: str
    codes: Tensor


@dataclass
class Request:
    text: str
    voice: str | None = None                 # preset name; "a,b" gives [SPEAKER0]=a, [SPEAKER1]=b
    reference_audio: str | Path | tuple | None = None   # path, or (wav float32 mono, sample_rate)
    reference_text: str | None = None
    scene: str | None = None                 # scene description for the system turn
    sampling: SamplingConfig | None = None   # None: the engine's defaults
    stops: StopRules | None = None           # None: the engine's (budget, silence and loop stops)


@dataclass
class Result:
    audio: np.ndarray          # float32 mono at sample_rate
    codes: Tensor              # [K, F] the generated frames (all chunks)
    sample_rate: int
    chunks: list[str] = field(default_factory=list)
    stop_reasons: list[str] = field(default_factory=list)   # per chunk: higgs_train.llm.stops.STOP_REASONS

    @property
    def stop_reason(self) -> str:
        """eos when every chunk ended by itself, else the first chunk's reason that is not eos."""
        return overall_reason(self.stop_reasons)


@dataclass
class Row:
    """One prompt being decoded: what generate_codes takes (benchmarks build one from a prompt of ids)."""
    ids: Tensor        # [P] long
    codes: Tensor      # [P, K] long
    amask: Tensor      # [P] bool
    cfg: SamplingConfig
    gen: torch.Generator
    watch: StopWatch | None = None   # the chunk's frame limit and guards (higgs_train.llm.stops);
                                     # None: no guard, the row ends at cfg.max_frames

    def __post_init__(self):
        if self.watch is None:
            self.watch = StopWatch(StopRules.off(), "", 1.0, self.cfg.max_frames, hop=1)


class Engine:
    def __init__(self, model: DualFFNModel, audio_tokenizer: AudioTokenizer, text_tokenizer,
                 cfg: EngineConfig | None = None, sampling: SamplingConfig | None = None,
                 voices: VoiceLibrary | None = None, stops: StopRules | None = None):
        self.model = model.eval()
        self.codec = audio_tokenizer.eval()
        self.tok = text_tokenizer
        self.cfg = cfg or EngineConfig()
        self.sampling = sampling or SamplingConfig()
        self.voices = voices or VoiceLibrary(None)
        self.stops = stops or StopRules()
        mc = model.cfg
        self.K, self.bos, self.eos = mc.num_codebooks, mc.audio_bos, mc.audio_eos
        if (self.codec.n_codebooks, self.codec.codebook_size) != (mc.num_codebooks, mc.codebook_size):
            raise ValueError(f"LLM expects {mc.num_codebooks}x{mc.codebook_size} codes, tokenizer makes "
                             f"{self.codec.n_codebooks}x{self.codec.codebook_size}")
        self.placeholder = self.tok.convert_tokens_to_ids("<|AUDIO_OUT|>")
        stated = mc.special_tokens   # ids a release-layout config states
        if stated:
            have = special_token_ids(self.tok)
            bad = {k: (v, have.get(k)) for k, v in stated.items() if have.get(k) != v}
            if bad:
                raise ValueError(f"text tokenizer ids differ from the model config's special_tokens "
                                 f"(config, tokenizer): {bad}")
        self.device = model.text_embed.weight.device
        self._caches: dict[tuple[int, int], DecodeSteps] = {}   # (batch, bucket) -> its cache's steps
        self._allowed_masks: dict[tuple[int, ...], Tensor] = {}  # Engine._allowed's, by pattern
        self._voice_cache: dict[str, Reference] = {}

    @classmethod
    def from_pretrained(cls, llm_dir, tokenizer_dir, device: str | torch.device = "cpu", dtype=None,
                        quantize: str = "none", **kw) -> "Engine":
        """llm_dir: an LLM directory with its text tokenizer files, in any layout (ours, the
        transformers port's, the original release's: higgs_train.llm.checkpoints.load_llm); tokenizer_dir:
        an audio tokenizer directory (any layout). dtype None: bf16 on CUDA, fp32 elsewhere.
        quantize: none | int8 | nf4 (the decoder layers' linears; higgs_train.llm.quantize)."""
        for name, d in (("model", llm_dir), ("tokenizer", tokenizer_dir)):
            if not Path(d).is_dir():
                raise FileNotFoundError(f"{name} export directory {d} does not exist")
        device = torch.device(device)
        if dtype is None:
            dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
        model = load_llm(llm_dir, dtype=dtype, device=device, quantize=quantize)[0]
        codec = AudioTokenizer.from_pretrained(tokenizer_dir, device=device)
        return cls(model, codec, load_text_tokenizer(llm_dir), **kw)

    @property
    def sample_rate(self) -> int:
        return self.codec.sample_rate

    # ---- voices ------------------------------------------------------------------------
    def encode_reference(self, audio, text: str) -> Reference:
        from higgs_train.audio import AudioError, load_audio

        try:
            wav, sr = load_audio(audio, self.sample_rate) if isinstance(audio, (str, Path)) else audio
        except AudioError as e:
            raise RequestError(f"reference audio: {e}") from None
        wav = np.asarray(wav, np.float32).reshape(-1)
        if len(wav) == 0 or not text or not text.strip():
            raise RequestError("a reference needs non-empty audio and its transcript")
        if len(wav) > self.cfg.max_reference_seconds * sr:
            raise RequestError(f"reference audio longer than {self.cfg.max_reference_seconds:g} s")
        codes = self.codec.encode(torch.from_numpy(wav)[None], sr)[0].cpu()          # [K, F]
        return Reference(" ".join(text.split()), codes)

    def voice(self, name: str) -> Reference:
        if name not in self._voice_cache:
            v = self.voices.get(name)
            self._voice_cache[name] = self.encode_reference(v.audio, v.text)
        return self._voice_cache[name]

    def references(self, req: Request) -> list[Reference]:
        if req.reference_audio is not None:
            if req.voice:
                raise RequestError("give either voice or reference_audio, not both")
            refs = [self.encode_reference(req.reference_audio, req.reference_text or "")]
        elif req.voice:
            try:
                refs = [self.voice(n.strip()) for n in req.voice.split(",")]
            except VoiceError as e:
                raise RequestError(str(e)) from None
        else:
            return []
        tagged = speaker_ids(req.text)
        if len(refs) > 1 or tagged:   # dialogue: reference i speaks as [SPEAKERi]
            refs = [Reference(f"[SPEAKER{i}] {r.text}", r.codes) for i, r in enumerate(refs)]
        return refs

    # ---- prompts -----------------------------------------------------------------------
    def prompt(self, text: str, refs: list[Reference], history: list[tuple[str, Tensor]],
               scene: str | None = None):
        """Chat-format generation prompt (the training format: higgs_train.llm.prompt)."""
        msgs = [system_message(scene)]
        for r in refs:
            msgs += [Message("user", r.text), Message("assistant", codes=r.codes.numpy())]
        for t, c in history:
            msgs += [Message("user", t), Message("assistant", codes=c.numpy())]
        msgs.append(Message("user", text))
        s = encode_chat(self.tok, msgs, self.K, self.model.cfg.codebook_size, generation=True)
        # the release's prompt ends with <|audio_out_bos|>; as the original engine does, the all-BOS
        # frame is fed after it without a model step (it is never predicted), so decoding starts
        # with the logits of the BOS frame's position
        ids = torch.cat([torch.from_numpy(s.input_ids), torch.tensor([self.placeholder])])
        codes = torch.cat([torch.from_numpy(s.audio_codes), torch.full((1, self.K), self.bos)])
        amask = torch.cat([torch.from_numpy(s.audio_mask), torch.tensor([True])])
        return ids, codes, amask

    def _sampling(self, req: Request, index: int) -> SamplingConfig:
        cfg = req.sampling or self.sampling
        if cfg.seed is None:
            cfg = cfg.replace(seed=random.randrange(2 ** 31))
        return cfg.replace(seed=cfg.seed + index) if index else cfg

    # ---- public API ----------------------------------------------------------------------
    @torch.no_grad()
    def generate(self, requests: list[Request], progress: Callable[[int], None] | None = None,
                 use_cache: bool = True) -> list[Result]:
        """Speak each request; all rows of a text-chunk index are decoded as one batch."""
        plans = [self._plan(r) for r in requests]
        outs: list[list[Tensor]] = [[] for _ in requests]
        reasons: list[list[str]] = [[] for _ in requests]
        for c in range(max(len(p[1]) for p in plans)):
            idx = [i for i, p in enumerate(plans) if c < len(p[1])]
            rows = [self._row(requests[i], plans[i], outs[i], c) for i in idx]
            for i, row, codes in zip(idx, rows, self.generate_codes(rows, progress, use_cache)):
                outs[i].append(codes)
                reasons[i].append(row.watch.reason)
        results = []
        for r, (refs, chunks), codes, why in zip(requests, plans, outs, reasons):
            allc = torch.cat(codes, 1)
            results.append(Result(self.decode(allc), allc, self.sample_rate, chunks, why))
        return results

    @torch.no_grad()
    def stream(self, request: Request, stop_reasons: list[str] | None = None) -> Iterator[np.ndarray]:
        """Yield float32 audio chunks while generating: the first after cfg.first_chunk_frames frames.
        stop_reasons: a list that receives each text chunk's stop reason as it ends. Audio already
        streamed stays sent: a silence stop's tail is trimmed from what is still held back."""
        c = self.cfg
        plan = self._plan(request)
        dec = StreamDecoder(self.decode, self.codec.hop, c.decode_context_frames, c.lookahead_frames,
                            c.crossfade_frames)
        done: list[Tensor] = []
        for ci in range(len(plan[1])):
            row = self._row(request, plan, done, ci)
            sent = 0
            for frames in self._decode_frames([row]):
                new = frames[0][:, sent:]
                sent += new.shape[1]
                need = c.first_chunk_frames if dec.emitted == 0 else c.stream_chunk_frames
                out = dec.push(new, min_new=need)
                if len(out):
                    yield out
            done.append(row.watch.end(frames[0]))
            dec.truncate(dec.frames - sent + done[-1].shape[1])   # a trimmed tail not yet played goes
            if stop_reasons is not None:
                stop_reasons.append(row.watch.reason)
        tail = dec.flush()
        if len(tail):
            yield tail

    def decode(self, codes: Tensor) -> np.ndarray:
        """codes [K, F] -> float32 audio [F * hop]."""
        if codes.shape[1] == 0:
            return np.zeros(0, np.float32)
        return self.codec.decode(codes[None].to(self.device))[0, 0].float().cpu().numpy()

    def _plan(self, req: Request) -> tuple[list[Reference], list[str]]:
        if not req.text or not req.text.strip():
            raise RequestError("input text is empty")
        chunks = split_text(req.text, self.cfg.chunk_words)
        if not chunks:
            raise RequestError("input text has nothing to speak")
        return self.references(req), chunks

    def _row(self, req: Request, plan, done: list[Tensor], c: int) -> Row:
        refs, chunks = plan
        k = self.cfg.context_chunks
        history = list(zip(chunks[:c], done))[max(0, c - k):] if k else []
        ids, codes, amask = self.prompt(chunks[c], refs, history, req.scene)
        cfg = self._sampling(req, c)
        watch = StopWatch(req.stops or self.stops, chunks[c], self.codec.frame_rate, cfg.max_frames, self.codec.hop,
                          self.decode)
        return Row(ids, codes, amask, cfg, torch.Generator().manual_seed(cfg.seed), watch)

    # ---- decoding ----------------------------------------------------------------------
    @torch.no_grad()
    def generate_codes(self, rows: list[Row], progress=None, use_cache: bool = True) -> list[Tensor]:
        """Decode each row to the end of its stream (or its StopWatch's); returns codes [K, F] per row,
        a guarded tail trimmed (the row's watch.reason says why it ended)."""
        last = None
        for last in self._decode_frames(rows, use_cache):
            if progress:
                progress(1)
        return [r.watch.end(c) for r, c in zip(rows, last)]

    def _cache(self, batch: int, need: int) -> DecodeSteps:
        """The decode steps on a reset KV cache of the smallest bucket that holds `need` slots."""
        fit = [b for b in sorted(self.cfg.buckets) if b >= need]
        if not fit:
            raise RequestError(f"prompt + generation need {need} positions, more than the largest KV-cache "
                               f"bucket ({max(self.cfg.buckets)}): shorten the text or the reference")
        key = (batch, fit[0])
        if key not in self._caches:
            if len(self._caches) >= 2:   # keep memory bounded: the two most recent shapes
                self._caches.pop(next(iter(self._caches)))
            packs = PackedLinears.for_decode(self.model, batch) if self.cfg.packed_gemm else None
            self._caches[key] = DecodeSteps(self.model, self.model.allocate_cache(batch, fit[0]), self._capture(),
                                            packs)
        steps = self._caches[key]
        steps.reset()
        return steps

    def _capture(self):
        """How a new cache's decode steps are captured: CUDA graphs on CUDA unless
        EngineConfig.cuda_graphs is off; None (eager) elsewhere."""
        return cuda_capture() if self.cfg.cuda_graphs and self.device.type == "cuda" else None

    def _attend(self, n: int, cache: KVCache) -> int:
        """Slots attention reads when slots 0..n-1 may be written: n rounded up to attend_step."""
        step = self.cfg.attend_step
        return min(cache.max_len, -(-n // step) * step)

    def _allowed(self, j: int, eos_frame: float, max_frames: int) -> Tensor:
        """[K, A] bool: what codebook k may hold at stream position j (its frame is j - k); one
        tensor per pattern, made once (a step asks for one per row; read only)."""
        # per codebook: 0 BOS only (before the stream), 1 EOS only (past its end), 2 any code or
        # EOS, 3 any code (EOS needs at least one real frame before it)
        key = tuple(0 if f <= 0 else 1 if f >= eos_frame or f > max_frames else 2 if f >= 2 else 3
                    for f in range(j, j - self.K, -1))
        allowed = self._allowed_masks.get(key)
        if allowed is None:
            allowed = torch.zeros(self.K, self.model.cfg.audio_vocab, dtype=torch.bool)
            for k, state in enumerate(key):
                if state == 0:
                    allowed[k, self.bos] = True
                elif state == 1:
                    allowed[k, self.eos] = True
                else:
                    allowed[k, :self.bos] = True
                    allowed[k, self.eos] = state == 2
            self._allowed_masks[key] = allowed
        return allowed

    def _decode_frames(self, rows: list[Row], use_cache: bool = True) -> Iterator[list[Tensor]]:
        """Yields, after every decode step, each row's code frames complete so far ([K, F_b])."""
        B, K, dev = len(rows), self.K, self.device
        P = max(len(r.ids) for r in rows)
        max_frames = max(r.watch.limit for r in rows)
        if not use_cache and any(len(r.ids) != P for r in rows):
            raise ValueError("recomputation without a cache needs prompts of equal length")
        ids = torch.zeros(B, P, dtype=torch.long)
        codes = torch.zeros(B, P, K, dtype=torch.long)
        amask = torch.zeros(B, P, dtype=torch.bool)
        tmask = torch.zeros(B, P, dtype=torch.bool)
        for b, r in enumerate(rows):              # left padding: every row ends at slot P-1
            n = len(r.ids)
            ids[b, P - n:], codes[b, P - n:], amask[b, P - n:], tmask[b, P - n:] = r.ids, r.codes, r.amask, True
        ids, codes, amask, tmask = ids.to(dev), codes.to(dev), amask.to(dev), tmask.to(dev)
        L = max_frames + K + 1                     # stream positions incl. the BOS frame
        stream = torch.full((B, K, L), self.eos, dtype=torch.long)
        stream[:, :, 0] = self.bos
        eos_frame = [math.inf] * B
        done = [False] * B

        if use_cache:
            steps = self._cache(B, P + L)
            cache = steps.cache
            for s in range(0, P, self.cfg.prefill_chunk):
                e = min(P, s + self.cfg.prefill_chunk)
                out = self.model(ids[:, s:e], codes[:, s:e], amask[:, s:e], cache=cache,
                                 positions=torch.arange(s, e, device=dev), token_mask=tmask[:, s:e],
                                 last_only=True, attend=self._attend(e, cache), text_head=False)
        else:
            out = self.model(ids, codes, amask, last_only=True)
        audio_logits = out.audio_logits
        j = 0
        while not all(done):
            j += 1
            logits = audio_logits[:, -1].float().cpu()                               # [B, K, A]
            frame = torch.full((B, K), self.eos, dtype=torch.long)
            complete: list[Tensor | None] = [None] * B   # a running row's frames, made once for its watch and the yield
            for b, r in enumerate(rows):
                if done[b]:
                    continue
                allowed = self._allowed(j, eos_frame[b], r.watch.limit)
                c = sample_frame(logits[b], r.cfg, stream[b, :, 1:j], r.gen, allowed)
                f = j - torch.arange(K)                                              # frame per codebook
                if (c == self.eos).any():
                    eos_frame[b] = min(eos_frame[b], int(f[c == self.eos].min()))
                c = torch.where(f >= eos_frame[b], self.eos, c)   # EOS spreads to every later frame
                frame[b] = c
                stream[b, :, j] = c
                done[b] = j >= eos_frame[b] + K - 1
                if done[b]:
                    continue
                complete[b] = self._complete(stream[b], j, eos_frame[b])
                cut = r.watch.update(complete[b])
                if cut is not None:   # a guard ended the row: its stream ends after frame `cut`
                    eos_frame[b], done[b], complete[b] = cut + 1, True, None
            yield [c if c is not None else self._complete(stream[b], j, eos_frame[b], done[b])
                   for b, c in enumerate(complete)]
            if all(done):
                break
            if use_cache:
                audio_logits = steps(frame[:, None], P - 1 + j, self._attend(P + j, cache))
            else:
                x_ids = torch.full((B, 1), self.placeholder, dtype=torch.long, device=dev)
                x_codes, x_mask = frame[:, None].to(dev), torch.ones(B, 1, dtype=torch.bool, device=dev)
                ids, codes, amask = torch.cat([ids, x_ids], 1), torch.cat([codes, x_codes], 1), \
                    torch.cat([amask, x_mask], 1)
                audio_logits = self.model(ids, codes, amask, last_only=True).audio_logits

    def _complete(self, stream: Tensor, j: int, eos_frame: float, done: bool = False) -> Tensor:
        """Code frames [K, F] whose every codebook is known after position j (delay reverted)."""
        if done:                                              # finished: the whole stream
            end = int(eos_frame) + self.K  # a row finished earlier in the batch: stop at its own end
            return strip_stream(stream[:, :end], self.bos, self.eos)
        n = min(j - self.K + 1, int(min(eos_frame, 1e9)) - 1)   # frames 1..n are complete
        if n <= 0:
            return stream.new_zeros(self.K, 0)
        return torch.stack([stream[k, 1 + k:1 + k + n] for k in range(self.K)])


def engine_from_config(cfg) -> Engine:
    """The engine the CLI and the server build from configs/inference/default.yaml keys."""
    from omegaconf import OmegaConf

    if cfg.threads:
        torch.set_num_threads(int(cfg.threads))
    device = ("cuda" if torch.cuda.is_available() else "cpu") if cfg.device == "auto" else cfg.device
    dtype = None if cfg.dtype == "auto" else getattr(torch, cfg.dtype)
    ec = OmegaConf.to_container(cfg.engine, resolve=True)
    ec["buckets"] = tuple(ec["buckets"])
    return Engine.from_pretrained(cfg.model, cfg.tokenizer, device, dtype, quantize=cfg.quantize, cfg=EngineConfig(**ec),
                                  sampling=SamplingConfig(**OmegaConf.to_container(cfg.sampling, resolve=True)),
                                  voices=VoiceLibrary([cfg.voices_dir, Path(cfg.model) / "voices"]),
                                  stops=StopRules(**OmegaConf.to_container(cfg.stops, resolve=True)))
