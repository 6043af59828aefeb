"""Our DeepSpeed configs (configs/deepspeed/zero{2,3}.json) on CPU over gloo, one process.

Lightning's DeepSpeedStrategy refuses a CPU, so this drives deepspeed.initialize directly with the
same JSON, filling its "auto" values as Lightning does: a few steps of a tiny model, loss falls,
checkpoint saved, loaded into a fresh engine, and training continues identically.
"""
import json
import os

import pytest
import torch

from higgs_train.config import CONFIG_DIR
from higgs_train.llm import DualFFNConfig, DualFFNModel
from higgs_train.llm.lit import gather_zero3_state_dict

deepspeed = pytest.importorskip("deepspeed")


pytestmark = pytest.mark.usefixtures("one_thread")   # tests/conftest.py


CFG = DualFFNConfig.preset("full", vocab_size=64, hidden_size=32, intermediate_size=64, num_layers=2, num_heads=2,
                    num_kv_heads=1, head_dim=16, rope_scaling=None, dual_layers=[1])


@pytest.fixture(scope="module")
def gloo(tmp_path_factory):
    os.environ.setdefault("TORCH_EXTENSIONS_DIR", str(tmp_path_factory.mktemp("torch_extensions")))
    env = {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29533", "RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1"}
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    # One process has no peer to share memory with: skip JIT-building DeepSpeed's shared-memory
    # collective op (minutes of C++ on a busy 2-core box); gloo does the (trivial) collectives.
    import deepspeed.ops

    deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False
    deepspeed.init_distributed(dist_backend="gloo")
    yield
    torch.distributed.destroy_process_group()
    for k, v in old.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


def engine(stage: int, seed: int = 0):
    conf = json.loads((CONFIG_DIR / f"deepspeed/zero{stage}.json").read_text())
    assert conf["zero_optimization"]["stage"] == stage
    # the "auto" values Lightning fills in from the trainer
    conf.update(train_micro_batch_size_per_gpu=2, gradient_clipping=1.0, bf16={"enabled": False},
                zero_allow_untested_optimizer=True)
    torch.manual_seed(seed)
    model = DualFFNModel(CFG)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    eng, _, _, _ = deepspeed.initialize(model=model, optimizer=opt, config=conf)
    return eng


def batch():
    g = torch.Generator().manual_seed(1)
    B, T = 2, 24
    ids = torch.randint(0, 64, (B, T), generator=g)
    codes = torch.randint(0, 1024, (B, T, 8), generator=g)
    mask = torch.zeros(B, T, dtype=torch.bool)
    mask[:, 6:] = True
    labels = torch.full_like(codes, -100)
    labels[:, 6:-1] = codes[:, 7:]
    return ids, codes, mask, labels


def step(eng) -> float:
    loss = eng.module.loss(*batch())["loss"]
    eng.backward(loss)
    eng.step()
    return loss.item()


@pytest.mark.slow
@pytest.mark.parametrize("stage", [2, 3])
def test_zero_config_trains_saves_and_loads(gloo, tmp_path, stage):
    eng = engine(stage)
    losses = [step(eng) for _ in range(4)]
    assert losses[-1] < losses[0] - 0.1, losses
    eng.save_checkpoint(str(tmp_path), tag="s4")
    assert any(p.name.endswith("optim_states.pt") for p in (tmp_path / "s4").iterdir())
    after = [step(eng) for _ in range(2)]

    fresh = engine(stage, seed=99)     # different init: only the checkpoint can make it match
    fresh.load_checkpoint(str(tmp_path), tag="s4")
    resumed = [step(fresh) for _ in range(2)]
    assert all(abs(a - b) < 1e-5 for a, b in zip(after, resumed)), (after, resumed)

    sd = gather_zero3_state_dict(fresh.module, keep=True)
    if stage == 3:   # partitioned: export needs the gathered, whole tensors
        assert sd["layers.1.audio_mlp.up_proj.weight"].shape == (64, 32)
    else:
        assert sd is None
