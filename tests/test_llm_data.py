"""LLM samples and batches: chat format, labels, sample kinds, padding, determinism, skipping."""
import io
import json
import tarfile

import numpy as np
import pytest
import torch

from higgs_train.llm.data import LLMStream, bucket, collate, read_segments
from higgs_train.llm.delay import strip_stream
from higgs_train.llm.prompt import Message, clone_sample, dialogue_sample, encode_chat, system_message, tts_sample
from higgs_train.testing.synthetic_llm import write_synthetic_shards
from higgs_train.llm.text_tokenizer import SPECIAL_TOKENS, load_text_tokenizer, main as tok_cli
from higgs_train.shards import list_shards


pytestmark = pytest.mark.usefixtures("one_thread")   # tests/conftest.py


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    d = tmp_path_factory.mktemp("llm_data")
    rows = write_synthetic_shards(d / "shards", n_sources=6, segments_per_source=10, samples_per_shard=12)
    (d / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows) + "{broken\n")
    tok_cli([f"texts={d / 'manifest.jsonl'}", f"out={d / 'tok'}", "vocab_size=400"])
    return d, rows, load_text_tokenizer(d / "tok")


def stream(d, tok, **kw):
    args = dict(kinds={"tts": 0.5, "clone": 0.3, "dialogue": 0.2}, max_tokens=2048, max_len=512, buffer=64,
                max_group=32, max_dialogue_turns=3, seed=0)
    return LLMStream(d / "shards", tok, **{**args, **kw})


def take(ds, n):
    it = iter(ds)
    return [next(it) for _ in range(n)]


def test_tokenizer_cli_and_special_tokens(corpus, tmp_path):
    d, rows, tok = corpus
    assert (d / "tok/tokenizer.json").exists()
    ids = [tok.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS]
    assert len(set(ids)) == len(SPECIAL_TOKENS) and tok.unk_token_id not in ids
    text = rows[0]["text"]
    assert tok.decode(tok.encode(text, add_special_tokens=False)) == text
    # a tokenizer without the audio tokens gets them added on load
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    bare = Tokenizer(models.WordLevel({"a": 0, "[UNK]": 1}, unk_token="[UNK]"))
    bare.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=bare).save_pretrained(str(tmp_path / "bare"))
    t2 = load_text_tokenizer(tmp_path / "bare")
    assert len(t2) == 2 + len(SPECIAL_TOKENS)
    assert t2.encode("<|AUDIO_OUT|>", add_special_tokens=False) == [t2.convert_tokens_to_ids("<|AUDIO_OUT|>")]
    with pytest.raises(FileNotFoundError, match="nope"):
        load_text_tokenizer(tmp_path / "nope")


def test_tts_sample_layout_and_labels(corpus):
    _, _, tok = corpus
    codes = np.random.default_rng(0).integers(0, 1024, (8, 5))
    s = tts_sample(tok, "the quick fox", codes, scene="a quiet room")
    text = tok.decode(s.input_ids[~s.audio_mask])
    assert text.startswith("<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nGenerate audio following "
                           "instruction.\n\n<|scene_desc_start|>\na quiet room\n<|scene_desc_end|><|eot_id|>")
    assert "<|start_header_id|>user<|end_header_id|>\n\nthe quick fox<|eot_id|>" in text
    assert text.endswith("<|start_header_id|>assistant<|end_header_id|>\n\n<|audio_out_bos|><|audio_eos|><|eot_id|>")
    pos = np.flatnonzero(s.audio_mask)
    assert len(pos) == 5 + 2 + 7 and np.all(np.diff(pos) == 1)     # BOS frame + 5 + EOS frame, delayed
    # the release's ids: <|AUDIO_OUT|>, and the delay token at the last K-1 positions
    assert (s.input_ids[pos[:-7]] == tok.convert_tokens_to_ids("<|AUDIO_OUT|>")).all()
    assert (s.input_ids[pos[-7:]] == tok.convert_tokens_to_ids("<|reserved_special_token_6|>")).all()
    assert np.array_equal(strip_stream(torch.from_numpy(s.audio_codes[pos].T), 1024, 1025).numpy(), codes)
    # shifted labels: position t carries frame t+1; only positions before audio frames carry audio labels
    lab = s.audio_labels
    assert (lab[pos[-1]:] == -100).all() and (lab[:pos[0]] == -100).all()
    sup = lab[pos[:-1]]
    nxt = s.audio_codes[pos[1:]]
    assert np.array_equal(sup[sup != -100], nxt[sup != -100])
    assert ((sup >= 0) & (sup < 1024)).sum() == codes.size               # every real code is a target exactly once
    assert (sup == 1025).sum(0).tolist() == [1] * 8                      # each codebook's EOS once
    assert (sup == 1024).sum() == 0                                      # BOS frame and BOS padding: never
    assert (sup == -100).sum() == 8 * 7                                  # the delay's BOS and EOS padding
    # text targets: <|audio_out_bos|>, <|audio_eos|>, <|eot_id|> of the assistant turn
    t_targets = s.text_labels[s.text_labels != -100]
    assert tok.convert_ids_to_tokens(t_targets.tolist()) == ["<|audio_out_bos|>", "<|audio_eos|>", "<|eot_id|>"]


def test_clone_and_dialogue_samples(corpus):
    _, _, tok = corpus
    rng = np.random.default_rng(0)
    ref, tgt = rng.integers(0, 1024, (8, 4)), rng.integers(0, 1024, (8, 6))
    s = clone_sample(tok, "a lazy dog", ref, "the quick fox", tgt)
    text = tok.decode(s.input_ids[~s.audio_mask])
    assert text.count("<|audio_out_bos|>") == 2 and text.index("a lazy dog") < text.index("the quick fox")
    assert ((s.audio_labels >= 0) & (s.audio_labels < 1024)).sum() == tgt.size        # the reference audio is context, not target
    first_turn_end = np.flatnonzero(s.audio_mask)[4 + 2 + 7 - 1]
    assert (s.audio_labels[: first_turn_end + 1] == -100).all()
    assert (s.audio_labels == 1025).sum() == 8
    d = dialogue_sample(tok, [("A", "hello there", ref), ("B", "hi", tgt), ("A", "bye", ref)])
    dtext = tok.decode(d.input_ids[~d.audio_mask])
    assert "[SPEAKER0] hello there [SPEAKER1] hi [SPEAKER0] bye" in dtext
    assert d.audio_mask.sum() == 4 + 6 + 4 + 2 + 7
    g = encode_chat(tok, [system_message(), Message("user", "hi")], generation=True)
    # the release's generation prompt ends with the opened audio turn; the engine feeds the BOS frame
    assert tok.decode(g.input_ids).endswith("<|start_header_id|>assistant<|end_header_id|>\n\n<|audio_out_bos|>")
    assert g.audio_mask.sum() == 0


def test_stream_kinds_padding_and_determinism(corpus):
    d, rows, tok = corpus
    batches = take(stream(d, tok), 12)
    again = take(stream(d, tok), 12)
    for a, b in zip(batches, again):
        assert all(torch.equal(a[k], b[k]) for k in a)
    real = sum(b["num_tokens"].item() for b in batches)
    padded = sum(b["num_positions"].item() for b in batches)
    assert padded <= 12 * 2048 and all(b["num_positions"] <= 2048 for b in batches)
    print(f"padding fraction {1 - real / padded:.3f}")
    assert 1 - real / padded < 0.15
    texts = [tok.decode(ids) for b in batches for ids in b["input_ids"]]
    n_clone = sum(t.count("<|audio_out_bos|>") == 2 for t in texts)
    n_dialogue = sum("[SPEAKER1]" in t for t in texts)
    assert n_clone > 0.1 * len(texts) and n_dialogue > 0.05 * len(texts), (n_clone, n_dialogue, len(texts))
    assert {b["epoch"].item() for b in batches} >= {0, 1}     # endless: the next epoch follows
    other = take(stream(d, tok, seed=1), 3)
    assert not torch.equal(other[0]["input_ids"], batches[0]["input_ids"]) or \
        other[0]["input_ids"].shape != batches[0]["input_ids"].shape


def test_skip_resumes_at_the_same_batch(corpus):
    d, _, tok = corpus
    full = take(stream(d, tok), 9)
    resumed = take(stream(d, tok, skip_batches=5), 4)
    for a, b in zip(full[5:], resumed):
        assert torch.equal(a["input_ids"], b["input_ids"]) and torch.equal(a["audio_labels"], b["audio_labels"])


def test_ranks_read_disjoint_shards(corpus):
    d, _, tok = corpus
    for epoch in (0, 1):
        mine = [stream(d, tok, rank=r, world_size=2).my_shards(epoch) for r in (0, 1)]
        assert all(by_shard for _, by_shard in mine)
        a, b = set(mine[0][0]), set(mine[1][0])
        assert not a & b and a | b == set(list_shards(d / "shards")) and abs(len(a) - len(b)) <= 1
    # more readers than shards: every reader reads all shards and keeps every n-th source group
    many = stream(d, tok, rank=3, world_size=16)
    shards, by_shard = many.my_shards(0)
    assert not by_shard and len(shards) == len(list_shards(d / "shards"))


def test_bad_samples_are_skipped(tmp_path, corpus):
    _, _, tok = corpus
    write_synthetic_shards(tmp_path, n_sources=1, segments_per_source=3)
    with tarfile.open(tmp_path / "shard-000009.tar", "w") as tar:   # bad json, no codes, bad codes
        for name, data in [("x1.json", b"{not json"), ("x1.codes.npy", b"zz"), ("x2.json", b'{"text": "hi"}')]:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    segs = list(read_segments(list_shards(tmp_path)))
    assert len(segs) == 3


def test_bucketing_respects_budget():
    from higgs_train.llm.prompt import Sample

    def fake(n):
        return Sample(np.zeros(n, np.int64), np.zeros((n, 8), np.int64), np.zeros(n, bool),
                      np.full((n, 8), -100), np.full(n, -100))

    lengths = np.random.default_rng(0).integers(50, 400, 300)
    batches = bucket([fake(int(n)) for n in lengths], 1600)
    assert sum(len(b) for b in batches) == 300
    assert all(len(b) * max(len(s) for s in b) <= 1600 for b in batches)
    c = [collate(b) for b in batches]
    pad = 1 - sum(x["num_tokens"].item() for x in c) / sum(x["num_positions"].item() for x in c)
    assert pad < 0.05


@pytest.mark.slow
def test_skip_with_dataloader_workers(corpus):
    """Workers are read round-robin; each skips its own share of the consumed batches."""
    from torch.utils.data import DataLoader

    d, _, tok = corpus

    def loader(skip):
        return iter(DataLoader(stream(d, tok, skip_batches=skip), batch_size=None, num_workers=2))

    full, resumed = loader(0), loader(5)
    want = [next(full) for _ in range(9)][5:]
    got = [next(resumed) for _ in range(4)]
    for a, b in zip(want, got):
        assert torch.equal(a["input_ids"], b["input_ids"]) and torch.equal(a["audio_codes"], b["audio_codes"])
