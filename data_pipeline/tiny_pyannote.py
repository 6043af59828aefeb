"""Build a tiny pyannote.audio 4 speaker-diarization pipeline here, from generated conversations.

    python -m data_pipeline.tiny_pyannote out_dir=DIR [minutes=3] [steps=200] [seed=0]

It writes the same layout as a downloaded pipeline (e.g. pyannote/speaker-diarization-community-1),
so `diarization=pyannote diarization.path=DIR` loads it through the same code path:

    DIR/config.yaml                      pipeline class + "$model/<part>" references + hyper-parameters
    DIR/segmentation/pytorch_model.bin   PyanNet, tiny, trained here (powerset: <= 2 speakers per frame)
    DIR/embedding/pytorch_model.bin      XVectorMFCC, randomly initialised: a stand-in for WeSpeaker ResNet34
    DIR/plda/xvec_transform.npz, plda.npz   LDA + PLDA fitted on that embedding over the training speakers

It exists to test the pyannote backend without a model hub; its accuracy is not the point (the
segmentation model sees a few minutes of espeak speech, the embedding is random). For real work,
download a pretrained pipeline once and point diarization.path at its folder.
"""
from __future__ import annotations

import os
import shutil
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

os.environ["PYANNOTE_METRICS_ENABLED"] = "0"  # no telemetry; set before pyannote.audio is imported

import numpy as np
import torch
import yaml
from omegaconf import MISSING


CHUNK = 5.0  # segmentation window (s)


def _conversations(work: Path, minutes: float, seed: int) -> list[tuple[Path, list[dict], float]]:
    """Generated conversations of 2-3 voices at 16 kHz until `minutes` of audio: (path, utterances, duration)."""
    from data_pipeline.synth import make_conversation
    from higgs_train.audio import audio_info

    out, total, i = [], 0.0, 0
    while total < minutes * 60 or len(out) < 2:
        path = work / f"conv{i:03d}.wav"
        utts = make_conversation(path, n_speakers=2 + i % 2, n_turns=8, seed=seed * 1000 + i, sample_rate=16000)
        dur = audio_info(path).duration
        out.append((path, utts, dur))
        total += dur
        i += 1
    return out


def _protocol(files):
    from pyannote.core import Annotation, Segment, Timeline
    from pyannote.database.protocol import SpeakerDiarizationProtocol

    def item(path, utts, dur):
        ann = Annotation(uri=path.stem)
        for u in utts:
            ann[Segment(u["start"], u["end"])] = u["speaker"]
        return {"uri": path.stem, "audio": str(path), "annotation": ann,
                "annotated": Timeline([Segment(0, dur)]), "scope": "file", "database": "Synth"}

    class Synth(SpeakerDiarizationProtocol):
        def train_iter(self):
            for f in files:
                yield item(*f)

    protocol = Synth()
    protocol.name = "Synth.SpeakerDiarization.Tiny"  # what the registry would set; the task cache records it
    return protocol


def train_segmentation(files, out: Path, steps: int, seed: int, cache: Path) -> None:
    """Train a tiny PyanNet (SincNet stride 10, one 32-unit BiLSTM) for `steps` batches of 16 random
    5 s chunks, and save it in pyannote's checkpoint format."""
    import lightning.pytorch as pl
    from pyannote.audio.models.segmentation import PyanNet
    from pyannote.audio.tasks import SpeakerDiarization

    pl.seed_everything(seed, workers=True, verbose=False)
    task = SpeakerDiarization(_protocol(files), duration=CHUNK, max_speakers_per_chunk=3,
                              max_speakers_per_frame=2, batch_size=16, num_workers=0, cache=cache)
    model = PyanNet(sincnet={"stride": 10}, lstm={"hidden_size": 32, "num_layers": 1},
                    linear={"hidden_size": 32, "num_layers": 1}, task=task)
    trainer = pl.Trainer(max_steps=steps, max_epochs=-1, accelerator="cpu", devices=1, logger=False,
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                         limit_val_batches=0, num_sanity_val_steps=0, deterministic=True)
    trainer.fit(model)
    out.mkdir(parents=True, exist_ok=True)
    trainer.save_checkpoint(out / "pytorch_model.bin")  # Model.on_save_checkpoint adds pyannote's metadata


def save_embedding(out: Path, seed: int):
    """A randomly initialised XVectorMFCC saved as a pyannote checkpoint (what Model.from_pretrained reads)."""
    import lightning
    from pyannote.audio.core.task import Problem, Resolution, Specifications
    from pyannote.audio.models.embedding import XVectorMFCC

    torch.manual_seed(seed)
    model = XVectorMFCC(dimension=128).eval()
    model.specifications = Specifications(problem=Problem.REPRESENTATION, resolution=Resolution.CHUNK,
                                          duration=CHUNK)
    ckpt = {"state_dict": model.state_dict(), "hyper_parameters": dict(model.hparams),
            "pytorch-lightning_version": lightning.__version__}
    model.on_save_checkpoint(ckpt)
    out.mkdir(parents=True, exist_ok=True)
    torch.save(ckpt, out / "pytorch_model.bin")
    return model


def fit_plda(model, files, out: Path, max_dim: int = 16) -> None:
    """LDA then two-covariance PLDA on embeddings of single-speaker stretches (<= 3 s) of the
    training files, saved in the npz layout pyannote's PLDA (VBx) reads."""
    import soundfile as sf

    X, y = [], []
    with torch.inference_mode():
        for path, utts, _ in files:
            wav, sr = sf.read(path, dtype="float32")
            for u in utts:
                a, b = int(u["start"] * sr), int(u["end"] * sr)
                for s in range(a, max(a + 1, b - sr), 3 * sr):
                    seg = wav[s:min(b, s + 3 * sr)]
                    if len(seg) >= sr:
                        X.append(model(torch.from_numpy(seg)[None, None]).numpy()[0])
                        y.append(u["speaker"])
    X, y = np.asarray(X, np.float64), np.asarray(y)
    labels = sorted(set(y))

    def l2(a):
        return a / np.linalg.norm(a, axis=-1, keepdims=True)

    def scatter(Z):
        mu = Z.mean(0)
        within = sum(np.cov((Z[y == s] - Z[y == s].mean(0)).T, bias=True) * (y == s).sum() for s in labels) / len(Z)
        means = np.stack([Z[y == s].mean(0) for s in labels])
        between = np.cov((means - mu).T, bias=True)
        return mu, within, between

    from scipy.linalg import eigh

    D = X.shape[1]
    mean1 = X.mean(0)
    Xn = np.sqrt(D) * l2(X - mean1)
    _, W, B = scatter(Xn)
    d = min(max_dim, len(labels) - 1)
    _, vec = eigh(B, W + 1e-3 * np.eye(D))
    lda = vec[:, ::-1][:, :d]                                                   # [D, d]
    Y = Xn @ lda
    mean2 = Y.mean(0)
    Z = np.sqrt(d) * l2(Y - mean2)
    mu, W, B = scatter(Z)
    psi, V = eigh(B, W + 1e-6 * np.eye(d))                                      # V.T W V = I, V.T B V = diag(psi)
    out.mkdir(parents=True, exist_ok=True)
    np.savez(out / "xvec_transform.npz", mean1=mean1, mean2=mean2, lda=lda)
    np.savez(out / "plda.npz", mu=mu, tr=V.T, psi=np.maximum(psi, 1e-6))


def write_config(out: Path) -> None:
    config = {
        "dependencies": {"pyannote.audio": "4.0.0"},
        "pipeline": {"name": "pyannote.audio.pipelines.SpeakerDiarization",
                     "params": {"segmentation": "$model/segmentation", "embedding": "$model/embedding",
                                "plda": "$model/plda", "clustering": "VBxClustering",
                                "segmentation_step": 0.2, "embedding_exclude_overlap": True,
                                "segmentation_batch_size": 32, "embedding_batch_size": 32}},
        "params": {"segmentation": {"min_duration_off": 0.0},
                   "clustering": {"threshold": 0.6, "Fa": 0.07, "Fb": 0.8}},
    }
    (out / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))


def build(out_dir, minutes: float = 3.0, steps: int = 200, seed: int = 0) -> Path:
    """Generate data, train, fit and write the pipeline folder; returns its path. The folder is
    written under a temporary name and renamed when whole (replacing an earlier build)."""
    out = Path(out_dir)
    if out.exists() and any(out.iterdir()) and not (out / "config.yaml").is_file():
        raise FileExistsError(f"{out} exists and is not a pipeline folder: not overwriting it")
    part = out.with_name(f".{out.name}.partial")
    shutil.rmtree(part, ignore_errors=True)
    part.mkdir(parents=True)
    with tempfile.TemporaryDirectory() as tmp:
        files = _conversations(Path(tmp), minutes, seed)
        train_segmentation(files, part / "segmentation", steps, seed, cache=Path(tmp) / "task_cache.npz")
        model = save_embedding(part / "embedding", seed)
        fit_plda(model, files, part / "plda")
    write_config(part)
    shutil.rmtree(out, ignore_errors=True)
    os.replace(part, out)
    return out


@dataclass
class Args:
    out_dir: str = field(default=MISSING, metadata={"help": "where the pipeline folder is written"})
    minutes: float = field(default=3.0, metadata={"help": "minutes of generated conversations to train on"})
    steps: int = field(default=200, metadata={"help": "segmentation training steps"})
    seed: int = field(default=0, metadata={"help": "one seed, one pipeline"})


def main(argv: list[str]) -> int:
    from higgs_train.cli import parse

    args = parse(Args, argv, "python -m data_pipeline.tiny_pyannote", __doc__)
    out = build(args.out_dir, args.minutes, args.steps, args.seed)
    print(f"wrote a pyannote pipeline to {out}: use diarization=pyannote diarization.path={out}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
