"""Our teacher-forced audio logits of a Higgs TTS 3 directory on the fixture cases
(tests/fixtures/release_v3/cases.json), in the file check_export.py --compare reads: run with the
PROJECT's venv, then check the same directory with the reference loader in the throwaway venv.

    python scripts/release_fixtures/v3/our_logits.py DIR OURS.safetensors
    /tmp/v3_venv/bin/python scripts/release_fixtures/v3/check_export.py DIR --compare OURS.safetensors

DIR is loaded by its family (higgs_train/families, from config.json) in fp32 on the CPU; prompts
by the family's prompt encoder from DIR's text tokenizer, with the cases' texts and codes.
Writes {case}.audio_logits [rows, 8, 1026]: row r is the prediction of delayed row r.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

FIXTURES = Path(__file__).resolve().parents[3] / "tests" / "fixtures" / "release_v3"


def case_logits(model, tok, case: dict, tensors: dict, name: str) -> torch.Tensor:
    """Teacher-forced audio logits of one case: the prompt, then the case's delayed target rows."""
    from higgs_train.families.higgs_tts3.prompt import encode

    refs = [(case["ref_text"], tensors[f"{name}.ref_codes"].T)] if f"{name}.ref_codes" in tensors else []
    s = encode(tok, case["text"], refs, codes=tensors[f"{name}.codes"].T)
    rows = tensors[f"{name}.frames"].shape[0]
    P = len(s) - rows                                   # the first target row's position
    with torch.no_grad():
        out = model(*(torch.from_numpy(a)[None] for a in (s.input_ids, s.audio_codes, s.audio_mask)))
    return out.audio_logits[0, P - 1:P - 1 + rows]      # <|audio|> predicts row 0, row r row r + 1


def main(argv=None) -> None:
    from higgs_train.families import family_of

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("dir")
    ap.add_argument("out")
    a = ap.parse_args(argv)
    family = family_of(a.dir)
    model = family.load(a.dir, dtype=torch.float32)[0].eval()
    tok = family.text_tokenizer(a.dir)
    cases = json.loads((FIXTURES / "cases.json").read_text())["cases"]
    tensors = load_file(str(FIXTURES / "cases.safetensors"))
    save_file({f"{n}.audio_logits": case_logits(model, tok, c, tensors, n).contiguous() for n, c in cases.items()},
              a.out)


if __name__ == "__main__":
    main()
