"""Several `python -m MODULE ARG...` runs in ONE fresh interpreter, each run as `-m` runs it (runpy
with alter_sys: `__name__ == "__main__"`, sys.argv set), its stdout, stderr and exit status kept
apart. An interpreter start that imports torch costs 10-30 s on a loaded 2-core machine; tests
that only read a command's messages pay it once instead of once per command.

    [r1, r2] = run_as_main([("pkg.tool", ["--help"]), ("pkg.tool", ["bad=1"])], cwd=..., env=...)
    r1.returncode, r1.stdout, r1.stderr
"""
from __future__ import annotations

import json
import subprocess
import sys

MARK = "run_as_main results: "
SCRIPT = f"""
import contextlib, io, json, runpy, sys
results = []
for module, argv in json.loads(sys.argv[1]):
    out, err, code = io.StringIO(), io.StringIO(), 0
    sys.argv = [module, *argv]
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            runpy.run_module(module, run_name="__main__", alter_sys=True)
        except SystemExit as e:   # as the interpreter maps it: None 0, a number itself, anything else printed, 1
            code = 0 if e.code is None else e.code if isinstance(e.code, int) else 1
            if not isinstance(e.code, (int, type(None))):
                print(e.code, file=sys.stderr)
    results.append([code, out.getvalue(), err.getvalue()])
print({MARK!r} + json.dumps(results))
"""


def run_as_main(runs: list[tuple[str, list[str]]], timeout: float = 300, **kwargs) -> list[subprocess.CompletedProcess]:
    p = subprocess.run([sys.executable, "-c", SCRIPT, json.dumps([[m, list(a)] for m, a in runs])],
                       capture_output=True, text=True, timeout=timeout, **kwargs)
    lines = [line for line in p.stdout.splitlines() if line.startswith(MARK)]
    assert p.returncode == 0 and lines, p.stderr[-3000:]
    return [subprocess.CompletedProcess([sys.executable, "-m", m, *a], code, out, err)
            for (m, a), (code, out, err) in zip(runs, json.loads(lines[-1][len(MARK):]))]
