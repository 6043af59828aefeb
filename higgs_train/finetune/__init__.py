"""Fine-tuning on one voice: `python -m higgs_train.finetune voice_dir=DIR base=LLM_EXPORT
tokenizer=AUDIO_TOKENIZER_EXPORT name=NAME` (see run.py for the steps, lora.py for the training task)."""


class FinetuneError(Exception):
    """A problem with the inputs or a step's outcome, said in one line (printed without a traceback)."""
