"""Higgs TTS 3 (Boson AI's release after Higgs Audio v2): a Qwen3 LLM over the same audio codes.

    config.py       Tts3Config: the sizes (configs/model/llm/tts3_tiny.yaml, tts3_full.yaml)
    model.py        HiggsTTS3Model: DualFFNModel's call surface on Qwen3 blocks and a fused audio table
    layouts.py      our layout and the release's: tensor names, config.json both ways, detection
    checkpoints.py  load (dtype / device / quantize) and save, in either layout
    prompt.py       zero-shot and cloning prompts, training samples and which positions carry a loss
    delay_state.py  generation: the release's rule for a stream's start and end
and here FAMILY, the registry's entry (higgs_train/families).

Generation rule: ReleaseDelayState (delay_state.py), the delay pattern's DelayState
(higgs_train/llm/delay_state.py) under the release's sampler's rule (sglang-omni sampler.step):
its position 0, the all-BOS frame v2 feeds, is here the prompt's last token <|audio|>; codebooks
c > r hold BOS at row r; codebook 0's end-of-stream inside the delay window is ignored, afterwards
it ends the stream; the one difference kept is said in delay_state.py (tests/test_tts3_generation.py
measures it).
"""
from __future__ import annotations

from torch import nn

from higgs_train.families import Family
from higgs_train.families.higgs_tts3.checkpoints import convert, load, save
from higgs_train.families.higgs_tts3.config import Tts3Config
from higgs_train.families.higgs_tts3.delay_state import ReleaseDelayState
from higgs_train.families.higgs_tts3.layouts import LAYOUTS, layout_name, read_config
from higgs_train.families.higgs_tts3.model import HiggsTTS3Model
from higgs_train.families.higgs_tts3.prompt import Tts3Prompts, load_text_tokenizer
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
    delay_state=ReleaseDelayState.for_model,   # the release's stop rule (delay_state.py)
    decode_linears=decode_linears,
    convert=convert,
    # every layer serves text and audio alike: LoRA adapts all its linears
    lora_targets=("attn.q_proj", "attn.k_proj", "attn.v_proj", "attn.o_proj",
                  "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"),
)
