"""A terminal chat on a package, using only the device-side runtime (numpy + onnxruntime).

    python samples/chat.py PKG [--temperature 0.7]

Each turn re-renders the whole conversation with the package's chat template.
"""

from __future__ import annotations

import argparse

from edgekit.runtime import GenerationConfig, load
from edgekit.runtime.sampling import SamplingParams
from edgekit.runtime.text import StreamDecoder


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("pkg")
    parser.add_argument("--temperature", type=float, default=0.0)
    parser.add_argument("--max-new-tokens", type=int, default=256)
    args = parser.parse_args()
    model = load(args.pkg)
    gen = GenerationConfig(args.max_new_tokens, SamplingParams(temperature=args.temperature, top_p=0.95))
    messages: list[dict[str, str]] = []
    while True:
        try:
            user = input("you> ")
        except EOFError:
            break
        messages.append({"role": "user", "content": user})
        ids = model.codec.encode(model.codec.chat_prompt(messages))
        stream = StreamDecoder(model.codec)
        print("bot> ", end="", flush=True)
        for token in model.generate_ids(ids, gen):
            print(stream.push(token), end="", flush=True)
        print()
        messages.append({"role": "assistant", "content": model.codec.decode(stream.ids)})


if __name__ == "__main__":
    main()
