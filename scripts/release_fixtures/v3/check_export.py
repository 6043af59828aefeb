"""Loads a Higgs TTS 3 directory (release layout) WITH THE REFERENCE WEIGHT LOADER (sglang-omni
0.1.9's HiggsTTSModel.load_weights, via reference.py) and writes its teacher-forced audio logits on
the fixture cases (tests/fixtures/release_v3/cases.json), so an export of ours can be checked
against the reference: same names, same shapes, same logits.

    /tmp/v3_venv/bin/python scripts/release_fixtures/v3/check_export.py DIR [--out LOGITS.safetensors]
        [--compare OURS.safetensors] [--atol 1e-5]

The prompts are built by the reference's prompt builder from DIR/tokenizer.json with the cases'
texts; the reference codes and delayed frames are the cases'. --out writes
{case}.audio_logits / {case}.text_logits / {case}.prompt_ids; --compare reads a file with the same
`{case}.audio_logits` keys (ours) and exits 1 when max |diff| > atol. Prints one JSON line.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import reference as ref  # noqa: E402


def main(argv=None) -> int:
    from safetensors.torch import load_file, save_file

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("dir")
    ap.add_argument("--out")
    ap.add_argument("--compare")
    ap.add_argument("--atol", type=float, default=1e-5)
    a = ap.parse_args(argv)
    torch.set_num_threads(1)
    with open(os.path.join(ref.FIXTURES, "cases.json")) as f:
        cases = json.load(f)["cases"]
    fixture = load_file(os.path.join(ref.FIXTURES, "cases.safetensors"))
    model, ns = ref.load_reference_model(a.dir)
    adapter = ref.reference_tokenizer(a.dir)
    out, report = {}, {"dir": a.dir, "checkpoint_names": len(ref.checkpoint_names(a.dir)), "cases": {}}
    for name, c in cases.items():
        ref_delayed = fixture.get(f"{name}.ref_delayed")
        n_ref = 0 if ref_delayed is None else ref_delayed.shape[0]
        ids = adapter.build_prompt(c["text"], num_ref_tokens=n_ref, reference_text=c["ref_text"])
        audio, text = ref.teacher_forced(model, ids, ref_delayed, fixture[f"{name}.frames"])
        out[f"{name}.audio_logits"], out[f"{name}.text_logits"] = audio.float(), text.float()
        out[f"{name}.prompt_ids"] = torch.tensor(ids)
        report["cases"][name] = {"prompt_ids_equal_fixture": ids == c["prompt_ids"],
                                 "audio_logits_shape": list(audio.shape)}
    if a.out:
        save_file({k: v.contiguous() for k, v in out.items()}, a.out)
    ok = True
    if a.compare:
        ours = load_file(a.compare)
        for name in cases:
            diff = (ours[f"{name}.audio_logits"].float() - out[f"{name}.audio_logits"]).abs().max().item()
            report["cases"][name]["audio_logits_max_abs_diff"] = diff
            ok &= diff <= a.atol
    report["ok"] = ok
    print(json.dumps(report))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
