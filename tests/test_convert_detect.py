"""Layout detection (higgs_train.convert.detect): every layout by its config.json, one-line errors."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from higgs_train.convert import convert, detect

CASES = [
    ({"model_type": "higgs_audio", "text_config": {}}, ("llm", "original")),
    ({"model_type": "higgs_audio_v2"}, ("llm", "hf")),
    ({"architecture": "DualFFNModel", "hidden_size": 8}, ("llm", "native")),
    ({"model_type": "higgs_audio_v2_tokenizer"}, ("tokenizer", "hf")),
    ({"model_type": "higgs_audio_tokenizer"}, ("tokenizer", "native")),
    ({"n_filters": 32, "D": 256, "ratios": [8, 5, 4, 2, 3], "semantic_techer": "hubert_base_general"},
     ("tokenizer", "original")),
]


@pytest.mark.parametrize("cfg,expected", CASES)
def test_detects_each_layout(tmp_path, cfg, expected):
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    assert detect(tmp_path) == expected


def test_errors_say_what_was_found(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such directory"):
        detect(tmp_path / "absent")
    (tmp_path / "weights.bin").write_bytes(b"")
    with pytest.raises(FileNotFoundError, match=r"config.json is missing.*found: weights.bin"):
        detect(tmp_path)
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match="not readable JSON"):
        detect(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama", "hidden_size": 8}))
    with pytest.raises(ValueError, match="model_type='llama'"):
        detect(tmp_path)
    with pytest.raises(ValueError, match="to='gguf'"):
        convert(tmp_path, tmp_path / "out", "gguf")
    with pytest.raises(ValueError, match="dst is src"):
        convert(tmp_path, tmp_path, "hf")


def test_cli_reports_a_bad_directory_in_one_line(tmp_path):
    r = subprocess.run([sys.executable, "-m", "higgs_train.convert", f"src={tmp_path}", f"dst={tmp_path}/o",
                        "to=hf"], capture_output=True, text=True)
    assert r.returncode != 0
    assert "config.json is missing" in r.stderr
