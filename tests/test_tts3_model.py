"""Higgs TTS 3 family: Qwen3 parity, KV cache, fused table and heads, release key set and size,
layout round trip, prompt ids and the labels' delay rule."""
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from higgs_train.families.higgs_tts3.checkpoints import load, save
from higgs_train.families.higgs_tts3.config import Tts3Config
from higgs_train.tokenizer.layouts import BUNDLED_PREFIX as CODEC_PREFIX
from higgs_train.families.higgs_tts3.layouts import (LayoutError, config_from_original,
                                                     layout_name, original_config, read_config)
from higgs_train.families.higgs_tts3.model import HiggsTTS3Model, count_parameters, parameter_shapes
from higgs_train.families.higgs_tts3.prompt import (Tts3Prompts, add_special_tokens, clone_sample, delayed_rows,
                                                    encode, tts_sample)
from higgs_train.llm.data import collate
from higgs_train.llm.delay import IGNORE
from test_llm_model import mixed_batch as dualffn_batch

pytestmark = pytest.mark.usefixtures("one_thread")   # tests/conftest.py

# smaller than configs/model/llm/tts3_tiny.yaml, for test speed
MICRO = dict(vocab_size=97, hidden_size=64, intermediate_size=96, num_layers=3, num_heads=4, num_kv_heads=2,
             head_dim=16, rms_norm_eps=1e-6, rope_theta=1e6, num_codebooks=8, codebook_size=1024)


def tiny_model(seed=0, **kw) -> HiggsTTS3Model:
    """MICRO sizes, seeded; every norm (the 1-D parameters) moved away from 1 so a mis-mapped one shows."""
    torch.manual_seed(seed)
    m = HiggsTTS3Model(Tts3Config(**{**MICRO, **kw})).eval()
    with torch.no_grad():
        for p in (p for p in m.parameters() if p.ndim == 1):
            p.add_(torch.randn_like(p) * 0.2)
    return m


def mixed_batch(B=2, T=24):
    """tests/test_llm_model.py's batch (audio at 6..14, and 18..20 in row 1), -100 at audio positions
    as the prompts hold them."""
    ids, codes, mask = dualffn_batch(B, T)
    return ids.masked_fill(mask, IGNORE), codes, mask


def word_tokenizer(specials_first: bool = False, ref_text: bool = True):
    """A word-level tokenizer with the family's special tokens added (before the words: other ids)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = ["[UNK]", "hello", "world", "this", "is", "my", "voice", "."]
    specials = ["<|tts|>", "<|ref_text|>", "<|ref_audio|>", "<|text|>", "<|audio|>"]
    if not ref_text:
        specials.remove("<|ref_text|>")
    vocab = specials + words if specials_first else words + specials
    wl = Tokenizer(models.WordLevel({w: i for i, w in enumerate(vocab)}, unk_token="[UNK]"))
    wl.pre_tokenizer = pre_tokenizers.Whitespace()
    wl.add_special_tokens(specials)
    return PreTrainedTokenizerFast(tokenizer_object=wl, unk_token="[UNK]")


# ---------------------------------------------------------------- backbone and heads

def test_backbone_parity_with_transformers_qwen3(tmp_path):
    """transformers' Qwen3Model, its weights written in the release's layout (rope_theta null, an
    audio tokenizer tensor bundled), read by our loader: the same fp32 hidden states."""
    from safetensors.torch import load_file, save_file
    from transformers import Qwen3Config, Qwen3Model

    torch.manual_seed(0)
    hc = Qwen3Config(vocab_size=97, hidden_size=64, intermediate_size=96, num_hidden_layers=3, num_attention_heads=4,
                     num_key_value_heads=2, head_dim=16, rms_norm_eps=1e-6, rope_theta=1e6, tie_word_embeddings=True,
                     max_position_embeddings=256)
    hf = Qwen3Model(hc).eval()
    with torch.no_grad():
        for p in hf.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    table = torch.randn(8 * 1026, 64) * 0.02
    sd = {"tied.embedding.text_embedding.weight": hf.embed_tokens.weight,
          "tied.head.text_head.weight": hf.embed_tokens.weight.clone(),
          "tied.embedding.modality_embeddings.0.embedding.weight": table,
          CODEC_PREFIX + "encoder.conv.weight": torch.zeros(3, 3)}
    sd.update({"body." + k: v for k, v in hf.state_dict().items() if k != "embed_tokens.weight"})
    save_file({k: v.contiguous() for k, v in sd.items()}, str(tmp_path / "model.safetensors"))
    text = {**hc.to_dict(), "rope_theta": None}
    text.pop("rope_parameters")
    (tmp_path / "config.json").write_text(json.dumps(
        {"model_type": "higgs_multimodal_qwen3", "text_config": text, "audio_token_id": -100,
         "audio_encoder_config": {"encoder_type": "discrete", "num_codebooks": 8, "vocab_size": 1026,
                                  "tie_word_embeddings": True}}))
    ours, layout = load(tmp_path)
    assert layout == "original" and ours.cfg.rope_theta == 1e6 and ours.cfg.rms_norm_eps == 1e-6
    ids = torch.randint(0, 97, (2, 40))
    with torch.no_grad():
        want = hf(input_ids=ids).last_hidden_state
        out = ours.eval()(ids)
    assert out.hidden.shape == (2, 40, 64)
    assert (out.hidden - want).abs().max().item() <= 1e-5
    assert (out.text_logits - want @ hf.embed_tokens.weight.T).abs().max().item() <= 1e-5
    assert torch.equal(ours.audio_embed.weight, table)
    # written back in the release layout from there: the bundled audio tokenizer travels along
    save(ours, tmp_path / "again", layout="original", tokenizer_dir=tmp_path)
    again = load_file(str(tmp_path / "again" / "model.safetensors"))
    assert torch.equal(again[CODEC_PREFIX + "encoder.conv.weight"], torch.zeros(3, 3))
    assert "tied.head.text_head.weight" not in again and len(again) == 3 * 11 + 3 + 1


def test_fused_table_embeds_and_heads():
    m = tiny_model()
    ids, codes, mask = mixed_batch()
    with torch.no_grad():
        x = m.embed(ids, codes, mask)
        table = m.audio_embed.weight
        by_hand = sum(table[codes[..., c] + c * 1026] for c in range(8))      # sum over codebooks
        assert torch.allclose(x[mask], by_hand[mask], atol=1e-6)
        assert torch.equal(x[~mask], m.text_embed(ids[~mask]))
        out = m(ids, codes, mask)
    assert out.audio_logits.shape == (2, 24, 8, 1026) and out.text_logits.shape == (2, 24, 97)
    assert torch.allclose(out.audio_logits, F.linear(out.hidden, table).view(2, 24, 8, 1026), atol=1e-6)
    assert torch.allclose(out.text_logits, F.linear(out.hidden, m.text_embed.weight), atol=1e-6)
    # tied: one Parameter, one gradient; untied heads are parameters of their own
    assert m.audio_head.weight is m.audio_embed.weight and m.text_head.weight is m.text_embed.weight
    untied = tiny_model(tie_word_embeddings=False, tie_audio_embeddings=False)
    n_tied, n_untied = (sum(p.numel() for p in x.parameters()) for x in (m, untied))
    assert n_untied - n_tied == 97 * 64 + 8 * 1026 * 64
    assert m.audio_parameter_names() == ["audio_embed.weight"]


def test_kv_cache_decode_equals_full_forward():
    m = tiny_model()
    ids, codes, mask = mixed_batch(B=2, T=24)
    with torch.no_grad():
        full = m(ids, codes, mask)
        cache = m.allocate_cache(2, 32)
        P = 10
        outs = [m(ids[:, :P], codes[:, :P], mask[:, :P], cache=cache, positions=torch.arange(P), last_only=True)]
        for t in range(P, 24):
            outs.append(m(ids[:, t:t + 1], codes[:, t:t + 1], mask[:, t:t + 1], cache=cache,
                          positions=torch.tensor([t]), attend=32))
        # the engine's audio-only decode step (no text embedding, no text head) at audio position 14
        cache = m.allocate_cache(2, 32)
        m(ids[:, :14], codes[:, :14], mask[:, :14], cache=cache, positions=torch.arange(14))
        fast = m(ids[:, 14:15], codes[:, 14:15], None, cache=cache, positions=torch.tensor([14]), attend=16,
                 audio_only=True, text_head=False)
    inc_text = torch.cat([o.text_logits for o in outs], 1)
    inc_audio = torch.cat([o.audio_logits for o in outs], 1)
    assert (inc_text - full.text_logits[:, P - 1:]).abs().max() < 1e-5
    assert (inc_audio - full.audio_logits[:, P - 1:]).abs().max() < 1e-5
    assert fast.text_logits is None
    assert (fast.audio_logits - full.audio_logits[:, 14:15]).abs().max() < 1e-5


def test_engine_decode_steps_drive_it_unchanged():
    """inference/decode_graphs.DecodeSteps with packed decode weights (inference/packed_gemm.py), as the
    engine runs them, on this family's model: the full forward's audio logits."""
    from inference.decode_graphs import DecodeSteps
    from inference.packed_gemm import PackedLinears

    m = tiny_model()
    B, P, N = 4, 8, 5                     # 4 rows: fp32 packing's smallest batch
    g = torch.Generator().manual_seed(0)
    ids, codes = torch.randint(0, 97, (B, P + N), generator=g), torch.randint(0, 1026, (B, P + N, 8), generator=g)
    mask = torch.zeros(B, P + N, dtype=torch.bool)
    mask[:, P:] = True
    with torch.no_grad():
        full = m(ids.masked_fill(mask, IGNORE), codes, mask).audio_logits
        steps = DecodeSteps(m, m.allocate_cache(B, 32), None, PackedLinears.for_decode(m, B))
        steps.reset()
        m(ids[:, :P], codes[:, :P], mask[:, :P], cache=steps.cache, positions=torch.arange(P))
        diff = max((steps(codes[:, t:t + 1], t, 16)[:, 0] - full[:, t]).abs().max().item() for t in range(P, P + N))
    assert diff < 1e-5


# ---------------------------------------------------------------- the release's key set and size

def test_full_size_key_set_and_parameter_count():
    from omegaconf import OmegaConf

    from higgs_train.config import CONFIG_DIR
    from higgs_train.families import size_config

    family, cfg = size_config(OmegaConf.to_container(OmegaConf.load(CONFIG_DIR / "model/llm/tts3_full.yaml")))
    assert family.name == "higgs_tts3"                                            # what training composes
    assert cfg == Tts3Config.preset("tts3_full") == Tts3Config(
        vocab_size=151936, hidden_size=2560, intermediate_size=9728, num_layers=36, num_heads=32, num_kv_heads=8,
        head_dim=128, rms_norm_eps=1e-6, rope_theta=1e6, num_codebooks=8, codebook_size=1024,
        tie_word_embeddings=True, tie_audio_embeddings=True)                     # the release's shape
    assert Tts3Config.preset("tts3_tiny", vocab_size=400).hidden_size == 128
    n = count_parameters(cfg)
    print(f"full Higgs TTS 3 config: {n:,} parameters")
    assert n == 4_043_480_576
    names = {layout_name(n, "original") for n in parameter_shapes(cfg)}
    want = {"tied.embedding.text_embedding.weight", "body.norm.weight",
            "tied.embedding.modality_embeddings.0.embedding.weight"}
    for i in range(36):
        want |= {f"body.layers.{i}.self_attn.{p}_proj.weight" for p in "qkvo"}
        want |= {f"body.layers.{i}.self_attn.{p}_norm.weight" for p in "qk"}
        want |= {f"body.layers.{i}.mlp.{p}_proj.weight" for p in ("gate", "up", "down")}
        want |= {f"body.layers.{i}.{p}_layernorm.weight" for p in ("input", "post_attention")}
    assert names == want and len(names) == 36 * 11 + 3 == 399   # tied heads are not stored
    shapes = parameter_shapes(cfg)
    assert shapes["audio_embed.weight"] == (8 * 1026, 2560) and shapes["text_embed.weight"] == (151936, 2560)
    assert shapes["layers.0.attn.k_proj.weight"] == (8 * 128, 2560) and shapes["layers.0.attn.q_norm.weight"] == (128,)
    assert config_from_original(original_config(cfg, "bfloat16")) == cfg


# ---------------------------------------------------------------- layouts

@pytest.mark.parametrize("tied", [True, False])
def test_layout_round_trip_is_bit_equal(tmp_path, tied):
    m = tiny_model(tie_word_embeddings=tied, tie_audio_embeddings=tied).to(torch.bfloat16)
    save(m, tmp_path / "native")
    a, layout_a = load(tmp_path / "native")
    save(a, tmp_path / "original", layout="original")
    b, layout_b = load(tmp_path / "original")
    save(b, tmp_path / "back")
    c, _ = load(tmp_path / "back")
    assert (layout_a, layout_b) == ("native", "original")
    assert a.cfg == b.cfg == c.cfg == m.cfg
    want = m.state_dict()
    for got in (a, b, c):
        sd = got.state_dict()
        assert sd.keys() == want.keys()
        assert all(torch.equal(sd[k], want[k]) and sd[k].dtype == torch.bfloat16 for k in want)
        assert (got.text_head.weight is got.text_embed.weight) == tied
    from safetensors import safe_open

    with safe_open(str(tmp_path / "original" / "model.safetensors"), "pt") as f:
        keys = set(f.keys())
    assert ("tied.head.text_head.weight" in keys) == ("tied.head.modality_heads.0.weight" in keys) == (not tied)
    assert json.loads((tmp_path / "original" / "config.json").read_text())["audio_encoder_config"] == {
        "encoder_type": "discrete", "num_codebooks": 8, "vocab_size": 1026, "tie_word_embeddings": tied}
    ids, codes, mask = mixed_batch()
    with torch.no_grad():
        assert torch.equal(a.eval()(ids, codes, mask).audio_logits, b.eval()(ids, codes, mask).audio_logits)


def test_int8_load_quantizes_the_decoder_linears_only(tmp_path):
    m = tiny_model()
    save(m, tmp_path)
    q, _ = load(tmp_path, quantize="int8")
    assert type(q.layers[0].attn.q_proj).__name__ == "Linear8bitLt" and q.quantize == "int8"
    assert type(q.audio_head) is torch.nn.Linear and q.audio_head.weight is q.audio_embed.weight   # heads stay, tied
    ids, codes, mask = mixed_batch()
    with torch.no_grad():
        want, got = m(ids, codes, mask).audio_logits, q.eval()(ids, codes, mask).audio_logits
    assert (got - want).abs().max() < 0.05 * want.abs().max()      # int8 rounding (measured 1.4 %)


def test_reader_refuses_what_it_cannot_reproduce(tmp_path):
    good = original_config(Tts3Config(**MICRO), "float32")
    for where, key, value, field in (("text_config", "rope_scaling", {"rope_type": "yarn", "factor": 4.0}, "rope_scaling"),
                                     ("text_config", "attention_bias", True, "attention_bias"),
                                     ("text_config", "model_type", "llama", "text_config.model_type"),
                                     ("audio_encoder_config", "encoder_type", "whisper", "encoder_type")):
        bad = json.loads(json.dumps(good))
        bad[where][key] = value
        with pytest.raises(LayoutError, match=field):
            config_from_original(bad)
    from safetensors.torch import load_file, save_file

    save(tiny_model(), tmp_path, layout="original")
    weights = load_file(str(tmp_path / "model.safetensors"))
    # a tied head's copy, as a checkpoint may hold one: skipped (as the reference loaders do)
    copy = {"tied.head.text_head.weight": weights["tied.embedding.text_embedding.weight"] + 1}
    save_file({**weights, **copy}, str(tmp_path / "model.safetensors"))
    assert torch.equal(load(tmp_path)[0].text_head.weight, weights["tied.embedding.text_embedding.weight"])
    save_file({**weights, "body.layers.9.mlp.up_proj.weight": torch.zeros(2)}, str(tmp_path / "model.safetensors"))
    with pytest.raises(LayoutError, match="does not have, e.g. body.layers.9.mlp.up_proj.weight"):
        load(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "higgs_audio_v2"}))
    with pytest.raises(LayoutError, match="neither architecture"):
        read_config(tmp_path)


# ---------------------------------------------------------------- prompts and labels

def test_prompt_ids_zero_shot_and_cloning():
    tok = word_tokenizer()
    v = tok.get_added_vocab()
    tts, ref_text, ref_audio, text, audio = (v[t] for t in ("<|tts|>", "<|ref_text|>", "<|ref_audio|>", "<|text|>",
                                                            "<|audio|>"))
    hello, world, this, is_, my, voice = 1, 2, 3, 4, 5, 6
    zero = encode(tok, "hello world")
    assert zero.input_ids.tolist() == [tts, text, hello, world, audio] and not zero.audio_mask.any()
    ref = np.random.default_rng(0).integers(0, 1024, (8, 5))
    clone = encode(tok, "hello world", [("this is my voice", ref)])
    assert clone.input_ids.tolist() == ([tts, ref_text, this, is_, my, voice, ref_audio] + [-100] * (5 + 7)
                                        + [text, hello, world, audio])
    assert clone.audio_mask.nonzero()[0].tolist() == list(range(7, 7 + 12))
    assert np.array_equal(clone.audio_codes[7:19], delayed_rows(ref))
    assert clone.audio_codes[7, 1:].tolist() == [1024] * 7 and clone.audio_codes[18, :7].tolist() == [1025] * 7
    assert (clone.audio_labels == IGNORE).all() and (clone.text_labels == IGNORE).all()   # a prompt: no labels
    # ids come from the tokenizer's added vocabulary, not constants
    other = encode(word_tokenizer(specials_first=True), "hello world")
    assert other.input_ids.tolist() == [0, 3, 6, 7, 4]
    # a tokenizer without <|ref_text|> clones from the audio alone (as the reference does)
    bare = encode(word_tokenizer(ref_text=False), "hello", [("this is my voice", ref)])
    assert bare.input_ids[:2].tolist() == [8, 9] and len(bare) == 2 + 12 + 3   # <|tts|> <|ref_audio|>
    with pytest.raises(ValueError, match="lacks the Higgs TTS 3 special tokens"):
        encode(plain_tokenizer(), "hello")
    # a tokenizer trained here gets them appended
    assert encode(add_special_tokens(plain_tokenizer()), "hello").input_ids.tolist() == [1, 4, 0, 5]


def plain_tokenizer():
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.WordLevel({"[UNK]": 0}, unk_token="[UNK]")))


def test_generation_prompts_for_the_engine():
    from types import SimpleNamespace

    tok = word_tokenizer()
    v = tok.get_added_vocab()
    prompts = Tts3Prompts(tok, Tts3Config(**MICRO))
    ref = torch.randint(0, 1024, (8, 2))
    chunk = torch.randint(0, 1024, (8, 3))
    ids, codes, amask = prompts.generation("hello", [SimpleNamespace(text="my voice", codes=ref)], [("this", chunk)])
    # the earlier chunk is a further reference of the same voice; the prompt ends at <|audio|>
    assert ids.tolist() == ([v["<|tts|>"], v["<|ref_text|>"], 5, 6, v["<|ref_audio|>"]] + [-100] * 9
                            + [v["<|ref_text|>"], 3, v["<|ref_audio|>"]] + [-100] * 10 + [v["<|text|>"], 1, v["<|audio|>"]])
    assert amask.sum() == 19 and torch.equal(codes[amask], torch.cat([torch.from_numpy(delayed_rows(ref)),
                                                                       torch.from_numpy(delayed_rows(chunk))]))
    assert prompts.audio_token == -100
    with pytest.raises(ValueError, match="no scene description"):
        prompts.generation("hello", [], [], scene="a quiet room")
    with pytest.raises(ValueError, match="data.kinds.dialogue=0"):
        prompts.dialogue([("a", "hello", ref), ("b", "world", ref)])


@pytest.mark.parametrize("T", [1, 3, 10])
def test_labels_follow_the_delay_pattern(T):
    tok = word_tokenizer()
    codes = np.random.default_rng(T).integers(0, 1024, (8, T))
    ref = np.random.default_rng(99).integers(0, 1024, (8, 4))
    s = clone_sample(tok, "this is my voice", ref, "hello world", codes)
    first = len(s) - (T + 7)                        # the first target row; first - 1 holds <|audio|>
    assert s.input_ids[first - 1] == tok.get_added_vocab()["<|audio|>"]
    lab = s.audio_labels
    assert (lab[:first - 1] == IGNORE).all() and (lab[-1] == IGNORE).all()   # prompt and last row: none
    assert (lab != IGNORE).sum() == 8 * T + 7                                # codes + 7 stream ends
    for c in range(8):
        col = lab[first - 1:-1, c]                                           # targets of rows 0 .. T+5
        assert (col[:c] == IGNORE).all()                                     # forced BOS: never a target
        assert col[c:c + T].tolist() == codes[c].tolist()                    # the real codes, in order
        assert (col[c + T + 1:] == IGNORE).all()                             # trailing EOS padding: none
        ends = np.flatnonzero(col == 1025)
        assert ends.tolist() == ([c + T] if c < 7 else [])                   # each end once; codebook 7 none
    # every label is the code fed at the next position (teacher forcing), BOS and trailing EOS excepted
    on = lab != IGNORE
    nxt = np.roll(s.audio_codes, -1, axis=0)
    assert np.array_equal(lab[on], nxt[on])
    forced = ((nxt == 1024) & np.roll(s.audio_mask, -1)[:, None])[first - 1:]   # BOS in the next target row
    assert forced.sum() == 28 and not (on[first - 1:] & forced).any()            # 1 + 2 + ... + 7 cells, none a label
    zero = tts_sample(tok, "hello world", codes)
    assert (zero.audio_labels != IGNORE).sum() == 8 * T + 7


def test_samples_collate_and_train_like_dualffn_samples():
    tok = word_tokenizer()
    rng = np.random.default_rng(0)
    batch = collate([tts_sample(tok, "hello world", rng.integers(0, 1024, (8, 6))),
                     clone_sample(tok, "my voice", rng.integers(0, 1024, (8, 3)), "hello", rng.integers(0, 1024, (8, 9)))])
    m = tiny_model(vocab_size=len(tok)).train()
    out = m.loss(batch["input_ids"], batch["audio_codes"], batch["audio_mask"], batch["audio_labels"],
                 batch["text_labels"])
    assert abs(out["audio_loss"].item() - np.log(1026)) < 0.5          # random init: near uniform
    out["loss"].backward()
    assert m.audio_embed.weight.grad.abs().sum() > 0 and "text_loss" not in out
