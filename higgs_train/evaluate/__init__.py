"""Evaluation harness: speak a list of texts, score the audio, write a table and plots.

    python -m recipes.evaluate model=LLM_EXPORT tokenizer=AUDIO_TOKENIZER_EXPORT eval_set=items.jsonl
    python -m recipes.train ...: the same harness every N training steps (callback.py)

evalset.py reads the JSONL; harness.py runs the loop and writes the table; plots.py draws it. The
synthesizer and the scorers are protocols (harness.py) implemented by the wings and wired by the
recipes' configs (recipes/: the only code that imports every package).
"""
from higgs_train.evaluate.evalset import BadItem, EvalItem, load_eval_set
from higgs_train.evaluate.harness import EvalResult, Scorer, Synthesizer, evaluate

__all__ = ["BadItem", "EvalItem", "EvalResult", "Scorer", "Synthesizer", "evaluate", "load_eval_set"]
