"""The whole path with a trained model: a tiny LLM memorises a few utterances' codes (training
prompts from higgs_train.llm.prompt), and the engine regenerates one greedily from its text alone."""
from __future__ import annotations

import pytest
import torch

from higgs_train.llm.data import collate
from higgs_train.llm.config import DualFFNConfig
from higgs_train.llm.model import DualFFNModel
from higgs_train.llm.prompt import tts_sample
from higgs_train.testing.synthetic_llm import text_codes
from higgs_train.tokenizer import AudioTokenizer, TokenizerConfig
from inference.engine import Engine, EngineConfig, Request
from inference.sampling import SamplingConfig
from higgs_train.testing.tiny_exports import TINY_CODEC, TINY_LLM, tiny_text_tokenizer

TEXTS = ["the quick brown fox", "seven happy voices sing", "bright morning light"]


@pytest.mark.slow
def test_trained_tiny_model_regenerates_a_training_utterance(tmp_path):
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        torch.manual_seed(0)
        tok = tiny_text_tokenizer(tmp_path / "tok", TEXTS)
        model = DualFFNModel(DualFFNConfig(vocab_size=len(tok), **TINY_LLM))
        targets = [torch.from_numpy(text_codes(t, "SPEAKER_00")) for t in TEXTS]      # [8, F]
        batch = collate([tts_sample(tok, t, c.numpy()) for t, c in zip(TEXTS, targets)])
        opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
        for step in range(400):
            out = model.loss(batch["input_ids"], batch["audio_codes"], batch["audio_mask"], batch["audio_labels"])
            opt.zero_grad()
            out["loss"].backward()
            opt.step()
            if out["code_acc"] > 0.999 and step > 50:
                break
        assert out["code_acc"] > 0.99, float(out["code_acc"])
        codec = AudioTokenizer(TokenizerConfig(**TINY_CODEC))
        engine = Engine(model, codec, tok, EngineConfig(buckets=(256,)),
                        sampling=SamplingConfig(temperature=0, max_frames=60))
        for text, target in zip(TEXTS[:2], targets):
            [res] = engine.generate([Request(text)])
            F = min(20, target.shape[1])
            match = (res.codes[:, :F] == target[:, :F]).float().mean().item()
            assert match >= 0.9, (text, match)
            assert res.codes.shape[1] == target.shape[1]           # it also learnt where to stop (EOS)
            assert len(res.audio) == target.shape[1] * 960 and abs(res.audio).max() > 0
    finally:
        torch.set_num_threads(n)
