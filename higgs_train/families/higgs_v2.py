"""The DualFFN family (Higgs Audio v2): the first entry of the family registry (higgs_train/families).

Its code lives in higgs_train/llm/ (model.py, layouts.py, checkpoints.py, prompt.py, delay.py);
this module only says which function answers which hook. Layouts: ours (native), the transformers
port's (hf) and the original release's (original), all read and written. Prompts: the release's
chat format (higgs_train/llm/prompt.py), generation ending with <|audio_out_bos|> and the fed
all-BOS frame.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from higgs_train.families import Family, Reference
from higgs_train.llm.delay_state import DelayState
from higgs_train.llm.layouts import LAYOUTS, MAX_SHARD_BYTES, layout_name, read_config
from higgs_train.llm.config import DualFFNConfig
from higgs_train.llm.model import DualFFNModel
from higgs_train.llm.quantize import is_quantized
from higgs_train.llm.prompt import Message, clone_sample, dialogue_sample, encode_chat, system_message, tts_sample
from higgs_train.llm.text_tokenizer import load_text_tokenizer, special_token_ids


class ChatPrompts:
    """The release's chat-format prompts for one text tokenizer and codebook shape."""

    kinds = ("tts", "clone", "dialogue")

    def __init__(self, tok, num_codebooks: int, codebook_size: int, special_tokens: dict[str, int] | None = None):
        self.tok, self.K, self.bos = tok, num_codebooks, codebook_size   # stream BOS = codebook_size
        self.audio_token = tok.convert_tokens_to_ids("<|AUDIO_OUT|>")
        if special_tokens:   # ids a release-layout config states must be the tokenizer's
            have = special_token_ids(tok)
            bad = {k: (v, have.get(k)) for k, v in special_tokens.items() if have.get(k) != v}
            if bad:
                raise ValueError(f"text tokenizer ids differ from the model config's special_tokens "
                                 f"(config, tokenizer): {bad}")
        self.kw = dict(num_codebooks=num_codebooks, codebook_size=codebook_size)

    @classmethod
    def for_config(cls, tok, cfg: DualFFNConfig) -> "ChatPrompts":
        return cls(tok, cfg.num_codebooks, cfg.codebook_size, cfg.special_tokens)

    def generation(self, text: str, refs: list[Reference], history: list[tuple[str, Tensor]],
                   scene: str | None = None) -> tuple[Tensor, Tensor, Tensor]:
        """References and earlier chunks as user/assistant turns, then the text's user turn."""
        msgs = [system_message(scene)]
        for t, c in [(r.text, r.codes) for r in refs] + list(history):
            msgs += [Message("user", t), Message("assistant", codes=np.asarray(c))]
        msgs.append(Message("user", text))
        s = encode_chat(self.tok, msgs, generation=True, **self.kw)
        # the release's prompt ends with <|audio_out_bos|>; as the original engine does, the all-BOS
        # frame is fed after it without a model step (it is never predicted)
        ids = torch.cat([torch.from_numpy(s.input_ids), torch.tensor([self.audio_token])])
        codes = torch.cat([torch.from_numpy(s.audio_codes), torch.full((1, self.K), self.bos)])
        amask = torch.cat([torch.from_numpy(s.audio_mask), torch.tensor([True])])
        return ids, codes, amask

    def tts(self, text, codes, scene=None):
        return tts_sample(self.tok, text, codes, scene, **self.kw)

    def clone(self, ref_text, ref_codes, text, codes, scene=None):
        return clone_sample(self.tok, ref_text, ref_codes, text, codes, scene, **self.kw)

    def dialogue(self, turns, scene=None):
        return dialogue_sample(self.tok, turns, scene, **self.kw)


def decode_linears(model: DualFFNModel) -> list[torch.nn.Linear]:
    """The float linears an audio-only decode step runs, in order (inference/packed_gemm.py packs
    them): attention and the audio FFN of dual layers, the audio head. 8-bit and 4-bit ones
    (higgs_train.llm.quantize: subclasses of nn.Linear holding int8/uint8 weights) are left out:
    they keep their own kernels, and a quantized model packs only its audio head."""
    out: list[torch.nn.Linear] = []
    for block in model.layers:
        a, mlp = block.attn, block.audio_mlp if block.dual else block.mlp
        out += [a.q_proj, a.k_proj, a.v_proj, a.o_proj, mlp.gate_proj, mlp.up_proj, mlp.down_proj]
    return [m for m in out + [model.audio_head] if not is_quantized(m)]


def load(model_dir, dtype=None, device=None, quantize: str = "none") -> tuple[DualFFNModel, str]:
    from higgs_train.llm.checkpoints import load_llm

    return load_llm(model_dir, dtype=dtype, device=device, quantize=quantize)


def convert(src, dst, to: str) -> str:
    from higgs_train.llm.checkpoints import convert_llm

    return convert_llm(src, dst, to)


def save(model: DualFFNModel, out_dir, layout: str = "native", tokenizer_dir=None, state_dict=None,
         max_shard_bytes: int | None = MAX_SHARD_BYTES) -> None:
    from higgs_train.llm.checkpoints import save_llm

    save_llm(model, out_dir, layout, tokenizer_dir=tokenizer_dir, state_dict=state_dict,
             max_shard_bytes=max_shard_bytes)


FAMILY = Family(
    name="higgs_v2",
    config_class=DualFFNConfig,
    layouts=LAYOUTS,
    read_config=read_config,
    model_class=DualFFNModel,
    build=DualFFNModel.build,
    load=load,
    save=save,
    layout_name=layout_name,
    text_tokenizer=load_text_tokenizer,
    prompts=ChatPrompts.for_config,
    delay_state=DelayState.for_model,
    decode_linears=decode_linears,
    convert=convert,
    lora_targets=("attn.q_proj", "attn.k_proj", "attn.v_proj", "attn.o_proj",
                  "audio_mlp.gate_proj", "audio_mlp.up_proj", "audio_mlp.down_proj"),
)
