"""Local inference: generation engine, CLI and OpenAI-compatible server."""
