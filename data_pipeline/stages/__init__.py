"""One module per pipeline stage; each stage is one class built from its config group."""
