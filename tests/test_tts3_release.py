"""Higgs TTS 3 against its reference implementation (sglang-omni, cross-checked by mlx-audio): the
fixtures of tests/fixtures/release_v3/ (scripts/release_fixtures/v3/write.py), read through this
family's release-layout reader and prompt encoder."""
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from higgs_train.families.higgs_tts3.checkpoints import load, save
from higgs_train.families.higgs_tts3.prompt import encode, load_text_tokenizer, stream_targets
from higgs_train.llm.delay import IGNORE

pytestmark = pytest.mark.usefixtures("one_thread")   # tests/conftest.py

FIX = Path(__file__).parent / "fixtures" / "release_v3"
CASES = ("zero_shot", "clone")


@pytest.fixture(scope="module")
def ref():
    cases = json.loads((FIX / "cases.json").read_text())["cases"]
    return cases, load_file(str(FIX / "cases.safetensors"))


@pytest.fixture(scope="module")
def ours():
    model, layout = load(FIX / "tiny")   # rope_theta null, the audio tokenizer bundled, no head copies
    assert layout == "original" and model.cfg.rope_theta == 1e6 and model.cfg.vocab_size == 320
    return model.eval(), load_text_tokenizer(FIX / "tiny")


def sample(case, tensors, name, tok):
    refs = [(case["ref_text"], tensors[f"{name}.ref_codes"].T)] if f"{name}.ref_codes" in tensors else []
    return encode(tok, case["text"], refs, codes=tensors[f"{name}.codes"].T)


@pytest.mark.parametrize("name", CASES)
def test_prompt_ids_equal_the_reference(ref, ours, name):
    cases, tensors = ref
    _, tok = ours
    s = sample(cases[name], tensors, name, tok)
    P = len(cases[name]["prompt_ids"])
    assert s.input_ids[:P].tolist() == cases[name]["prompt_ids"]
    # the reference audio: its delayed rows at the -100 positions
    if f"{name}.ref_delayed" in tensors:
        assert torch.equal(torch.from_numpy(s.audio_codes[:P][s.input_ids[:P] == IGNORE]), tensors[f"{name}.ref_delayed"])
    assert torch.equal(torch.from_numpy(s.audio_codes[P:]), tensors[f"{name}.frames"])


@pytest.mark.parametrize("name", CASES)
def test_teacher_forced_logits_equal_the_reference(ref, ours, name):
    cases, tensors = ref
    model, tok = ours
    s = sample(cases[name], tensors, name, tok)
    P, rows = len(cases[name]["prompt_ids"]), tensors[f"{name}.frames"].shape[0]
    with torch.no_grad():
        out = model(torch.from_numpy(s.input_ids)[None], torch.from_numpy(s.audio_codes)[None],
                    torch.from_numpy(s.audio_mask)[None])
    audio = out.audio_logits[0, P - 1:P - 1 + rows]      # <|audio|> predicts row 0, row r row r + 1
    text = out.text_logits[0, P - 1:P - 1 + rows]
    assert (audio - tensors[f"{name}.audio_logits"]).abs().max().item() <= 1e-5
    assert (text - tensors[f"{name}.text_logits"]).abs().max().item() <= 1e-5
    # our labels: the reference's real-code action mask, plus each codebook's end of stream (0..6)
    targets = torch.from_numpy(stream_targets(tensors[f"{name}.codes"].T))
    action = tensors[f"{name}.action_mask"].bool()
    assert torch.equal((targets != IGNORE) & (targets != 1025), action)
    assert ((targets == 1025).sum(0) == torch.tensor([1] * 7 + [0])).all()


def test_greedy_frames_equal_the_reference_through_the_kv_cache(ref, ours):
    """The cloning case never samples codebook 0's end of stream, where the stop rules differ: 40
    greedy rows through a static KV cache, the begin-of-stream forced as the reference forces it."""
    cases, tensors = ref
    model, tok = ours
    want = tensors["clone.greedy_frames"]
    s = encode(tok, cases["clone"]["text"], [(cases["clone"]["ref_text"], tensors["clone.ref_codes"].T)])
    ids, codes, mask = (torch.from_numpy(a)[None] for a in (s.input_ids, s.audio_codes, s.audio_mask))
    P, K = ids.shape[1], 8
    cache = model.allocate_cache(1, P + len(want))
    with torch.no_grad():
        logits = model(ids, codes, mask, cache=cache, positions=torch.arange(P), last_only=True).audio_logits
        rows = []
        for r in range(len(want)):
            row = logits[0, -1].argmax(-1)
            row[r + 1:] = 1024                              # codebooks c > r have not started
            rows.append(row)
            logits = model(ids[:, :1], row[None, None], None, cache=cache, positions=torch.tensor([P + r]),
                           audio_only=True, text_head=False).audio_logits
    assert torch.equal(torch.stack(rows), want)


def test_release_export_is_the_reference_directory_again(ours, tmp_path):
    """Read and written again in the release layout (the base directory as tokenizer_dir): every
    tensor, the bundled audio tokenizer's included, bit-equal, and the same config.json values.
    (scripts/release_fixtures/v3/check_export.py loads such an export with the reference's weight
    loader: equal logits.)"""
    from safetensors import safe_open

    from higgs_train.families.higgs_tts3.layouts import config_from_original
    from higgs_train.tokenizer.layouts import BUNDLED_PREFIX as CODEC_PREFIX

    model, _ = ours
    save(model, tmp_path, layout="original", tokenizer_dir=FIX / "tiny")
    with safe_open(str(FIX / "tiny" / "model.safetensors"), "pt") as a, \
            safe_open(str(tmp_path / "model.safetensors"), "pt") as b:
        assert set(a.keys()) == set(b.keys()) and len(set(a.keys())) == 25 + 351
        assert sum(k.startswith(CODEC_PREFIX) for k in b.keys()) == 351
        assert all(torch.equal(a.get_tensor(k), b.get_tensor(k)) for k in a.keys())
    raw = [json.loads((d / "config.json").read_text()) for d in (FIX / "tiny", tmp_path)]
    assert config_from_original(raw[0]) == config_from_original(raw[1])
    assert (tmp_path / "tokenizer.json").read_bytes() == (FIX / "tiny" / "tokenizer.json").read_bytes()


def test_generation_rule_against_the_reference_sampler(ref, ours):
    """The family's delay state (FAMILY.delay_state) on the reference's greedy rows: where codebook 0 never
    ends (cloning, 40 rows) it allows every row and forces begin-of-stream exactly where the
    reference did; codebook 0's end-of-stream at row 0, which the reference samples and ignores
    (zero-shot), is allowed and ignored here too (higgs_train/families/higgs_tts3/delay_state.py)."""
    from higgs_train.families.higgs_tts3 import FAMILY

    _, tensors = ref
    model, _ = ours
    st = FAMILY.delay_state(model.cfg, 100)
    for row in tensors["clone.greedy_frames"]:
        allowed = st.allowed()
        assert allowed[torch.arange(8), row].all()
        assert torch.equal(allowed[:, 1024], row == 1024)          # BOS: forced, and only there
        assert torch.equal(st.push(row), row)
    assert not st.done and st.frames().shape == (8, 40 - 7)
    zero = tensors["zero_shot.greedy_frames"]
    st = FAMILY.delay_state(model.cfg, 100)
    assert zero[0, 0] == 1025 and st.allowed()[0, 1025]           # allowed and, in the delay window, ignored
    st.push(zero[0])
    assert not st.done


@pytest.mark.parametrize("use_cache", [True, False])
def test_the_engine_speaks_the_reference_frames(ref, ours, use_cache):
    """inference.Engine with this family (FAMILY) and the audio tokenizer bundled in the
    checkpoint, greedy: the cloning case's frames are the reference's greedy frames (its 40 rows hold
    33 whole frames; max_frames 40 keeps the frame limit from forcing an end before them)."""
    from higgs_train.families import Reference
    from higgs_train.families.higgs_tts3 import FAMILY
    from higgs_train.llm.delay import revert_delay
    from higgs_train.llm.stops import StopRules
    from higgs_train.tokenizer import AudioTokenizer
    from inference.engine import Engine, Plan
    from inference.request import Request
    from inference.sampling import SamplingConfig

    cases, tensors = ref
    model, tok = ours
    codec = AudioTokenizer.from_pretrained(FIX / "tiny", codec_config=json.loads((FIX / "tiny" / "codec_config.json").read_text()))
    engine = Engine(model, codec, tok, family=FAMILY, stops=StopRules.off(),
                    sampling=SamplingConfig(temperature=0, max_frames=40))
    case = cases["clone"]
    row = engine.row(Request(text=case["text"]), Plan([Reference(case["ref_text"], tensors["clone.ref_codes"].T)],
                                                      [case["text"]]))
    assert row.ids.tolist() == case["prompt_ids"]
    codes = engine.generate_codes([row], use_cache=use_cache)[0]
    assert codes.shape == (8, 40) and row.watch.reason == "max_frames"
    assert torch.equal(codes[:, :33], revert_delay(tensors["clone.greedy_frames"].T))
