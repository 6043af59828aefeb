"""The unified audio tokenizer (codec): 24 kHz audio <-> 8 x 1024 codes at 25 frames/s."""
from higgs_train.tokenizer.config import TokenizerConfig
from higgs_train.tokenizer.model import AudioTokenizer

__all__ = ["AudioTokenizer", "TokenizerConfig"]
