#!/usr/bin/env bash
# Create the virtual environments of the peers that benchmarks/decode.py and speculative.py compare edgekit with,
# and, when named, the onnxruntime plugins that benchmarks/multirow.py measures.
#
# Each peer lives in its own venv under PEERS, outside the repository, because its requirements cannot share
# the main environment:
#   llama    llama-cpp-python (compiles llama.cpp for about 4 minutes)
#   genai    onnxruntime-genai; its model builder needs transformers 5.x (the main env has 4.57)
#   optimum  optimum-onnx, which pins optimum~=2.1 and transformers<4.58; this venv sees the main
#            env's packages (torch 2.13.0, transformers 4.57.6) and adds only what is missing
#   openvino onnxruntime-ep-openvino (OpenVINO's CPU kernels as a plugin library; multirow.py registers it
#            into the main env's onnxruntime, the 1.32.0 pinned here beside it)
#   ggml     onnxruntime-ggml (ggml's kernels as a plugin; pins onnxruntime<1.31, so a venv of its own)
# The two plugins are built only when named: only multirow.py uses them, and a young plugin whose pins break
# must not stop a bare call from building the peers every comparison needs.
# torch is always pinned to 2.13.0: pip takes the CPU wheel that lies on disk, while an unpinned
# torch pulls a CUDA build of several GB.
#
# PEERS: --peers DIR, else $EDGEKIT_PEERS, else ${XDG_CACHE_HOME:-~/.cache}/edgekit/peers (the benchmarks
# resolve it the same way: benchmarks/harness.py; give them the same --peers DIR).
# Idempotent: a venv whose requirement line is unchanged since it was built is left alone.
# Usage: bash benchmarks/setup_peers.sh [--peers DIR] [llama] [genai] [optimum] [openvino] [ggml]
#        (no peer named: llama, genai and optimum)
set -euo pipefail

PEERS="${EDGEKIT_PEERS:-${XDG_CACHE_HOME:-$HOME/.cache}/edgekit/peers}"
if [ "${1:-}" = "--peers" ]; then
    [ -n "${2:-}" ] || { echo "usage: $0 [--peers DIR] [llama] [genai] [optimum] [openvino] [ggml]" >&2; exit 2; }
    PEERS="$2"
    shift 2
fi
for PEER in "$@"; do
    case "$PEER" in llama|genai|optimum|openvino|ggml) ;;
        *) echo "unknown peer '$PEER' (llama, genai, optimum, openvino, ggml)" >&2; exit 2 ;; esac
done
PYTHON="${PYTHON:-python3}"
mkdir -p "$PEERS"
echo "peers' folder: $PEERS"

# make_venv NAME VENV_FLAGS PACKAGE...: (re)build $PEERS/NAME unless its stamp lists the same packages.
make_venv() {
    local name="$1" flags="$2"
    shift 2
    local dir="$PEERS/$name" spec="$flags $*"
    if [ -f "$dir/.installed" ] && [ "$(cat "$dir/.installed")" = "$spec" ]; then
        echo "peer $name: up to date ($dir)"
        return
    fi
    echo "peer $name: installing $* into $dir"
    rm -rf "$dir"
    # shellcheck disable=SC2086  # flags is a word list
    "$PYTHON" -m venv $flags "$dir"
    "$dir/bin/pip" install --quiet --upgrade pip
    "$dir/bin/pip" install "$@"
    echo "$spec" > "$dir/.installed"
}

want() { [ "$#" -eq 0 ] || [[ " $* " == *" $PEER "* ]]; }
named() { [[ " $* " == *" $PEER "* ]]; }

for PEER in llama genai optimum openvino ggml; do
    case "$PEER" in openvino|ggml) named "$@" || continue ;; *) want "$@" || continue ;; esac
    case "$PEER" in
        llama) make_venv llama "" "llama-cpp-python==0.3.36" "numpy" ;;
        genai) make_venv genai "" "onnxruntime-genai==0.18.0" "torch==2.13.0" "transformers>=5,<6" \
                   "onnx" "onnx-ir" "numpy" "tokenizers" ;;
        optimum) make_venv optimum "--system-site-packages" "optimum-onnx==0.1.0" "torch==2.13.0" \
                     "transformers==4.57.6" ;;
        openvino) make_venv openvino "" "onnxruntime-ep-openvino==1.8.1" "onnxruntime==1.32.0" "numpy" ;;
        ggml) make_venv ggml "" "onnxruntime-ggml==0.2.0" "numpy" ;;
    esac
done
