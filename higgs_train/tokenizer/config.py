"""The tokenizer's config: one dataclass, stored in checkpoints and in export/config.json.

Every size has the released topology (docs/model.md, "Audio tokenizer") and the interface the LLM depends on
(24 kHz, hop 960 = 25 frames/s, 8 codebooks x 1024 codes); sizes differ only in widths:

    channels          DAC encoder width after its first conv, doubling at each stride (-> 32x)
    decoder_channels  DAC decoder width after its first conv, halving at each stride (-> 1/32)
    latent_dim        acoustic latent D (the release: 256)
    codebook_dim      each codebook's space (the release: 64; project_in/out from D + semantic)
    the semantic width is the teacher's hidden size (the release: HuBERT-base, 768)
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
    channels: int = 64             # release: 64 -> 2048 at the top of the encoder
    decoder_channels: int = 1024   # release: 1024 -> 32 at the output of the decoder
    latent_dim: int = 256
    codebook_dim: int = 64
    # Semantic teacher (frozen HuBERT):
    #   teacher: a local HF directory (config.json + weights), read when the model is built
    #            (it wins over teacher_config, which then becomes the directory's config);
    #   teacher_config alone: an HF config dict: a random teacher, seeded, saved in the export.
    # An export always carries teacher_config and the teacher's weights (teacher = None),
    # because encoding needs the teacher: the codes are computed from the fused latent.
    teacher: str | None = None
    teacher_config: dict | None = None
    ema_decay: float = 0.99
    dead_code_threshold: float = 0.05  # restart codes whose EMA usage is below this fraction of the mean
    quantizer_dropout: float = 0.5    # fraction of a batch trained with a random number of codebooks
    kmeans_frames: int = 1024         # frames gathered over steps before the codebooks' k-means init (>= codes)
    # Interface constants: fixed for every size (the LLM depends on them).
    sample_rate: int = SAMPLE_RATE
    strides: tuple = STRIDES
    n_codebooks: int = N_CODEBOOKS
    codebook_size: int = CODEBOOK_SIZE

    def __post_init__(self):
        if isinstance(self.teacher, str) and self.teacher.lower() in ("", "none", "null"):
            self.teacher = None
        if self.teacher is None and self.teacher_config is None:
            raise ValueError("tokenizer config: the semantic teacher is part of the topology: set "
                             "teacher=DIR (a local HuBERT) or teacher_config (an HF HuBERT config dict)")
        if self.teacher_config is not None:
            self.teacher_config = dict(self.teacher_config)
        self.strides = tuple(self.strides)
        if math.prod(self.strides) != 960 or self.sample_rate != SAMPLE_RATE:
            raise ValueError("every tokenizer size keeps 24 kHz and hop 960 (25 frames/s)")
        if self.n_codebooks != N_CODEBOOKS or self.codebook_size != CODEBOOK_SIZE:
            raise ValueError("every tokenizer size keeps 8 codebooks x 1024 codes")
        if self.decoder_channels % 2 ** len(self.strides):
            raise ValueError(f"decoder_channels={self.decoder_channels}: must halve {len(self.strides)} times "
                             f"(a multiple of {2 ** len(self.strides)})")

    @property
    def hop(self) -> int:
        return math.prod(self.strides)

    @property
    def frame_rate(self) -> float:
        return self.sample_rate / self.hop

    @property
    def bitrate(self) -> float:
        return self.n_codebooks * math.log2(self.codebook_size) * self.frame_rate

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
