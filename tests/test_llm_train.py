"""LLM training through the shared entry point: a short run, export, and exact resume."""
import csv
import json
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir

from higgs_train.config import CONFIG_DIR
from higgs_train.llm import DualFFNModel
from higgs_train.testing.synthetic_llm import write_synthetic_shards
from higgs_train.llm.text_tokenizer import SPECIAL_TOKENS, load_text_tokenizer, train_bpe
from higgs_train.train import fit
from higgs_train.llm.checkpoints import load_llm

pytestmark = pytest.mark.usefixtures("one_thread")   # tests/conftest.py


MICRO = ["model.hidden_size=32", "model.intermediate_size=64", "model.num_layers=2", "model.num_heads=2",
         "model.num_kv_heads=1", "model.head_dim=16", "model.dual_layers=[1]"]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    d = tmp_path_factory.mktemp("llm_corpus")
    rows = write_synthetic_shards(d / "shards", n_sources=3, segments_per_source=6, words=(2, 5),
                                  samples_per_shard=6)
    train_bpe([r["text"] for r in rows], d / "tok", vocab_size=300)
    return d


def config(corpus, run_dir, *extra):
    with initialize_config_dir(str(CONFIG_DIR), version_base="1.3"):
        return compose("train", overrides=[
            "task=llm", "model=llm/tiny", "trainer=cpu", f"data.shards={corpus / 'shards'}",
            f"text_tokenizer={corpus / 'tok'}", f"run_dir={run_dir}", "data.max_tokens=600", "data.max_len=300",
            "data.buffer=16", "data.num_workers=0", "trainer.log_every_n_steps=1",
            "trainer.enable_progress_bar=false", "task.optim.warmup_steps=2", "task.optim.lr=3e-3",
            "checkpoint_every_n_steps=3", *MICRO, *extra])


def losses(run_dir) -> dict[int, float]:
    out = {}
    for f in sorted(Path(run_dir).glob("logs/**/metrics.csv")):
        for row in csv.DictReader(open(f)):
            if row.get("train/loss"):
                out[int(row["step"])] = float(row["train/loss"])
    return out


@pytest.mark.slow
def test_train_export_and_exact_resume(corpus, tmp_path):
    full = fit(config(corpus, tmp_path / "a", "trainer.max_steps=6"))
    # interrupted: stops after step 3 (same 6-step schedule), then resumes from last.ckpt
    fit(config(corpus, tmp_path / "b", "trainer.max_steps=3", "task.optim.decay_steps=6"))
    assert (tmp_path / "b/checkpoints/last.ckpt").exists()
    fit(config(corpus, tmp_path / "b", "trainer.max_steps=6"))
    a, b = losses(tmp_path / "a"), losses(tmp_path / "b")
    assert sorted(a) == list(range(6)) and sorted(b) == list(range(6)), (a, b)
    for step in range(6):
        assert abs(a[step] - b[step]) < 1e-6, (step, a[step], b[step])
    assert a[5] < a[0]   # it learns
    from higgs_train.llm.report import plot_losses

    assert plot_losses(tmp_path / "a", tmp_path / "loss.png") == 6 and (tmp_path / "loss.png").stat().st_size > 5000

    # export: what inference loads
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= {p.name for p in full.iterdir()}
    model = load_llm(full)[0]
    assert json.loads((full / "config.json").read_text())["dual_layers"] == [1]
    tok = load_text_tokenizer(full)
    assert all(t in tok.get_vocab() for t in SPECIAL_TOKENS)
    assert model.cfg.vocab_size >= len(tok)
    ids = torch.tensor([tok.encode("the quick fox", add_special_tokens=False)])
    assert model(ids).text_logits.shape == (1, ids.shape[1], model.cfg.vocab_size)
    ckpt = torch.load(tmp_path / "b/checkpoints/last.ckpt", weights_only=False)
    assert ckpt["hyper_parameters"]["model_cfg"]["hidden_size"] == 32   # config travels in checkpoints


def test_freeze_text_trains_audio_parts_only(corpus, tmp_path):
    from higgs_train.llm.lit import build

    module, _ = build(config(corpus, tmp_path, "task.freeze_text=true"))
    trainable = {n for n, p in module.model.named_parameters() if p.requires_grad}
    assert trainable == set(module.model.audio_parameter_names())
    assert "layers.1.audio_mlp.up_proj.weight" in trainable and "audio_head.weight" in trainable
    assert not any(n.startswith(("text_", "norm")) or ".attn." in n or ".mlp." in n for n in trainable)
    # without text loss, the text head gets no gradient: frozen; with it, trained
    module, _ = build(config(corpus, tmp_path))
    assert not module.model.text_head.weight.requires_grad and module.model.layers[0].mlp.up_proj.weight.requires_grad
    module, _ = build(config(corpus, tmp_path, "task.text_loss_weight=0.1"))
    assert module.model.text_head.weight.requires_grad


@pytest.mark.slow
def test_tiny_model_memorises_training_utterances(tmp_path):
    """Teacher-forced code accuracy >= 0.9 on training utterances after a few dozen steps."""
    from higgs_train.llm import DualFFNConfig
    from higgs_train.llm.data import collate, read_segments
    from higgs_train.llm.prompt import tts_sample
    from higgs_train.llm.report import teacher_forced_accuracy
    from higgs_train.shards import list_shards

    rows = write_synthetic_shards(tmp_path / "s", n_sources=1, segments_per_source=4, words=(4, 6))
    tok = train_bpe([r["text"] for r in rows], tmp_path / "tok", vocab_size=300)
    samples = [tts_sample(tok, s.text, s.codes) for s in read_segments(list_shards(tmp_path / "s"))]
    b = collate(samples)
    torch.manual_seed(0)
    model = DualFFNModel(DualFFNConfig.preset("full", vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_layers=2,
                                       num_heads=4, num_kv_heads=2, head_dim=16, rope_scaling=None,
                                       rope_theta=10000.0))
    before = teacher_forced_accuracy(model, samples[0])
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
    for _ in range(40):
        model.train()
        loss = model.loss(b["input_ids"], b["audio_codes"], b["audio_mask"], b["audio_labels"])["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
    accs = [teacher_forced_accuracy(model, s) for s in samples]
    assert before < 0.05 and min(accs) >= 0.9, (before, accs)
