"""What a caller asks the engine for (Request) and gets back (Result), and the client's fault
(RequestError): shared by the engine, the reference lookup, the CLI, the batcher and the server."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from torch import Tensor

from higgs_train.llm.stops import StopRules, overall_reason
from inference.sampling import SamplingConfig


class RequestError(ValueError):
    """A request the engine cannot serve as asked (too long, bad reference): the client's fault."""


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
