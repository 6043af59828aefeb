"""Shared by the cluster tests: a tiny LLM corpus and model overrides."""
import pytest


@pytest.fixture(scope="module")
def llm_corpus(tmp_path_factory):
    from higgs_train.llm.synthetic import write_synthetic_shards
    from higgs_train.llm.text_tokenizer import train_bpe

    d = tmp_path_factory.mktemp("slurm_llm")
    rows = write_synthetic_shards(d / "shards", n_sources=3, segments_per_source=6, words=(2, 5), samples_per_shard=6)
    train_bpe([r["text"] for r in rows], d / "tok", vocab_size=300)
    return d


TINY_LLM = ["model.hidden_size=32", "model.intermediate_size=64", "model.num_layers=2", "model.num_heads=2",
            "model.num_kv_heads=1", "model.head_dim=16", "model.dual_layers=[1]", "data.max_tokens=600",
            "data.max_len=300", "data.buffer=16", "data.num_workers=0", "++trainer.enable_progress_bar=false",
            "trainer.log_every_n_steps=1", "task.optim.warmup_steps=2"]
