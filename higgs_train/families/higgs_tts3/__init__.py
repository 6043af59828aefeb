"""Higgs TTS 3 (Boson AI's release after Higgs Audio v2): a Qwen3 LLM over the same audio codes.

    config.py       Tts3Config: the sizes (configs/model/llm/tts3_tiny.yaml, tts3_full.yaml)
    model.py        HiggsTTS3Model: DualFFNModel's call surface on Qwen3 blocks and a fused audio table
    layouts.py      our layout and the release's: tensor names, config.json both ways, detection
    checkpoints.py  load (dtype / device / quantize) and save, in either layout
    prompt.py       zero-shot and cloning prompts, training samples and which positions carry a loss
"""
from __future__ import annotations

from torch import nn

from higgs_train.families import Family
from higgs_train.families.higgs_tts3.checkpoints import load, save
from higgs_train.families.higgs_tts3.config import Tts3Config
from higgs_train.families.higgs_tts3.layouts import LAYOUTS, layout_name, read_config
from higgs_train.families.higgs_tts3.model import HiggsTTS3Model
from higgs_train.families.higgs_tts3.prompt import Tts3Prompts, load_text_tokenizer
from higgs_train.llm.delay_state import DelayState
from higgs_train.llm.quantize import is_quantized


def decode_linears(model: HiggsTTS3Model) -> list[nn.Linear]:
    """The float linears a decode step runs, in order (inference/packed_gemm.py packs them): every
    layer's attention and MLP (no layer is DualFFN), then the audio head (the fused table, tied)."""
    out: list[nn.Linear] = []
    for block in model.layers:
        a, mlp = block.attn, block.mlp
        out += [a.q_proj, a.k_proj, a.v_proj, a.o_proj, mlp.gate_proj, mlp.up_proj, mlp.down_proj]
    return [m for m in out + [model.audio_head] if not is_quantized(m)]


FAMILY = Family(
    name="higgs_tts3",
    config_class=Tts3Config,
    layouts=LAYOUTS,
    read_config=read_config,
    model_class=HiggsTTS3Model,
    build=HiggsTTS3Model.build,
    load=load,
    save=save,
    layout_name=layout_name,
    text_tokenizer=load_text_tokenizer,
    prompts=Tts3Prompts,
    delay_state=DelayState.for_model,
    decode_linears=decode_linears,
    # every layer serves text and audio alike: LoRA adapts all its linears
    lora_targets=("attn.q_proj", "attn.k_proj", "attn.v_proj", "attn.o_proj",
                  "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"),
)
