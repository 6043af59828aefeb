"""Higgs TTS 3 through `python -m higgs_train.train task=llm model=llm/tts3_tiny`: the size's family
builds the model, the family's prompts lay out the shards' samples (the same codes as v2's), the
supervised positions are the delay rule's (higgs_train/families/higgs_tts3/prompt.py), it learns,
and `task.init_from=` a release directory loads through the family."""
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from hydra import compose, initialize_config_dir

from higgs_train.config import CONFIG_DIR
from higgs_train.families import family_of
from higgs_train.families.higgs_tts3.model import HiggsTTS3Model
from higgs_train.llm.data import LLMStream, read_segments
from higgs_train.llm.delay import IGNORE
from higgs_train.llm.text_tokenizer import train_bpe
from higgs_train.shards import list_shards
from higgs_train.testing.synthetic_llm import write_synthetic_shards
from higgs_train.train import fit
from test_llm_train import losses

pytestmark = pytest.mark.usefixtures("one_thread")   # tests/conftest.py

RELEASE = Path(__file__).parent / "fixtures" / "release_v3" / "tiny"
MICRO = ["model.hidden_size=32", "model.intermediate_size=64", "model.num_layers=2", "model.num_heads=2",
         "model.num_kv_heads=1", "model.head_dim=16"]
NO_DIALOGUE = "data.kinds={tts:0.6,clone:0.4,dialogue:0}"   # the family has no dialogue layout


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    d = tmp_path_factory.mktemp("tts3_corpus")
    rows = write_synthetic_shards(d / "shards", n_sources=3, segments_per_source=6, words=(2, 5),
                                  samples_per_shard=6)
    train_bpe([r["text"] for r in rows], d / "tok", vocab_size=300)   # no v3 special tokens: the family adds them
    return d


def config(corpus, run_dir, *extra, tokenizer=None):
    with initialize_config_dir(str(CONFIG_DIR), version_base="1.3"):
        return compose("train", overrides=[
            "task=llm", "model=llm/tts3_tiny", "trainer=cpu", f"data.shards={corpus / 'shards'}",
            f"text_tokenizer={tokenizer or corpus / 'tok'}", f"run_dir={run_dir}", "data.max_tokens=800",
            "data.max_len=400", "data.buffer=16", "data.num_workers=0", "trainer.log_every_n_steps=1",
            "trainer.enable_progress_bar=false", "task.optim.warmup_steps=2", "task.optim.lr=3e-3",
            "checkpoint_every_n_steps=100", NO_DIALOGUE, *extra])


def test_size_builds_the_family_model_and_refuses_dialogue(corpus, tmp_path):
    from higgs_train.llm.lit import build

    module, dm = build(config(corpus, tmp_path, *MICRO))
    assert type(module.model) is HiggsTTS3Model and module.hparams["model_cfg"]["family"] == "higgs_tts3"
    tok = dm.tokenizer
    assert "<|audio|>" in tok.get_added_vocab() and module.model.cfg.vocab_size == 64 * -(-len(tok) // 64)
    # the tied text head is the text embedding: it trains through the inputs, not frozen
    assert module.model.text_head.weight is module.model.text_embed.weight and module.model.text_embed.weight.requires_grad
    module, dm = build(config(corpus, tmp_path, *MICRO, "data.kinds.dialogue=0.15"))
    with pytest.raises(ValueError, match="asks for dialogue samples.*set data.kinds.dialogue=0"):
        dm.train_dataloader()
    with pytest.raises(ValueError, match="is a higgs_tts3 model, but the model size is a higgs_v2 one"):
        build(config(corpus, tmp_path, "model=llm/tiny", f"task.init_from={RELEASE}", "data.kinds.dialogue=0"))


def test_training_batches_supervise_the_delay_rule_positions(corpus):
    """The data stream's batches (collate) carry 8 T + 7 labels per T-frame segment, none where the
    next input is a forced begin-of-stream code; model.loss is the mean over codebooks of the
    cross-entropy at exactly those labels."""
    from higgs_train.families.higgs_tts3.prompt import Tts3Prompts, load_text_tokenizer
    from higgs_train.families.higgs_tts3.config import Tts3Config

    tok = load_text_tokenizer(corpus / "tok")
    cfg = Tts3Config.preset("tts3_tiny", vocab_size=64 * -(-len(tok) // 64), hidden_size=32, intermediate_size=64,
                            num_layers=2, num_heads=2, num_kv_heads=1, head_dim=16)
    stream = LLMStream(str(corpus / "shards"), tok, kinds={"tts": 1.0}, max_tokens=800, max_len=400, buffer=16,
                       max_group=8, max_dialogue_turns=2, seed=0, epochs=1, prompts=Tts3Prompts(tok, cfg))
    frames = [s.codes.shape[1] for s in read_segments(list_shards(corpus / "shards"))]
    torch.manual_seed(0)
    model = HiggsTTS3Model(cfg).eval()
    n_labels, n_rows, worst = 0, 0, 0.0
    for b in stream:
        lab, codes, mask = b["audio_labels"], b["audio_codes"], b["audio_mask"]
        on = lab != IGNORE
        n_labels += int(on.sum())
        n_rows += lab.shape[0]
        for i in range(lab.shape[0]):   # per row: T + 7 target rows, 8 T + 7 labels, 7 ends (codebooks 0..6)
            T = int(mask[i].sum()) - 7
            assert int(on[i].sum()) == 8 * T + 7 and int((lab[i] == 1025).sum()) == 7
        nxt_bos = (codes.roll(-1, 1) == 1024) & mask.roll(-1, 1)[..., None]
        assert int(nxt_bos.sum()) == 28 * lab.shape[0] and not (on & nxt_bos).any()   # forced BOS: never a label
        with torch.no_grad():
            out = model.loss(b["input_ids"], codes, mask, lab, b["text_labels"])
            logits = model(b["input_ids"], codes, mask).audio_logits
        per_cb = [F.cross_entropy(logits[..., c, :][on[..., c]], lab[..., c][on[..., c]]) for c in range(8)]
        worst = max(worst, abs(out["audio_loss"].item() - torch.stack(per_cb).mean().item()))
    assert n_rows == len(frames) and n_labels == sum(8 * T + 7 for T in frames), (n_labels, frames)
    assert worst < 1e-5


def test_train_task_learns_and_exports(corpus, tmp_path):
    export = fit(config(corpus, tmp_path / "a", *MICRO, "trainer.max_steps=24"))
    a = losses(tmp_path / "a")
    print(f"tts3 train task=llm: loss step 0 {a[0]:.3f} -> step 23 {a[23]:.3f}")
    assert sorted(a) == list(range(24)) and a[0] - a[23] > 1.0, a   # it learns
    model, layout = family_of(export).load(export)
    assert type(model) is HiggsTTS3Model and layout == "native" and model.cfg.hidden_size == 32
    assert "<|tts|>" in family_of(export).text_tokenizer(export).get_added_vocab()


def test_init_from_a_release_directory(corpus, tmp_path):
    """task.init_from= the release-layout tiny checkpoint (audio tokenizer bundled): its weights,
    and its config over the size's; a few small steps move them a little."""
    export = fit(config(corpus, tmp_path, f"task.init_from={RELEASE}", "trainer.max_steps=2", "task.optim.lr=1e-4",
                        tokenizer=RELEASE))
    base, _ = family_of(RELEASE).load(RELEASE)
    tuned, layout = family_of(export).load(export)
    assert layout == "native" and tuned.cfg == base.cfg and tuned.cfg.hidden_size == 32   # not tts3_tiny's 128
    deltas = {k: (v - base.state_dict()[k]).abs().max().item() for k, v in tuned.state_dict().items()}
    assert 0 < max(deltas.values()) < 5e-3, deltas   # trained from the release's weights
    assert len(losses(tmp_path)) == 2
