"""Model families (placeholder so higgs_train.families.higgs_tts3 imports; the registry lands with the seam)."""
