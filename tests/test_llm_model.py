"""DualFFN model: HF Llama parity, DualFFN isolation, delay pattern, KV cache, I/O, full-size count."""
import pytest
import torch

from higgs_train.llm import DualFFNConfig, DualFFNModel
from higgs_train.llm.checkpoints import from_hf_llama, load_llm, save_llm
from higgs_train.llm.delay import apply_delay, audio_stream, revert_delay, strip_stream
from higgs_train.llm.model import count_parameters


pytestmark = pytest.mark.usefixtures("one_thread")   # tests/conftest.py


# smaller than configs/model/llm/tiny.yaml (the project's tiny size), for test speed
MICRO = dict(vocab_size=97, hidden_size=64, intermediate_size=96, num_layers=3, num_heads=4, num_kv_heads=2,
             head_dim=16, rope_theta=500000.0, num_codebooks=8, codebook_size=1024,
             rope_scaling={"factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                           "original_max_position_embeddings": 16})


def tiny_model(seed=0, **kw) -> DualFFNModel:
    torch.manual_seed(seed)
    m = DualFFNModel(DualFFNConfig.preset("full", **{**MICRO, **kw})).eval()
    with torch.no_grad():  # norms away from 1 so a mis-mapped norm shows
        for n, p in m.named_parameters():
            if "norm" in n:
                p.add_(torch.randn_like(p) * 0.2)
    return m


def mixed_batch(B=2, T=24, seed=1):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, MICRO["vocab_size"], (B, T), generator=g)
    codes = torch.randint(0, 1026, (B, T, 8), generator=g)
    mask = torch.zeros(B, T, dtype=torch.bool)
    mask[:, 6:15] = True
    mask[1, 18:21] = True
    return ids, codes, mask


@pytest.mark.parametrize("tied", [False, True])
def test_parity_with_transformers_llama(tmp_path, tied):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    hc = LlamaConfig(vocab_size=97, hidden_size=64, intermediate_size=96, num_hidden_layers=3,
                     num_attention_heads=4, num_key_value_heads=2, rms_norm_eps=1e-5, tie_word_embeddings=tied,
                     rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                   "high_freq_factor": 4.0, "original_max_position_embeddings": 16},
                     rope_theta=500000.0, max_position_embeddings=256)
    hf = LlamaForCausalLM(hc).eval()
    with torch.no_grad():
        for p in hf.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    hf.save_pretrained(tmp_path)
    ours = from_hf_llama(tmp_path, dual_layers=[0, 2]).eval()
    ids = torch.randint(0, 97, (2, 40))  # 40 > original_max_position_embeddings: scaling matters
    with torch.no_grad():
        want = hf(input_ids=ids).logits
        got = ours(ids).text_logits
    assert got.shape == (2, 40, 97)
    assert (got - want).abs().max().item() <= 1e-4
    # audio FFNs and norms start as copies of the text ones
    assert torch.equal(ours.layers[2].audio_mlp.up_proj.weight, ours.layers[2].mlp.up_proj.weight)
    assert torch.equal(ours.layers[0].audio_attn_norm.weight, ours.layers[0].attn_norm.weight)
    assert not hasattr(ours.layers[1], "audio_mlp")


def test_from_hf_llama_names_missing_dir(tmp_path):
    with pytest.raises(FileNotFoundError, match="config.json"):
        from_hf_llama(tmp_path / "nope")


def test_dualffn_isolation():
    m = tiny_model()
    ids, codes, mask = mixed_batch()
    with torch.no_grad():
        a = m(ids, codes, mask)
        for layer in m.layers:  # audio-only weights changed: text positions must not move
            layer.audio_mlp.down_proj.weight.mul_(3.0)
            layer.audio_ffn_norm.weight.add_(1.0)
        b = m(ids, codes, mask)
    # positions before the first audio one cannot see it (causal): bit-identical
    assert torch.equal(a.text_logits[:, :6], b.text_logits[:, :6])
    assert (a.audio_logits[mask] - b.audio_logits[mask]).abs().max() > 1e-3
    # and with no audio at all, audio weights play no role
    with torch.no_grad():
        c = m(ids).text_logits
        for layer in m.layers:
            layer.audio_mlp.up_proj.weight.zero_()
        d = m(ids).text_logits
    assert torch.equal(c, d)


def test_text_positions_use_text_ffn_only():
    # in the last layer (no later attention to mix positions), the text FFN touches text positions only
    m = tiny_model(dual_layers=None)
    ids, codes, mask = mixed_batch()
    with torch.no_grad():
        a = m.hidden_states(ids, codes, mask)
        m.layers[-1].mlp.down_proj.weight.mul_(5)  # last layer: no later attention to carry it
        b = m.hidden_states(ids, codes, mask)
    assert torch.equal(a[mask], b[mask])
    assert (a[~mask] - b[~mask]).abs().max() > 1e-3


@pytest.mark.parametrize("T", range(1, 51))
def test_delay_round_trip(T):
    codes = torch.randint(0, 1024, (8, T))
    d = apply_delay(codes, 1024, 1025)
    assert d.shape == (8, T + 7)
    assert torch.equal(revert_delay(d), codes)
    for k in range(8):
        assert (d[k, :k] == 1024).all() and (d[k, k + T:] == 1025).all()
    s = audio_stream(codes, 1024, 1025)
    assert s.shape == (8, T + 9) and (s[:, 0] == 1024).all() and (s[:, -1] == 1025).all()
    assert torch.equal(strip_stream(s, 1024, 1025), codes)


def test_kv_cache_prefill_and_decode_equal_full_forward():
    m = tiny_model()
    ids, codes, mask = mixed_batch(B=2, T=24)
    with torch.no_grad():
        full = m(ids, codes, mask)
        cache = m.allocate_cache(2, 32)
        P = 10
        pre = m(ids[:, :P], codes[:, :P], mask[:, :P], cache=cache, positions=torch.arange(P), last_only=True)
        assert pre.text_logits.shape == (2, 1, 97)
        outs = [pre]
        for t in range(P, 24):
            outs.append(m(ids[:, t:t + 1], codes[:, t:t + 1], mask[:, t:t + 1], cache=cache,
                          positions=torch.tensor([t])))
    inc_text = torch.cat([o.text_logits for o in outs], 1)
    inc_audio = torch.cat([o.audio_logits for o in outs], 1)
    assert (inc_text - full.text_logits[:, P - 1:]).abs().max() < 1e-4
    assert (inc_audio - full.audio_logits[:, P - 1:]).abs().max() < 1e-4


def test_kv_cache_left_padded_batch_matches_single_rows():
    m = tiny_model()
    ids, codes, mask = mixed_batch(B=2, T=20)
    pad = 3  # row 1 is 3 shorter: left-pad it
    ids[1, :pad] = 0
    tok = torch.ones(2, 20, dtype=torch.bool)
    tok[1, :pad] = False
    with torch.no_grad():
        cache = m.allocate_cache(2, 24)
        m(ids[:, :12], codes[:, :12], mask[:, :12], cache=cache, positions=torch.arange(12),
          token_mask=tok[:, :12])
        batched = m(ids[:, 12:], codes[:, 12:], mask[:, 12:], cache=cache, positions=torch.arange(12, 20))
        alone = m(ids[1:, pad:], codes[1:, pad:], mask[1:, pad:])
    assert (batched.text_logits[1] - alone.text_logits[0, 12 - pad:]).abs().max() < 1e-4
    assert (batched.audio_logits[1] - alone.audio_logits[0, 12 - pad:]).abs().max() < 1e-4


def test_save_load_round_trip(tmp_path):
    m = tiny_model(dual_layers=[1])
    save_llm(m, tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json", "model.safetensors"]
    m2 = load_llm(tmp_path)[0].eval()
    assert m2.cfg == m.cfg
    ids, codes, mask = mixed_batch()
    with torch.no_grad():
        assert torch.equal(m(ids, codes, mask).audio_logits, m2(ids, codes, mask).audio_logits)
    with pytest.raises(FileNotFoundError, match="not a DualFFNModel export"):
        load_llm(tmp_path / "missing")[0]


def test_loss_and_gradient_checkpointing_agree():
    m = tiny_model().train()
    ids, codes, mask = mixed_batch()
    labels = torch.full_like(codes, -100)
    labels[:, 6:14] = codes[:, 7:15]
    tl = torch.full_like(ids, -100)
    tl[:, 14] = 5
    out = m.loss(ids, codes, mask, labels, tl, text_loss_weight=0.5)
    assert out["codebook_loss"].shape == (8,)
    assert abs(out["loss"].item() - (out["audio_loss"] + 0.5 * out["text_loss"]).item()) < 1e-5
    # random init: CE near log(1026) per codebook
    assert abs(out["audio_loss"].item() - torch.log(torch.tensor(1026.0)).item()) < 0.5
    out["loss"].backward()
    g1 = m.layers[0].audio_mlp.up_proj.weight.grad.clone()
    m.zero_grad()
    m.gradient_checkpointing = True
    m.loss(ids, codes, mask, labels, tl, text_loss_weight=0.5)["loss"].backward()
    assert torch.allclose(m.layers[0].audio_mlp.up_proj.weight.grad, g1, atol=1e-6)


def test_full_config_parameter_count():
    cfg = DualFFNConfig.preset("full")   # configs/model/llm/full.yaml: the released shape (test_llm_release)
    n = count_parameters(cfg)
    print(f"full DualFFN config: {n / 1e9:.3f} B parameters")
    assert abs(n - 5.8e9) / 5.8e9 <= 0.03
