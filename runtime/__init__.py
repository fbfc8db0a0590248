"""The device side: load an edgekit package and generate text with numpy + onnxruntime (never torch).

    from edgekit.runtime import load

    model = load("pkg")
    for piece in model.stream("The capital of France is", max_new_tokens=16):
        print(piece, end="")
    reply = model.generate([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi!"}],
                           max_new_tokens=32, temperature=0.7, top_p=0.9, seed=0, stop=["\\n"])
    texts = model.generate(["2 + 2 =", "Red, green and"], max_new_tokens=4)  # a list in, a list out

`generate` and `stream` take transformers' keywords (max_new_tokens, temperature, top_p, top_k, seed) plus
`stop` strings and `speculative` ("ngram", "draft"), or a whole `GenerationConfig` as `gen=`; a bad value
raises ValueError before anything runs. `generate_ids` works on token ids; `model.chat(system)` keeps a conversation and its KV cache between turns
(`send(text)` streams each reply). A loaded Model may be shared
between threads and its streams interleaved: each generation checks its own KV cache out of the model's pool
(`load(..., idle_caches=N)` keeps N for reuse; 94 MB each for SmolLM2-135M at 2048 tokens).

A sentence-embedding package loads as an Encoder: `load("minilm-pkg").embed(["A cat sat.", "A dog ran."])` gives
float32 [2, dimension] (pooled, and normalized when the package says so); an Encoder may be shared between threads.
"""

from edgekit.runtime.dispatch import load
from edgekit.runtime.encoder import Encoder
from edgekit.runtime.generator import Generation, GenerationConfig, Model

__all__ = ["Encoder", "Generation", "GenerationConfig", "Model", "load"]
