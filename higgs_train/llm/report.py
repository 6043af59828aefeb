"""After a run: loss curve PNG and teacher-forced code accuracy on training utterances.

    python -m higgs_train.llm.report run_dir=RUN shards=DIR [utterances=4]
writes RUN/loss.png and RUN/report.json ({"code_acc": [...], "mean_code_acc": ...}); the model
and tokenizer come from RUN/export.
"""
from __future__ import annotations

import csv
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

import torch
from omegaconf import MISSING

from higgs_train.files import atomic_path
from higgs_train.llm.data import collate, read_segments
from higgs_train.llm.model import DualFFNModel
from higgs_train.llm.prompt import tts_sample
from higgs_train.llm.text_tokenizer import load_text_tokenizer
from higgs_train.shards import list_shards
from higgs_train.llm.checkpoints import load_llm


@torch.no_grad()
def teacher_forced_accuracy(model: DualFFNModel, sample) -> float:
    """Share of real codes (not stream BOS/EOS) whose argmax, given the true past, is right."""
    b = collate([sample])
    model.eval()
    return model.loss(b["input_ids"], b["audio_codes"], b["audio_mask"], b["audio_labels"])["code_acc"].item()


def plot_losses(run_dir, out_png) -> int:
    """Plot train/loss (and per-codebook losses) from the run's CSV logs; returns the points drawn."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = []
    for f in sorted(Path(run_dir).glob("logs/**/metrics.csv")):
        rows += [r for r in csv.DictReader(open(f)) if r.get("train/loss")]
    rows.sort(key=lambda r: int(r["step"]))
    steps = [int(r["step"]) for r in rows]
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(steps, [float(r["train/loss"]) for r in rows], label="loss", color="black")
    for k in (0, 7):
        key = f"train/cb{k}_loss"
        if rows and key in rows[0]:
            ax.plot(steps, [float(r[key]) for r in rows], label=f"codebook {k}", alpha=0.6)
    ax.set_xlabel("step")
    ax.set_ylabel("cross-entropy")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    with atomic_path(out_png, keep_ext=True) as tmp:
        fig.savefig(tmp, dpi=100)
    plt.close(fig)
    return len(steps)


@dataclass
class Args:
    run_dir: str = field(default=MISSING, metadata={"help": "the LLM training run (its export/ and logs/)"})
    shards: str = field(default=MISSING, metadata={"help": "shards whose first utterances are scored"})
    utterances: int = field(default=4, metadata={"help": "utterances scored by teacher-forced code accuracy"})


def main(argv: list[str]) -> None:
    from higgs_train.cli import parse

    args = parse(Args, argv, "python -m higgs_train.llm.report", __doc__)
    run, n = Path(args.run_dir), args.utterances
    model = load_llm(run / "export")[0]
    tok = load_text_tokenizer(run / "export")
    accs = []
    for seg in read_segments(list_shards(args.shards)):
        s = tts_sample(tok, seg.text, seg.codes, num_codebooks=model.cfg.num_codebooks,
                       codebook_size=model.cfg.codebook_size)
        accs.append(teacher_forced_accuracy(model, s))
        print(f"{seg.key}: teacher-forced code accuracy {accs[-1]:.3f} ({seg.codes.shape[1]} frames)")
        if len(accs) == n:
            break
    points = plot_losses(run, run / "loss.png")
    report = {"code_acc": accs, "mean_code_acc": sum(accs) / max(1, len(accs)), "loss_points": points}
    (run / "report.json").write_text(json.dumps(report, indent=2))
    print(f"mean {report['mean_code_acc']:.3f}; loss curve ({points} steps) in {run / 'loss.png'}")


if __name__ == "__main__":
    main(sys.argv[1:])
