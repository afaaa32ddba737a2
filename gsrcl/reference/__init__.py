"""Reference models: export from a run, the model folder, the out-of-reference check, annotation."""
