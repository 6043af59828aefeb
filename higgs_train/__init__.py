"""The foundation: audio I/O, shard format, audio tokenizer, DualFFN LLM, training."""
