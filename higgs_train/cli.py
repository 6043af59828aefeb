"""Command lines of the small tools that are not Hydra apps (the synthetic corpus, the text
tokenizer, reports, comparisons, every benchmark): `key=value` arguments read into a dataclass by OmegaConf, as
Hydra reads the big entry points. So types are checked (`seed=x` is an error, not a crash later),
an unknown or missing key is an error that names it, and `--help` lists every option with its
default and its help (the dataclass field's `metadata={"help": ...}`).

    @dataclass
    class Args:
        out: str = field(default=MISSING, metadata={"help": "output folder"})
        vocab_size: int = field(default=2000, metadata={"help": "BPE vocabulary"})

    args = parse(Args, sys.argv[1:], "python -m higgs_train.llm.text_tokenizer", __doc__)

`positional="runs"`: arguments without `=` are appended to that (list) field, for tools that
take a list of paths (`python -m higgs_train.evaluate.compare eval/base eval/me out=x.md`).
"""
from __future__ import annotations

import sys
from dataclasses import MISSING as DC_MISSING
from dataclasses import fields
from typing import TypeVar

from omegaconf import OmegaConf
from omegaconf.errors import ConfigKeyError, OmegaConfBaseException

T = TypeVar("T")


def help_text(schema, prog: str, doc: str | None = None) -> str:
    lines = [f"usage: {prog} " + " ".join(f"{f.name}=..." if _required(f) else f"[{f.name}=...]"
                                          for f in fields(schema))]
    if doc:
        lines += ["", doc.strip()]
    lines += ["", "options:"]
    for f in fields(schema):
        default = "(required)" if _required(f) else f"(default: {_default(f)!r})"
        lines.append(f"  {f.name:<16} {f.metadata.get('help', '')} {default}".rstrip())
    return "\n".join(lines)


def _required(f) -> bool:
    return f.default is DC_MISSING and f.default_factory is DC_MISSING or f.default == "???"


def _default(f):
    return f.default_factory() if f.default_factory is not DC_MISSING else f.default


class BadValue(ValueError):
    """A key=value the schema refuses (unknown key, wrong type); str() is the reason in one line."""


def typed(schema: type[T], dotlist: list[str], extend: tuple[str, list] | None = None) -> T:
    """key=value strings -> a `schema` instance (OmegaConf structured config: types checked, unknown
    keys refused, required fields present); extend=(field, values) appends to a list field. BadValue,
    its reason in one line, for any refusal."""
    try:
        cfg = OmegaConf.merge(OmegaConf.structured(schema), OmegaConf.from_dotlist(dotlist))
        if extend:
            cfg[extend[0]] = list(cfg[extend[0]]) + extend[1]
        missing = sorted(OmegaConf.missing_keys(cfg))
        if missing:
            raise BadValue(f"missing {', '.join(f'{k}=...' for k in missing)}")
        return OmegaConf.to_object(cfg)
    except OmegaConfBaseException as e:
        if isinstance(e, ConfigKeyError):
            raise BadValue(f"unknown option {e.full_key!r}") from None
        raise BadValue(str(e).splitlines()[0]) from None


def parse(schema: type[T], argv: list[str], prog: str, doc: str | None = None, positional: str | None = None) -> T:
    """argv -> a `schema` instance; `--help` prints help_text and exits 0; a bad command line
    prints the reason and the usage line to stderr and exits 2."""
    if any(a in ("-h", "--help", "help") for a in argv):
        print(help_text(schema, prog, doc))
        sys.exit(0)
    dotlist, extra = [], []
    for a in argv:
        (dotlist if "=" in a else extra).append(a)
    usage = help_text(schema, prog).splitlines()[0]
    if extra and not positional:
        _fail(f"{extra[0]!r} is not key=value", usage)
    try:
        return typed(schema, dotlist, (positional, extra) if extra else None)
    except BadValue as e:
        _fail(str(e), usage + ("" if str(e).startswith("missing") else "\n(--help lists the options)"))


def _fail(reason: str, usage: str):
    print(f"error: {reason}\n{usage}", file=sys.stderr)
    sys.exit(2)
