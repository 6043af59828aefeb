"""The text tokenizer: any Hugging Face tokenizer directory, plus the chat and audio special tokens.

    tok = load_text_tokenizer(DIR)          # adds the special tokens it lacks
    train_bpe(texts, DIR, vocab_size=2000)  # a small byte-level BPE for tests and the demo
    special_token_ids(tok)                  # the ids an export states (config special_tokens)

A Llama-3 tokenizer (<|begin_of_text|> at 128000) gets the release's ids (docs/model.md, "Token ids"): its
reserved tokens at 128011-128019 are renamed to the Higgs names, as the released tokenizer has them; the
delay token keeps its Llama-3 name <|reserved_special_token_6|> (128014). Any other tokenizer (our
BPE) keeps the ids it has, and those it lacks are appended; the export stores them with the model.

CLI (train a BPE on manifest transcripts and save it as a tokenizer directory):
    python -m higgs_train.llm.text_tokenizer texts=OUT/manifest.jsonl out=DIR [vocab_size=2000]
`texts` is a .jsonl manifest (its `text` fields), a .txt file (one text per line), or a
comma-separated list of them.
"""
from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator

from omegaconf import MISSING

from higgs_train.files import atomic_dir

# Llama-3 chat tokens and the Higgs audio tokens (docs/model.md, "Token ids"), in a fixed order so a trained
# tokenizer gives them the same ids every time.
CHAT_TOKENS = ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>",
               "<|eot_id|>", "<|scene_desc_start|>", "<|scene_desc_end|>"]
DELAY_TOKEN = "<|reserved_special_token_6|>"   # input id of the last K-1 positions of a finished stream
AUDIO_TOKENS = ["<|audio_bos|>", "<|audio_eos|>", "<|audio_out_bos|>", "<|AUDIO|>", "<|AUDIO_OUT|>", DELAY_TOKEN]
SPECIAL_TOKENS = CHAT_TOKENS + AUDIO_TOKENS
# the release's ids in the Llama-3 reserved block
RELEASE_IDS = {"<|audio_bos|>": 128011, "<|audio_eos|>": 128012, "<|audio_out_bos|>": 128013, DELAY_TOKEN: 128014,
               "<|AUDIO|>": 128015, "<|AUDIO_OUT|>": 128016, "<|scene_desc_start|>": 128018,
               "<|scene_desc_end|>": 128019}
# config special_tokens keys (the release's config fields they map to: higgs_train/llm/layouts.py)
ROLES = {"audio_bos": "<|audio_bos|>", "audio_eos": "<|audio_eos|>", "audio_out_bos": "<|audio_out_bos|>",
         "audio_delay": DELAY_TOKEN, "audio_in": "<|AUDIO|>", "audio_out": "<|AUDIO_OUT|>", "pad": "<|end_of_text|>"}


def is_llama3(tok) -> bool:
    vocab = tok.get_vocab()
    return vocab.get("<|begin_of_text|>") == 128000 and vocab.get("<|eot_id|>") == 128009


def _release_names(tok):
    """A Llama-3 tokenizer whose reserved tokens at RELEASE_IDS carry the Higgs names."""
    from tokenizers import Tokenizer

    by_id = {i: name for name, i in RELEASE_IDS.items()}
    spec = json.loads(tok.backend_tokenizer.to_str())
    changed = False
    for added in spec["added_tokens"]:
        want = by_id.get(added["id"])
        if want is None or added["content"] == want:
            continue
        if not added["content"].startswith("<|reserved_special_token_"):
            raise ValueError(f"Llama-3 tokenizer has {added['content']!r} at id {added['id']}, where the "
                             f"release keeps {want}")
        added["content"] = want
        changed = True
    if not changed:
        return tok
    # added_tokens_decoder would re-add the old names as new tokens
    kw = {k: v for k, v in tok.init_kwargs.items()
          if k not in ("tokenizer_object", "tokenizer_file", "added_tokens_decoder", "vocab_file")}
    return type(tok)(tokenizer_object=Tokenizer.from_str(json.dumps(spec)), **kw)


def load_text_tokenizer(path):
    """A transformers fast tokenizer from a local directory, with every SPECIAL_TOKENS entry present."""
    from transformers import AutoTokenizer

    p = Path(path)
    if not p.is_dir():
        raise FileNotFoundError(f"text tokenizer directory {p} does not exist "
                                "(train one with `python -m higgs_train.llm.text_tokenizer texts=... out=...`)")
    tok = AutoTokenizer.from_pretrained(str(p), local_files_only=True)
    if is_llama3(tok):
        tok = _release_names(tok)
        if tok.pad_token is None:   # the release pads with <|end_of_text|> (128001)
            tok.pad_token = "<|end_of_text|>"
    vocab = tok.get_vocab()
    missing = [t for t in SPECIAL_TOKENS if t not in vocab]
    if missing:
        tok.add_special_tokens({"additional_special_tokens": missing}, replace_extra_special_tokens=False)
    return tok


def special_token_ids(tok) -> dict[str, int]:
    """{role: id} for the config's special_tokens (ROLES keys), read from a loaded text tokenizer."""
    vocab = tok.get_vocab()
    return {role: vocab[name] for role, name in ROLES.items()}


def iter_texts(spec) -> Iterator[str]:
    for part in str(spec).split(","):
        path = Path(part)
        with open(path, encoding="utf-8") as f:
            for line in f:
                line = line.strip()
                if not line:
                    continue
                if path.suffix == ".jsonl":
                    try:
                        text = json.loads(line).get("text") or ""
                    except json.JSONDecodeError:
                        continue  # a bad row costs one text, not the run
                else:
                    text = line
                if text.strip():
                    yield text.strip()


def train_bpe(texts: Iterable[str], out_dir, vocab_size: int = 2000):
    """Train a byte-level BPE on `texts`, save it as a tokenizer directory, return the loaded tokenizer."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    bpe.train_from_iterator(texts, trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=bpe, bos_token="<|begin_of_text|>",
                                   eos_token="<|eot_id|>", pad_token="<|end_of_text|>")
    out = Path(out_dir)
    with atomic_dir(out) as tmp:
        fast.save_pretrained(str(tmp))
    return load_text_tokenizer(out)


@dataclass
class Args:
    texts: str = field(default=MISSING, metadata={"help": ".jsonl manifest(s) or .txt file(s), comma-separated"})
    out: str = field(default=MISSING, metadata={"help": "the tokenizer directory to write"})
    vocab_size: int = field(default=2000, metadata={"help": "BPE vocabulary size (special tokens included)"})


def main(argv: list[str]) -> None:
    from higgs_train.cli import parse

    args = parse(Args, argv, "python -m higgs_train.llm.text_tokenizer", "Train a byte-level BPE on transcripts.")
    tok = train_bpe(iter_texts(args.texts), args.out, args.vocab_size)
    print(f"saved a {len(tok)}-token BPE tokenizer to {args.out}")


if __name__ == "__main__":
    main(sys.argv[1:])
