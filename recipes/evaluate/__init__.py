"""`python -m recipes.evaluate`: score an export with the evaluation harness (higgs_train.evaluate), the
synthesizer from inference and the scorers from data_pipeline, as configs/recipes/evaluate/evaluate.yaml wires them."""
