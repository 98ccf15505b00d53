"""The serving side: model repository, onnxruntime engine and REST API. Never imports torch."""
