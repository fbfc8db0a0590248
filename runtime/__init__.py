"""The device side: load an edgekit package and generate text with numpy + onnxruntime (never torch).

    from edgekit.runtime import load
    model = load("pkg")
    for piece in model.stream("The capital of France is", max_new_tokens=16):
        print(piece, end="")
"""

from edgekit.runtime.generator import GenerationConfig, Model, load

__all__ = ["GenerationConfig", "Model", "load"]
