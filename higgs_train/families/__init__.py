"""Model families: what a model generation brings (config, model, layouts, prompts, generation rule)
and what the engine, the training data and the fine-tuning recipe ask of it, written down once.

A family is one module (or folder) under higgs_train/families/ exposing `FAMILY`, a Family, and one
entry in FAMILIES below (its module and the config.json markers that select it). Everything else is
shared: the audio tokenizer, the shards, the training loop, the fine-tuning recipe, the engine's
decode loop and the server.

    family = family_of(model_dir)            # from config.json; ValueError naming the known markers
    model, layout = family.load(model_dir, dtype, device, quantize)
    family.save(model, out_dir, layout, tokenizer_dir=...)
    family.convert(src_dir, dst_dir, to)     # python -m higgs_train.convert, streamed
    prompts = family.prompts(text_tokenizer, model.cfg)     # a PromptEncoder
    state = family.delay_state(model.cfg, max_frames)       # one generated stream (a DelayState)
    family = family_for_model(model)         # of a model already built (Engine(model, ...)); family_for_config
    family, cfg = size_config(entry)         # an LLM size (configs/model/llm/*.yaml: its `family` key)

Families are imported only when asked for, so importing this registry imports no model code. The
README's "Adding a model family" says how a new one plugs in.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Protocol

if TYPE_CHECKING:   # annotations only: importing the registry imports neither torch nor a model
    from torch import Tensor


# ---------------------------------------------------------------- what a model is to its callers

class AudioConfig(Protocol):
    """The config fields the engine, the data and the delay state read (the model's `cfg`)."""
    num_codebooks: int
    codebook_size: int       # real codes per codebook; stream BOS = codebook_size, EOS = codebook_size + 1
    audio_bos: int
    audio_eos: int
    audio_vocab: int         # codebook_size + 2


class AudioOutput(Protocol):
    audio_logits: Tensor             # [B, T, K, audio_vocab] (T = 1 with last_only)
    text_logits: Tensor | None       # [B, T, V], None with text_head=False


class Cache(Protocol):
    """A static KV cache (higgs_train.llm.model.KVCache): the engine reads its length and resets it
    per generation; inference/decode_graphs.py reads the batch and device of `k`."""
    k: Tensor            # [layers, B, kv_heads, max_len, head_dim]
    max_len: int
    def reset(self) -> None: ...


class AudioLM(Protocol):
    """What the engine (inference/engine.py, inference/decode_graphs.py) and the trainer
    (higgs_train/llm/lit.py) call on a model: a plain nn.Module with a `cfg`."""
    cfg: AudioConfig

    def __call__(self, input_ids: Tensor, audio_codes: Tensor | None = None, audio_mask: Tensor | None = None,
                 cache: Cache | None = None, positions: Tensor | None = None, token_mask: Tensor | None = None,
                 last_only: bool = False, attend: int | None = None, audio_only: bool = False,
                 text_head: bool = True) -> AudioOutput:
        """input_ids [B, T]; audio_codes [B, T, K] read where audio_mask [B, T] is True; with a
        cache: positions [T] are the slots written and the RoPE positions, token_mask [B, T] False
        at left padding, attend = the slots attention reads; audio_only: every position is audio."""

    def allocate_cache(self, batch: int, max_len: int) -> Cache: ...

    def loss(self, input_ids: Tensor, audio_codes: Tensor, audio_mask: Tensor, audio_labels: Tensor,
             text_labels: Tensor | None = None, text_loss_weight: float = 0.0,
             codebook_reduction: str = "mean") -> dict:
        """{"loss", "audio_loss", "codebook_loss", "code_acc", "codebook_acc"[, "text_loss"]} on
        labels already shifted (the label at t is the target of position t's prediction)."""


# ---------------------------------------------------------------- prompts and the delay state

@dataclass
class Reference:
    """A voice prompt: a transcript and its codes [K, F]."""
    text: str
    codes: Tensor


class Sample(Protocol):
    """One training sequence (higgs_train.llm.prompt.Sample): numpy arrays of one length T."""
    input_ids: Any       # [T] int64
    audio_codes: Any     # [T, K] int64
    audio_mask: Any      # [T] bool
    audio_labels: Any    # [T, K] int64, -100 where unsupervised
    text_labels: Any     # [T] int64, -100 where unsupervised
    def __len__(self) -> int: ...


class PromptEncoder(Protocol):
    """A family's prompt layout, for generation (the engine) and for training samples
    (higgs_train.llm.data.SampleMaker). Codes are undelayed [K, F] arrays or tensors."""

    audio_token: int   # the input id at a generated audio position (what the recomputing path feeds)
    kinds: tuple[str, ...]   # the training samples it lays out, of "tts", "clone", "dialogue" (data.kinds)

    def generation(self, text: str, refs: list[Reference], history: list[tuple[str, Tensor]],
                   scene: str | None = None) -> tuple[Tensor, Tensor, Tensor]:
        """(ids [P], codes [P, K], audio_mask [P]) of a prompt that speaks `text` in the voice of
        `refs`, after the earlier chunks `history` [(text, codes)]; decoding starts from position
        P-1's logits (DualFFN: the fed all-BOS frame; Higgs TTS 3: <|audio|>, no frame fed)."""

    def tts(self, text: str, codes, scene: str | None = None) -> Sample: ...
    def clone(self, ref_text: str, ref_codes, text: str, codes, scene: str | None = None) -> Sample: ...
    def dialogue(self, turns: list[tuple[str, str, Any]], scene: str | None = None) -> Sample:
        """turns [(speaker, text, codes)] of one source in time order."""


class GenerationState(Protocol):
    """One generated stream (higgs_train.llm.delay_state.DelayState is the delay pattern's)."""
    done: bool
    def allowed(self) -> Tensor: ...          # [K, A] bool for the next position
    def history(self) -> Tensor: ...          # [K, H] codes drawn so far
    def push(self, codes: Tensor) -> Tensor: ...   # codes [K] -> the frame fed next
    def frames(self) -> Tensor: ...           # [K, F] complete frames
    def end(self, cut: int) -> None: ...      # a stop rule ends the stream after frame `cut`


# ---------------------------------------------------------------- a family

@dataclass(frozen=True)
class Family:
    """What a model family provides. Every callable takes and returns the family's own types."""
    name: str
    config_class: type                                   # its config dataclass (what model.cfg is)
    layouts: tuple[str, ...]                             # layouts it reads and writes ("native" first)
    read_config: Callable[[Any], tuple[Any, str]]        # model_dir -> (cfg, layout)
    model_class: type                                    # model_class(cfg): a fresh, randomly initialised model
    build: Callable[[Any], AudioLM]                      # cfg -> model, parameters on the meta device
    load: Callable[..., tuple[AudioLM, str]]             # (model_dir, dtype, device, quantize) -> (model, layout)
    save: Callable[..., None]                            # (model, out_dir, layout, tokenizer_dir=, state_dict=,
                                                         #  max_shard_bytes=: None = one file)
    layout_name: Callable[[str, str], Any]               # (native parameter name, layout) -> its name there
    text_tokenizer: Callable[[Any], Any]                 # model_dir -> its text tokenizer
    prompts: Callable[[Any, Any], PromptEncoder]         # (text tokenizer, cfg) -> its prompt encoder
    delay_state: Callable[[Any, int], GenerationState]   # (cfg, max_frames) -> one stream's state
    decode_linears: Callable[[Any], list]                # model -> the float nn.Linears an audio-only decode
                                                         # step runs, in order (the CPU packed decode's)
    convert: Callable[..., str]                          # (src, dst, to) -> source layout: any layout it
                                                         # reads to `to`, one tensor at a time
    lora_targets: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj")   # linears LoRA adapts by default


@dataclass(frozen=True)
class Entry:
    """A registry entry: where the family lives and what in config.json selects it."""
    module: str                          # defines FAMILY
    model_types: tuple[str, ...]         # config.json "model_type" values (ours and the releases')
    architectures: tuple[str, ...] = ()  # config.json "architecture" values (our native layout)


FAMILIES: dict[str, Entry] = {
    "higgs_v2": Entry("higgs_train.families.higgs_v2", model_types=("higgs_audio", "higgs_audio_v2"),
                      architectures=("DualFFNModel",)),
    "higgs_tts3": Entry("higgs_train.families.higgs_tts3", model_types=("higgs_multimodal_qwen3",),
                        architectures=("HiggsTTS3Model",)),
}


def get(name: str) -> Family:
    """The family registered as `name` (its module imported now)."""
    if name not in FAMILIES:
        raise ValueError(f"unknown model family {name!r}: known {', '.join(FAMILIES)}")
    family = importlib.import_module(FAMILIES[name].module).FAMILY
    assert family.name == name, (family.name, name)
    return family


def detect(config: dict, where: str = "config.json") -> str:
    """The family name a config.json object selects; ValueError listing what would select one."""
    model_type, arch = config.get("model_type"), config.get("architecture")
    for name, e in FAMILIES.items():
        if model_type in e.model_types or (arch is not None and arch in e.architectures):
            return name
    known = "; ".join(f"{n}: model_type {', '.join(e.model_types)}"
                      + (f" or architecture {', '.join(e.architectures)}" if e.architectures else "")
                      for n, e in FAMILIES.items())
    raise ValueError(f"{where}: model_type={model_type!r}, architecture={arch!r} is no known model family ({known})")


def family_of(model_dir) -> Family:
    """The family of an LLM directory, from its config.json."""
    from higgs_train.layout import config_json

    return get(detect(config_json(model_dir), str(Path(model_dir) / "config.json")))


def family_for_config(cfg) -> Family:
    """The family whose config class `cfg` is an instance of (families imported in registry order)."""
    for name in FAMILIES:
        family = get(name)
        if isinstance(cfg, family.config_class):
            return family
    raise ValueError(f"a {type(cfg).__name__} config belongs to no registered model family ({', '.join(FAMILIES)})")


def size_config(entry: dict) -> tuple[Family, Any]:
    """(family, config) of an LLM size: a configs/model/llm/*.yaml entry (or the `model_cfg` a
    training checkpoint carries), whose `family` key names the registered family and whose other
    keys are that family's config class's. An entry without one is DualFFN's (checkpoints written
    before sizes named their family)."""
    entry = dict(entry)
    family = get(entry.pop("family", None) or "higgs_v2")
    return family, family.config_class.from_dict(entry)


def family_for_model(model) -> Family:
    """The family of a model already built (its `cfg`)."""
    return family_for_config(model.cfg)
