"""key=value command lines for the small scripts that are not Hydra apps (synth, tiny_pyannote)."""
from __future__ import annotations

import sys


def key_value_args(argv: list[str], defaults: dict[str, str], usage: str, required=("out_dir",)) -> dict | None:
    """`defaults` updated from `key=value` arguments; None (after printing why and `usage` to
    stderr) for an unknown key, an argument without `=`, or a missing required key."""
    args = dict(defaults)
    for a in argv:
        k, sep, v = a.partition("=")
        if not sep or k not in (*required, *defaults):
            print(f"bad argument {a!r}\n{usage}", file=sys.stderr)
            return None
        args[k] = v
    if any(k not in args for k in required):
        print(usage, file=sys.stderr)
        return None
    return args
