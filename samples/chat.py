"""A terminal chat on a package, using only the device-side runtime (numpy + onnxruntime).

    python samples/chat.py PKG [--system "You are brief."] [--temperature 0.7]

The conversation keeps its KV cache between turns (Model.chat): each turn runs only the new tokens.
"""

from __future__ import annotations

import argparse

from edgekit.runtime import load


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("pkg")
    parser.add_argument("--system", default=None)
    parser.add_argument("--temperature", type=float, default=0.0)
    parser.add_argument("--max-new-tokens", type=int, default=256)
    args = parser.parse_args()
    chat = load(args.pkg).chat(args.system)
    while True:
        try:
            user = input("you> ")
        except EOFError:
            break
        print("bot> ", end="", flush=True)
        for piece in chat.send(user, max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_p=0.95):
            print(piece, end="", flush=True)
        print()


if __name__ == "__main__":
    main()
