"""higgs_train.cli: the small tools' key=value command lines read the way Hydra reads the big
ones: typed, unknown and missing keys named, --help listing every option."""
from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Optional

import pytest
from omegaconf import MISSING

from higgs_train.cli import help_text, parse
from run_as_main import run_as_main  # tests/ is on sys.path

ROOT = Path(__file__).resolve().parents[1]


@dataclass
class Args:
    out: str = field(default=MISSING, metadata={"help": "where to write"})
    steps: int = field(default=3, metadata={"help": "how many"})
    rate: float = 0.5
    name: Optional[str] = None
    runs: List[str] = field(default_factory=list)


@pytest.fixture
def exits(capsys):
    def run(argv) -> tuple[int, str]:
        with pytest.raises(SystemExit) as e:
            parse(Args, argv, "prog")
        out = capsys.readouterr()
        return e.value.code, out.err or out.out
    return run


def test_values_are_typed_and_defaults_kept():
    a = parse(Args, ["out=x", "steps=7", "rate=1e-3"], "prog")
    assert (a.out, a.steps, a.rate, a.name, a.runs) == ("x", 7, 1e-3, None, [])
    assert parse(Args, ["out=x", "a", "b", "name=n"], "prog", positional="runs").runs == ["a", "b"]


def test_bad_command_lines_are_named(exits):
    for argv, reason in ((["out=x", "stepz=7"], "unknown option 'stepz'"), (["steps=7"], "missing out=..."),
                         (["out=x", "steps=seven"], "'seven'"), (["out=x", "a"], "'a' is not key=value")):
        code, err = exits(argv)
        assert code == 2 and reason in err and "usage: prog" in err, (argv, code, err)


def test_help_lists_every_option_with_its_default(exits):
    code, text = exits(["--help"])
    assert code == 0
    assert text.startswith("usage: prog out=... [steps=...]")
    assert "where to write (required)" in text and "how many (default: 3)" in text and "(default: 0.5)" in text
    assert help_text(Args, "prog") in text


SMALL_TOOLS = ["higgs_train.llm.text_tokenizer", "higgs_train.llm.report", "higgs_train.evaluate.compare",
               "data_pipeline.synth", "data_pipeline.tiny_pyannote"]


@pytest.fixture(scope="module")
def small_tool_runs() -> dict:
    """{module: (its run with an unknown key, its --help)}, all in one interpreter (tests/run_as_main.py)."""
    runs = run_as_main([(m, argv) for m in SMALL_TOOLS for argv in (["no_such_key=1"], ["--help"])], cwd=ROOT)
    return {m: runs[2 * i: 2 * i + 2] for i, m in enumerate(SMALL_TOOLS)}


@pytest.mark.parametrize("module", SMALL_TOOLS)
def test_every_small_tool_refuses_an_unknown_key(module, small_tool_runs):
    p, h = small_tool_runs[module]
    assert p.returncode == 2 and "unknown option 'no_such_key'" in p.stderr, (p.returncode, p.stderr[-500:])
    assert h.returncode == 0 and "options:" in h.stdout


BENCHMARKS = sorted(p.stem for p in (ROOT / "benchmarks").glob("*.py") if p.stem != "__init__")


@pytest.fixture(scope="module")
def benchmark_runs() -> dict:
    """{benchmark: (its run with an unknown key, its --help)}: nothing is measured, the command line is
    refused or printed before any work starts."""
    runs = run_as_main([(f"benchmarks.{b}", argv) for b in BENCHMARKS for argv in (["no_such_key=1"], ["--help"])],
                       cwd=ROOT)
    return {b: runs[2 * i: 2 * i + 2] for i, b in enumerate(BENCHMARKS)}


@pytest.mark.slow
def test_every_benchmark_takes_key_value_and_lists_its_keys(benchmark_runs):
    """One argument style for every `python -m benchmarks.NAME`: the small tools' (this module's)."""
    assert len(BENCHMARKS) >= 17
    for b, (p, h) in benchmark_runs.items():
        assert p.returncode == 2 and "unknown option 'no_such_key'" in p.stderr, (b, p.returncode, p.stderr[-500:])
        assert h.returncode == 0 and h.stdout.startswith(f"usage: python -m benchmarks.{b}"), (b, h.stdout[:200])
        keys = h.stdout.split("\noptions:\n", 1)[1].splitlines()
        assert keys and all("(default: " in k or "(required)" in k for k in keys), (b, keys)

