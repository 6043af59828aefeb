"""The generation engine: load the exported LLM and audio tokenizer once, then speak many times.

    engine = Engine.from_pretrained(llm_dir, tokenizer_dir, device="cuda", dtype=torch.bfloat16)
    [result] = engine.generate([Request("Hello there.", voice="alice")])   # result.audio at 24 kHz
    for chunk in engine.stream(Request("Hello there.")): play(chunk)

The model's family (higgs_train/families, from the LLM directory's config.json or the model's
config class) gives the prompt encoder and the delay state; this module keeps the loop and the
KV-cache buckets. plan: a request's references (inference/references.py) and text chunks
(inference/text.py); row: a chunk's prompt (ending where decoding starts: the fed all-BOS frame
for DualFFN, <|audio|> for Higgs TTS 3) and its StopWatch
(higgs_train/llm/stops.py: its frame limit, early stops and why it ended); decode_frames: rows
left-padded to one batch (token_mask) -> prefill in slices of `prefill_chunk` positions into a
static KV cache (the smallest bucket that fits) -> per step the last position's audio logits
[B, K, A] -> one delayed frame per row (sampling.sample_frame within the row's delay state,
higgs_train/llm/delay_state.py) -> fed back at slot P-1+j; a row that ends early keeps feeding EOS
frames, which no other row attends to. Steps never emit text (a text chunk is a new prompt), so
they run the model's fast paths: audio_only, text_head=False, attention over the first
EngineConfig.attend_step multiple of slots that holds the sequence; CUDA graphs per multiple on
CUDA (inference/decode_graphs.py), weights packed for the batch on CPU (inference/packed_gemm.py).
use_cache=False recomputes every position instead (inference/recompute.py, the reference).
"""
from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch
from torch import Tensor

from higgs_train.families import Family, Reference, family_for_model, family_of
from higgs_train.llm.stops import StopRules, StopWatch
from higgs_train.tokenizer import AudioTokenizer
from inference.decode_graphs import DecodeSteps, cuda_capture
from inference.packed_gemm import PackedLinears
from inference.recompute import Recompute
from inference.references import References
from inference.request import Request, RequestError, Result
from inference.sampling import SamplingConfig, sample_frame
from inference.streaming import stream_request
from inference.text import split_text
from inference.voices import VoiceLibrary

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
class Plan:
    """A request's references and the text chunks it is spoken in, one generation each."""
    refs: list[Reference]
    chunks: list[str]


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
    def __init__(self, model, audio_tokenizer: AudioTokenizer, text_tokenizer,
                 cfg: EngineConfig | None = None, sampling: SamplingConfig | None = None,
                 voices: VoiceLibrary | None = None, stops: StopRules | None = None, family: Family | None = None):
        """model: any registered family's (family None: found from the model's config class)."""
        self.model = model.eval()
        self.codec = audio_tokenizer.eval()
        self.tok = text_tokenizer
        self.cfg = cfg or EngineConfig()
        self.sampling = sampling or SamplingConfig()
        self.voices = voices or VoiceLibrary(None)
        self.stops = stops or StopRules()
        self.family = family or family_for_model(model)
        mc = model.cfg
        self.K, self.bos, self.eos = mc.num_codebooks, mc.audio_bos, mc.audio_eos
        if (self.codec.n_codebooks, self.codec.codebook_size) != (mc.num_codebooks, mc.codebook_size):
            raise ValueError(f"LLM expects {mc.num_codebooks}x{mc.codebook_size} codes, tokenizer makes "
                             f"{self.codec.n_codebooks}x{self.codec.codebook_size}")
        self.prompts = self.family.prompts(text_tokenizer, mc)   # the family's PromptEncoder
        self.refs = References(self.codec, self.voices, self.cfg.max_reference_seconds)
        self.device = next(model.parameters()).device
        self.caches: dict[tuple[int, int], DecodeSteps] = {}   # (batch, bucket) -> its cache's steps

    @classmethod
    def from_pretrained(cls, llm_dir, tokenizer_dir, device: str | torch.device = "cpu", dtype=None,
                        quantize: str = "none", **kw) -> "Engine":
        """llm_dir: an LLM directory with its text tokenizer files, of any registered family
        (higgs_train/families, from its config.json) in any layout the family reads; tokenizer_dir:
        an audio tokenizer directory (any layout), or a Higgs TTS 3 directory (llm_dir itself: the
        tokenizer its checkpoint bundles). dtype None: bf16 on CUDA, fp32 elsewhere.
        quantize: none | int8 | nf4 (the decoder layers' linears; higgs_train.llm.quantize)."""
        for name, d in (("model", llm_dir), ("tokenizer", tokenizer_dir)):
            if not Path(d).is_dir():
                raise FileNotFoundError(f"{name} export directory {d} does not exist")
        device = torch.device(device)
        if dtype is None:
            dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
        family = family_of(llm_dir)
        model, _ = family.load(llm_dir, dtype=dtype, device=device, quantize=quantize)
        codec = AudioTokenizer.from_pretrained(tokenizer_dir, device=device)
        return cls(model, codec, family.text_tokenizer(llm_dir), family=family, **kw)

    @property
    def sample_rate(self) -> int:
        return self.codec.sample_rate

    # ---- public API ----------------------------------------------------------------------
    @torch.no_grad()
    def generate(self, requests: list[Request], progress: Callable[[int], None] | None = None,
                 use_cache: bool = True) -> list[Result]:
        """Speak each request; all rows of a text-chunk index are decoded as one batch."""
        plans = [self.plan(r) for r in requests]
        outs: list[list[Tensor]] = [[] for _ in requests]
        reasons: list[list[str]] = [[] for _ in requests]
        for c in range(max(len(p.chunks) for p in plans)):
            idx = [i for i, p in enumerate(plans) if c < len(p.chunks)]
            rows = [self.row(requests[i], plans[i], c, outs[i]) for i in idx]
            for i, row, codes in zip(idx, rows, self.generate_codes(rows, progress, use_cache)):
                outs[i].append(codes)
                reasons[i].append(row.watch.reason)
        results = []
        for plan, codes, why in zip(plans, outs, reasons):
            allc = torch.cat(codes, 1)
            results.append(Result(self.decode(allc), allc, self.sample_rate, plan.chunks, why))
        return results

    @torch.no_grad()
    def stream(self, request: Request, stop_reasons: list[str] | None = None) -> Iterator[np.ndarray]:
        """Yield float32 audio pieces while generating (inference.streaming.stream_request)."""
        yield from stream_request(self, request, stop_reasons)

    def decode(self, codes: Tensor) -> np.ndarray:
        """codes [K, F] -> float32 audio [F * hop]."""
        if codes.shape[1] == 0:
            return np.zeros(0, np.float32)
        return self.codec.decode(codes[None].to(self.device))[0, 0].float().cpu().numpy()

    def plan(self, req: Request) -> Plan:
        """The request's references and text chunks; RequestError for empty text or a bad reference."""
        if not req.text or not req.text.strip():
            raise RequestError("input text is empty")
        chunks = split_text(req.text, self.cfg.chunk_words)
        if not chunks:
            raise RequestError("input text has nothing to speak")
        return Plan(self.refs.for_request(req), chunks)

    def row(self, req: Request, plan: Plan, c: int = 0, done: list[Tensor] = ()) -> Row:
        """Chunk c of a plan as a Row: its prompt after the references and up to context_chunks
        earlier chunks (`done`: their generated codes), its sampling seed and its StopWatch."""
        k = self.cfg.context_chunks
        history = list(zip(plan.chunks[:c], done))[max(0, c - k):] if k else []
        ids, codes, amask = self.prompts.generation(plan.chunks[c], plan.refs, history, req.scene)
        cfg = req.sampling or self.sampling
        if cfg.seed is None:
            cfg = cfg.replace(seed=random.randrange(2 ** 31))
        cfg = cfg.replace(seed=cfg.seed + c) if c else cfg
        watch = StopWatch(req.stops or self.stops, plan.chunks[c], self.codec.frame_rate, cfg.max_frames,
                          self.codec.hop, self.decode)
        return Row(ids, codes, amask, cfg, torch.Generator().manual_seed(cfg.seed), watch)

    # ---- decoding ----------------------------------------------------------------------
    @torch.no_grad()
    def generate_codes(self, rows: list[Row], progress=None, use_cache: bool = True) -> list[Tensor]:
        """Decode each row to the end of its stream (or its StopWatch's); returns codes [K, F] per row,
        a guarded tail trimmed (the row's watch.reason says why it ended)."""
        last = None
        for last in self.decode_frames(rows, use_cache):
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
        if key not in self.caches:
            if len(self.caches) >= 2:   # keep memory bounded: the two most recent shapes
                self.caches.pop(next(iter(self.caches)))
            packs = PackedLinears.for_decode(self.model, batch) if self.cfg.packed_gemm else None
            self.caches[key] = DecodeSteps(self.model, self.model.allocate_cache(batch, fit[0]), self.capture(),
                                           packs)
        steps = self.caches[key]
        steps.reset()
        return steps

    def capture(self):
        """How a new cache's decode steps are captured (inference.decode_graphs): CUDA graphs on
        CUDA unless EngineConfig.cuda_graphs is off; None (eager) elsewhere."""
        return cuda_capture() if self.cfg.cuda_graphs and self.device.type == "cuda" else None

    def _attend(self, n: int, max_len: int) -> int:
        """Slots attention reads when slots 0..n-1 may be written: n rounded up to attend_step."""
        step = self.cfg.attend_step
        return min(max_len, -(-n // step) * step)

    def _prefill(self, steps: DecodeSteps, ids, codes, amask, tmask) -> Tensor:
        """The prompt into the cache, `prefill_chunk` positions per forward; the last position's logits."""
        P, cache, dev = ids.shape[1], steps.cache, self.device
        for s in range(0, P, self.cfg.prefill_chunk):
            e = min(P, s + self.cfg.prefill_chunk)
            out = self.model(ids[:, s:e], codes[:, s:e], amask[:, s:e], cache=cache,
                             positions=torch.arange(s, e, device=dev), token_mask=tmask[:, s:e],
                             last_only=True, attend=self._attend(e, cache.max_len), text_head=False)
        return out.audio_logits

    def decode_frames(self, rows: list[Row], use_cache: bool = True) -> Iterator[list[Tensor]]:
        """Yields, after every decode step, each row's code frames complete so far ([K, F_b])."""
        B, K, dev = len(rows), self.K, self.device
        P = max(len(r.ids) for r in rows)
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
        states = [self.family.delay_state(self.model.cfg, r.watch.limit) for r in rows]
        if use_cache:
            steps = self._cache(B, P + max(r.watch.limit for r in rows) + K + 1)   # + the stream's positions
            audio_logits = self._prefill(steps, ids, codes, amask, tmask)
        else:
            recompute = Recompute(self.model, ids, codes, amask, self.prompts.audio_token)
            audio_logits = recompute.first()
        j = 0
        while True:
            j += 1
            logits = audio_logits[:, -1].float().cpu()                               # [B, K, A]
            frame = torch.full((B, K), self.eos, dtype=torch.long)
            complete: list[Tensor | None] = [None] * B   # a running row's frames, made once for its watch and the yield
            for b, (r, st) in enumerate(zip(rows, states)):
                if st.done:
                    continue
                frame[b] = st.push(sample_frame(logits[b], r.cfg, st.history(), r.gen, st.allowed()))
                if st.done:
                    continue
                complete[b] = st.frames()
                cut = r.watch.update(complete[b])
                if cut is not None:   # a guard ended the row: its stream ends after frame `cut`
                    st.end(cut)
                    complete[b] = None
            yield [c if c is not None else st.frames() for c, st in zip(complete, states)]
            if all(st.done for st in states):
                break
            if use_cache:
                audio_logits = steps(frame[:, None], P - 1 + j, self._attend(P + j, steps.cache.max_len))
            else:
                audio_logits = recompute(frame)


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
