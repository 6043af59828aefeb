"""The fine-tuning task (lora.py: LoRA or full training from a base export). The workflow around
it (curate a voice folder, tokenize, train, export a preset) is the recipe `python -m
recipes.finetune` (recipes/finetune/)."""
