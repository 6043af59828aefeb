"""Recipes: whole workflows above the library, the only code that imports all three packages.

    higgs_train     the foundation (models, training, the harness's protocols): imports no wing
    data_pipeline   curation (imports higgs_train)
    inference       generation and serving (imports higgs_train)
    recipes         fine-tune a voice end to end, evaluate a checkpoint, train while evaluating:
                    they use curation, training and inference together, so they live above all three

    python -m recipes.finetune voice_dir=DIR base=LLM_DIR tokenizer=AUDIO_TOKENIZER_DIR name=NAME
    python -m recipes.evaluate model=LLM_DIR tokenizer=AUDIO_TOKENIZER_DIR eval_set=items.jsonl
    python -m recipes.train    (python -m higgs_train.train + the evaluation callback)

Their configs are under configs/recipes/ (finetune.yaml, train.yaml, evaluate/); no config that a
higgs_train entry point composes names a wing (tests/test_import_graph.py).
"""
