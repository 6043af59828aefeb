"""The model-family seam (higgs_train/families): config.json picks the family, the registry imports
no model code until asked, and the DualFFN family's hooks answer with the llm package's code."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from higgs_train.families import FAMILIES, Reference, detect, family_for_model, family_of, get
from higgs_train.llm.config import DualFFNConfig
from higgs_train.llm.model import DualFFNModel
from higgs_train.llm.prompt import clone_sample, dialogue_sample, tts_sample
from higgs_train.testing.tiny_exports import TINY_LLM, tiny_text_tokenizer


def test_importing_the_registry_imports_no_model():
    code = ("import sys, higgs_train.families as f; "
            "print(sorted(m for m in sys.modules if m.startswith('higgs_train.') and m != 'higgs_train.families'))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


@pytest.mark.parametrize("config", [{"model_type": "higgs_audio"}, {"model_type": "higgs_audio_v2"},
                                    {"architecture": "DualFFNModel", "hidden_size": 128}])
def test_each_v2_layout_selects_the_dualffn_family(tmp_path, config):
    (tmp_path / "config.json").write_text(json.dumps(config))
    assert detect(config) == "higgs_v2"
    assert family_of(tmp_path).name == "higgs_v2" and family_of(tmp_path) is get("higgs_v2")


def test_an_unknown_model_type_names_the_path_and_the_known_ones(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "qwen3"}))
    with pytest.raises(ValueError) as e:
        family_of(tmp_path)
    msg = str(e.value)
    assert str(tmp_path / "config.json") in msg and "'qwen3'" in msg
    assert all(t in msg for entry in FAMILIES.values() for t in entry.model_types)
    with pytest.raises(FileNotFoundError, match="config.json is missing"):
        family_of(tmp_path / "nothing")
    with pytest.raises(ValueError, match="unknown model family 'nope'"):
        get("nope")


def test_a_built_model_finds_its_family_and_a_foreign_one_does_not():
    family = get("higgs_v2")
    model = family.build(DualFFNConfig(vocab_size=64, **TINY_LLM))
    assert isinstance(model, DualFFNModel) and family_for_model(model) is family
    assert all(p.is_meta for p in model.parameters())                  # built on the meta device
    foreign = torch.nn.Linear(2, 2)
    foreign.cfg = object()
    with pytest.raises(ValueError, match="object config belongs to no registered model family"):
        family_for_model(foreign)


def test_the_v2_prompt_encoder_is_the_chat_format(tmp_path):
    tok = tiny_text_tokenizer(tmp_path / "tok")
    cfg = DualFFNConfig(vocab_size=len(tok), **TINY_LLM)
    prompts = get("higgs_v2").prompts(tok, cfg)
    g = torch.Generator().manual_seed(0)
    a, b = (torch.randint(0, 1024, (8, n), generator=g) for n in (5, 7))
    for ours, theirs in ((prompts.tts("hello", a.numpy()), tts_sample(tok, "hello", a.numpy())),
                         (prompts.clone("ref", a.numpy(), "hi", b.numpy()),
                          clone_sample(tok, "ref", a.numpy(), "hi", b.numpy())),
                         (prompts.dialogue([("x", "a", a.numpy()), ("y", "b", b.numpy())]),
                          dialogue_sample(tok, [("x", "a", a.numpy()), ("y", "b", b.numpy())]))):
        for f in ("input_ids", "audio_codes", "audio_mask", "audio_labels", "text_labels"):
            assert np.array_equal(getattr(ours, f), getattr(theirs, f)), f
    ids, codes, amask = prompts.generation("Hi.", [Reference("ref", a)], [("before", b)])
    assert ids[-1] == prompts.audio_token == tok.convert_tokens_to_ids("<|AUDIO_OUT|>")
    assert amask[-1] and (codes[-1] == cfg.audio_bos).all()               # the fed all-BOS frame
    # the reference's and the earlier chunk's streams: (5 + 2 + 7) + (7 + 2 + 7) audio positions, + the BOS frame
    assert int(amask.sum()) == 14 + 16 + 1
    state = get("higgs_v2").delay_state(cfg, 30)
    assert state.stream.shape == (8, 30 + 8 + 1) and not state.done
