#!/usr/bin/env bash
# Builds the project and runs gemma-cli on MODEL_DIR; without one, on a full-size synthetic
# checkpoint (random weights in the mobile layout, written once to models/synth-mobile).
# Usage: ./run.sh [MODEL_DIR] [gemma-cli options...]
set -euo pipefail
cd "$(dirname "$0")"
cmake -S . -B build -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build build -j"$(nproc)"
model="${1:-}"
if [ -n "$model" ]; then
  shift
else
  model=models/synth-mobile
  [ -d "$model" ] || ./build/bin/gemma-synth "$model" --preset mobile --seed 1
fi
[ $# -gt 0 ] || set -- -p "Hello, how are you?" -m 100
exec ./build/bin/gemma-cli "$model" "$@"
