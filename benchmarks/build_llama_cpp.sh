#!/usr/bin/env bash
# Builds llama.cpp's command-line tools (llama-bench, llama-quantize, llama-perplexity,
# llama-server) from the source distribution of llama-cpp-python 0.3.36, the version the
# baselines in shared/PEERS.md were measured with, and installs what its GGUF converter needs.
# Prints the directory to pass to `benchmarks/formats.py --llama-cpp`.
# About 9 minutes on 2 cores; the result is cached.
set -euo pipefail
VERSION=0.3.36
ROOT=${AIR_PEERS_DIR:-$HOME/.cache/air-peers}/llama-cpp-$VERSION
TOOLS="llama-bench llama-quantize llama-perplexity llama-server"
built=1
for tool in $TOOLS; do [ -x "$ROOT/build/bin/$tool" ] || built=0; done
if [ "$built" = 1 ]; then
  echo "$ROOT"; exit 0
fi
mkdir -p "$ROOT"
cd "$ROOT"
if [ ! -f src/CMakeLists.txt ]; then
  python -m pip download --no-deps --no-binary :all: -d sdist "llama-cpp-python==$VERSION" >&2
  rm -rf src && mkdir src
  tar -xzf sdist/llama_cpp_python-$VERSION.tar.gz -C src --strip-components=3 \
      "llama_cpp_python-$VERSION/vendor/llama.cpp"
fi
python -m pip install --quiet gguf sentencepiece >&2
cmake -S src -B build -G Ninja -DCMAKE_BUILD_TYPE=Release -DGGML_NATIVE=ON \
      -DLLAMA_BUILD_TOOLS=ON -DLLAMA_BUILD_SERVER=ON -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_TESTS=OFF \
      -DLLAMA_CURL=OFF -DLLAVA_BUILD=OFF >&2
cmake --build build -j "$(nproc)" --target $TOOLS >&2
echo "$ROOT"
