"""The DualFFN LLM (model, delay pattern, prompts, data, training module)."""
from higgs_train.llm.config import DualFFNConfig
from higgs_train.llm.model import DualFFNModel, DualFFNOutput, KVCache

__all__ = ["DualFFNConfig", "DualFFNModel", "DualFFNOutput", "KVCache"]
