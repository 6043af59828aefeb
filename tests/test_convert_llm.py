"""LLM conversion: parity with the transformers port both ways, bit-exact round trips, partial dual
layers filled with copies (same logits), shards, tokenizer files, the CLI."""
from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace

import pytest
import torch
from safetensors.torch import load_file

from higgs_train.convert import convert
from higgs_train.llm.checkpoints import convert_llm, load_llm, save_llm
from higgs_train.llm.config import DualFFNConfig
from higgs_train.llm.layouts import read_config
from higgs_train.llm.model import DualFFNModel

pytestmark = pytest.mark.usefixtures("one_thread")   # tests/conftest.py

TOK = {"audio_bos": 100, "audio_eos": 101, "audio_out_bos": 102, "audio_delay": 103, "audio_in": 104,
       "audio_out": 105, "pad": 0}
# smaller than configs/model/llm/tiny.yaml (the project's tiny size), for test speed
MICRO = dict(vocab_size=128, hidden_size=32, intermediate_size=64, num_layers=3, num_heads=4, num_kv_heads=2,
             head_dim=8, rope_scaling={"factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                       "original_max_position_embeddings": 16},
             num_codebooks=4, codebook_size=30, special_tokens=TOK)


def tiny(seed=0, **kw) -> DualFFNModel:
    torch.manual_seed(seed)
    m = DualFFNModel(DualFFNConfig.preset("full", **{**MICRO, **kw})).eval()
    with torch.no_grad():
        for n, p in m.named_parameters():
            if "norm" in n:      # away from 1: a swapped norm shows
                p.add_(torch.randn_like(p) * 0.2)
    return m


def batch(seed=1):
    """Two rows (row 1 is 6 shorter), audio positions at the port's audio token."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, 99, (2, 30), generator=g)
    mask = torch.zeros(2, 30, dtype=torch.bool)
    mask[0, 4:14] = mask[0, 20:26] = mask[1, 3:11] = True
    ids[mask] = TOK["audio_out"]
    codes = torch.randint(0, 32, (2, 30, 4), generator=g)
    return ids, codes, mask, [30, 24]


def ours(m, ids, codes, mask):
    with torch.no_grad():
        o = m(ids, codes, mask)
    return o.text_logits, o.audio_logits


def port_logits(hf, ids, codes, mask, lengths):
    """The port on a left-padded batch (its processor pads on the left) -> per-row valid logits."""
    B, T = ids.shape
    pid, pcodes = torch.zeros_like(ids), torch.zeros_like(codes)
    att, pmask = torch.zeros(B, T, dtype=torch.long), torch.zeros_like(mask)
    for b, n in enumerate(lengths):
        pid[b, T - n:], pcodes[b, T - n:], pmask[b, T - n:], att[b, T - n:] = ids[b, :n], codes[b, :n], mask[b, :n], 1
    # the port takes audio_input_ids [B, frames, K] + a frame mask; rows with fewer frames pad them
    F = int(pmask.sum(1).max())
    audio = torch.zeros(B, F, codes.shape[-1], dtype=torch.long)
    amask = torch.zeros(B, F, dtype=torch.bool)
    for b in range(B):
        n = int(pmask[b].sum())
        audio[b, :n], amask[b, :n] = pcodes[b][pmask[b]], True
    with torch.no_grad():
        h = hf.model(input_ids=pid, attention_mask=att, audio_input_ids=audio,
                     audio_input_ids_mask=amask).last_hidden_state
        text, aud = hf.text_lm_head(h), hf.audio_lm_head(h).unflatten(-1, (codes.shape[-1], -1))
    return [(text[b, T - n:], aud[b, T - n:]) for b, n in enumerate(lengths)]


def check_port_parity(m, hf):
    ids, codes, mask, lengths = batch()
    for b, (text, aud) in enumerate(port_logits(hf, ids, codes, mask, lengths)):
        n = lengths[b]
        t, a = ours(m, ids[b:b + 1, :n], codes[b:b + 1, :n], mask[b:b + 1, :n])
        assert (t[0] - text).abs().max() <= 1e-6
        assert (a[0] - aud).abs().max() <= 1e-6
    assert aud.std() > 1e-2


def test_to_hf_loads_in_transformers_with_no_missing_keys_and_equal_logits(tmp_path):
    from transformers import HiggsAudioV2ForConditionalGeneration

    m = tiny()
    save_llm(m, tmp_path / "nat")
    convert(tmp_path / "nat", tmp_path / "hf", "hf")
    hf, info = HiggsAudioV2ForConditionalGeneration.from_pretrained(tmp_path / "hf", use_text_head=True,
                                                                    output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    check_port_parity(m, hf.eval())


def test_port_checkpoint_loads_here_with_equal_logits(tmp_path):
    from transformers import HiggsAudioV2Config, HiggsAudioV2ForConditionalGeneration

    torch.manual_seed(3)
    c = HiggsAudioV2Config(vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=3,
                           num_attention_heads=4, num_key_value_heads=2, head_dim=8, num_codebooks=4,
                           codebook_size=32, audio_stream_bos_id=30, audio_stream_eos_id=31,
                           audio_token_id=105, audio_bos_token_id=102, audio_delay_token_id=103, pad_token_id=0,
                           rope_parameters={"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0,
                                            "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                            "original_max_position_embeddings": 16})
    hf = HiggsAudioV2ForConditionalGeneration(c, use_text_head=True).eval()
    with torch.no_grad():
        for n, p in hf.named_parameters():
            p.copy_(torch.randn_like(p) * (0.2 if "norm" in n else 0.05) + (1.0 if "norm" in n else 0.0))
    hf.save_pretrained(tmp_path / "port")
    m = load_llm(tmp_path / "port")[0].eval()
    assert (m.cfg.num_codebooks, m.cfg.codebook_size, m.cfg.dual_layers) == (4, 30, None)
    assert m.cfg.special_tokens == {"audio_out": 105, "audio_out_bos": 102, "audio_delay": 103, "pad": 0}
    check_port_parity(m, hf)


@pytest.mark.parametrize("via", ["hf", "original"])
def test_round_trips_are_bit_exact(tmp_path, via):
    m = tiny(encode_audio_in_tokens=True)
    save_llm(m, tmp_path / "a")
    convert(tmp_path / "a", tmp_path / "b", via)
    convert(tmp_path / "b", tmp_path / "c", "native")
    a, c = load_file(str(tmp_path / "a/model.safetensors")), load_file(str(tmp_path / "c/model.safetensors"))
    assert a.keys() == c.keys() and all(torch.equal(a[k], c[k]) for k in a)
    cfg, layout = read_config(tmp_path / "c")
    assert layout == "native"
    # what the layout's config states of the special tokens comes back; the rest is the tokenizer's
    assert {k: TOK[k] for k in cfg.special_tokens} == cfg.special_tokens
    kept = via == "original"
    assert replace(cfg, special_tokens=TOK, encode_audio_in_tokens=kept) == replace(m.cfg, encode_audio_in_tokens=kept)


def test_partial_dual_layers_are_filled_with_copies_and_outputs_unchanged(tmp_path):
    from transformers import HiggsAudioV2ForConditionalGeneration

    m = tiny(dual_layers=[1])
    save_llm(m, tmp_path / "hf", "hf")
    sd = load_file(str(tmp_path / "hf/model.safetensors"))
    for i in (0, 2):
        assert torch.equal(sd[f"model.layers.{i}.audio_mlp.up_proj.weight"], sd[f"model.layers.{i}.mlp.up_proj.weight"])
        assert torch.equal(sd[f"model.layers.{i}.audio_input_layernorm.weight"],
                           sd[f"model.layers.{i}.input_layernorm.weight"])
    assert not torch.equal(sd["model.layers.1.audio_mlp.up_proj.weight"], sd["model.layers.1.mlp.up_proj.weight"])
    check_port_parity(m, HiggsAudioV2ForConditionalGeneration.from_pretrained(tmp_path / "hf", use_text_head=True).eval())
    back = load_llm(tmp_path / "hf")[0].eval()
    assert back.cfg.dual_layers is None                      # every layer dual now, same outputs
    ids, codes, mask, _ = batch()
    for x, y in zip(ours(m, ids, codes, mask), ours(back, ids, codes, mask)):
        assert torch.equal(x, y)


def test_shards_tokenizer_files_and_the_cli(tmp_path):
    from transformers import HiggsAudioV2ForConditionalGeneration

    from higgs_train.testing.tiny_exports import tiny_text_tokenizer

    tok = tiny_text_tokenizer(tmp_path / "nat", vocab_size=300)
    m = tiny(vocab_size=len(tok), special_tokens=None)
    save_llm(m, tmp_path / "nat")
    r = subprocess.run([sys.executable, "-m", "higgs_train.convert", f"src={tmp_path / 'nat'}",
                        f"dst={tmp_path / 'hf'}", "to=hf"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    cfg = json.loads((tmp_path / "hf/config.json").read_text())
    assert cfg["audio_token_id"] == tok.convert_tokens_to_ids("<|AUDIO_OUT|>")     # ids from the tokenizer
    assert (tmp_path / "hf/tokenizer.json").is_file() and (tmp_path / "hf/tokenizer_config.json").is_file()
    from higgs_train.llm.prompt import CHAT_TEMPLATE
    assert (tmp_path / "hf/chat_template.jinja").read_text() == CHAT_TEMPLATE      # the processor's template
    # shards: a tiny limit splits the checkpoint, written with an index both sides read
    convert_llm(tmp_path / "hf", tmp_path / "sharded", "hf", max_shard_bytes=40_000)
    shards = sorted(p.name for p in (tmp_path / "sharded").glob("model-*.safetensors"))
    index = json.loads((tmp_path / "sharded/model.safetensors.index.json").read_text())
    assert len(shards) > 3 and sorted(set(index["weight_map"].values())) == shards
    hf, info = HiggsAudioV2ForConditionalGeneration.from_pretrained(tmp_path / "sharded", use_text_head=True,
                                                                    output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    ids, codes, mask, _ = batch()
    back = load_llm(tmp_path / "sharded")[0].eval()
    for x, y in zip(ours(m, ids, codes, mask), ours(back, ids, codes, mask)):
        assert torch.equal(x, y)
    with pytest.raises(FileExistsError, match="not empty"):
        convert(tmp_path / "nat", tmp_path / "hf", "original")
