"""The workstation side: read checkpoints (GGUF, Hugging Face folders), build the ONNX graph, write packages."""
