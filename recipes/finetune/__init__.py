"""Fine-tuning on one voice: `python -m recipes.finetune voice_dir=DIR base=LLM_EXPORT
tokenizer=AUDIO_TOKENIZER_EXPORT name=NAME` (run.py: the steps; corpus.py: split and preset;
stops.py: does the model still stop?; the training task itself is higgs_train.finetune.lora)."""


class FinetuneError(Exception):
    """A problem with the inputs or a step's outcome, said in one line (printed without a traceback)."""
