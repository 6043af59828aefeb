"""Shared by the cluster tests: a tiny LLM corpus and model overrides."""
import pytest


@pytest.fixture(scope="module")
def llm_corpus(tmp_path_factory):
    from higgs_train.testing.synthetic_llm import write_synthetic_shards
    from higgs_train.llm.text_tokenizer import train_bpe

    d = tmp_path_factory.mktemp("slurm_llm")
    rows = write_synthetic_shards(d / "shards", n_sources=3, segments_per_source=6, words=(2, 5), samples_per_shard=6)
    train_bpe([r["text"] for r in rows], d / "tok", vocab_size=300)
    return d


# smaller than configs/model/llm/tiny.yaml (the project's tiny size), for test speed
MICRO_LLM = ["model.hidden_size=32", "model.intermediate_size=64", "model.num_layers=2", "model.num_heads=2",
             "model.num_kv_heads=1", "model.head_dim=16", "model.dual_layers=[1]", "data.max_tokens=600",
             "data.max_len=300", "data.buffer=16", "data.num_workers=0", "++trainer.enable_progress_bar=false",
             "trainer.log_every_n_steps=1", "task.optim.warmup_steps=2"]


@pytest.fixture(scope="module")
def tokenizer_corpus(tmp_path_factory):
    """4 shards x 2 half-second clips of noisy chirps: enough for 2 ranks to read disjoint shards."""
    import numpy as np

    from higgs_train.shards import ShardWriter, encode_flac

    d = tmp_path_factory.mktemp("slurm_tok") / "shards"
    rng = np.random.default_rng(0)
    t = np.arange(12000) / 24000
    with ShardWriter(d) as w:
        for i in range(8):
            if i and i % 2 == 0:
                w.close_shard()
            wav = 0.5 * np.sin(2 * np.pi * (150 + 40 * i) * t * (1 + t)) + 0.05 * rng.standard_normal(len(t))
            w.write(f"c{i}", encode_flac(wav.astype(np.float32)), {"id": f"c{i}", "duration": 0.5})
    return d


# GAN from step 1 (step 0 is reconstruction only), so both optimizers step under DDP
# k-means on step 1's 10 frames, so the EMA codebooks move (and must stay in sync) from step 1
MICRO_TOKENIZER = ["model=tokenizer/tiny", "model.kmeans_frames=8", "task.data.crop_seconds=0.2", "task.data.batch_size=2",
                    "task.data.num_workers=0", "task.data.shuffle_buffer=2", "task.loss.gan_start_step=1",
                    "task.disc_channels=8", "++trainer.enable_progress_bar=false", "trainer.log_every_n_steps=1"]
