"""The tokenizer's config: one dataclass, stored in checkpoints and in export/config.json.

Every size shares the interface the LLM depends on (24 kHz, hop 960 = 25 frames/s,
8 codebooks x 1024 codes); sizes differ only in channels and depth.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields

SAMPLE_RATE = 24_000
STRIDES = (8, 5, 4, 2, 3)  # product = 960 samples per frame -> 25 frames/s
N_CODEBOOKS = 8
CODEBOOK_SIZE = 1024


@dataclass
class TokenizerConfig:
    channels: int = 64             # encoder width after the first conv; doubles at each stride
    max_channels: int = 1024       # cap on the doubling (encoder top = decoder bottom width)
    res_units: int = 3             # dilated residual units per stride block (dilations 1, 3, 9, ...)
    latent_dim: int = 256          # acoustic latent channels at 25 Hz
    codebook_dim: int = 64
    semantic_dim: int = 256        # semantic encoder/decoder width (unused when teacher is None)
    semantic_layers: int = 2       # residual conv blocks in the semantic encoder and decoder
    # Teacher: a local HF directory at training time. The export embeds the teacher's
    # HF config here (teacher_config) and its weights in model.safetensors, because
    # encoding needs the teacher: the codes are computed from the fused latent.
    teacher: str | None = None
    teacher_config: dict | None = None
    ema_decay: float = 0.99
    dead_code_threshold: float = 0.05  # restart codes whose EMA usage is below this fraction of the mean
    quantizer_dropout: float = 0.5    # fraction of a batch trained with a random number of codebooks
    # Interface constants: fixed for every size (the LLM depends on them).
    sample_rate: int = SAMPLE_RATE
    strides: tuple = STRIDES
    n_codebooks: int = N_CODEBOOKS
    codebook_size: int = CODEBOOK_SIZE

    def __post_init__(self):
        if isinstance(self.teacher, str) and self.teacher.lower() in ("", "none", "null"):
            self.teacher = None  # `model.teacher=none` on the command line turns the semantic path off
        self.strides = tuple(self.strides)
        if math.prod(self.strides) != 960 or self.sample_rate != SAMPLE_RATE:
            raise ValueError("every tokenizer size keeps 24 kHz and hop 960 (25 frames/s)")
        if self.n_codebooks != N_CODEBOOKS or self.codebook_size != CODEBOOK_SIZE:
            raise ValueError("every tokenizer size keeps 8 codebooks x 1024 codes")

    @property
    def hop(self) -> int:
        return math.prod(self.strides)

    @property
    def frame_rate(self) -> float:
        return self.sample_rate / self.hop

    @property
    def bitrate(self) -> float:
        return self.n_codebooks * math.log2(self.codebook_size) * self.frame_rate

    @property
    def semantic(self) -> bool:
        return self.teacher is not None or self.teacher_config is not None

    def to_dict(self) -> dict:
        d = asdict(self)
        d["strides"] = list(self.strides)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "TokenizerConfig":
        names = {f.name for f in fields(cls)}
        unknown = set(d) - names - {"_target_"}
        if unknown:
            raise ValueError(f"unknown tokenizer config keys: {sorted(unknown)}")
        return cls(**{k: v for k, v in d.items() if k in names})
