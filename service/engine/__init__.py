"""numpy + onnxruntime: the repository, loaded models and their metrics; no web framework."""
