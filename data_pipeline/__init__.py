"""Corpus curation: raw audio to filtered, transcribed WebDataset shards."""
