#!/usr/bin/env bash
# One script for a GPU machine: parity on the GPU, training throughput against the tutorial's
# PyTorch step (cuDNN) and against jax.experimental.rnn.lstm (cuDNN from JAX) at batch 128 and 512,
# then a few epochs of real training; a short table last.
#
#   bash bench/gpu_check.sh            # on the GPU machine (jax with CUDA, torch, the test extra)
#   bash bench/gpu_check.sh --dry-run  # every step at tiny sizes, on whatever device is there (CPU)
#
# The full run trains on data/tang.npz, which it does not make: a GPU machine may reach no registry
# (npm), so prepare it here (`python -m rnnjax.poetry data`) and send it along. PYTHON names the interpreter
# (default python3); GPU_CHECK_LOGS a folder that keeps each step's log (default: a temporary one).
# The README's GPU section has the whole call for this project's lent machines.
#
# Exits non-zero if any step fails; the table says which.
set -uo pipefail
cd "$(dirname "$0")/.."

dry=0
[ "${1:-}" = "--dry-run" ] && dry=1
py=${PYTHON:-python3}
if [ -n "${GPU_CHECK_LOGS:-}" ]; then
  out=$GPU_CHECK_LOGS; mkdir -p "$out"
else
  out=$(mktemp -d); trap 'rm -rf "$out"' EXIT
fi
if [ $dry = 0 ] && [ ! -f data/tang.npz ]; then
  echo "gpu_check: data/tang.npz is missing: run 'python -m rnnjax.poetry data' first and send data/tang.npz with the tree" >&2
  exit 2
fi
# float32 parity means float32 matmuls: no TF32 on Ampere and newer.
export JAX_DEFAULT_MATMUL_PRECISION=highest
declare -a rows
status=0

step() {  # step NAME CMD...: run, keep the log, remember pass/fail
  local name=$1; shift
  echo "== $name: $*"
  local t0=$SECONDS
  if "$@" 2>&1 | tee "$out/$name.log"; then
    rows+=("$name|ok|$((SECONDS - t0)) s")
  else
    rows+=("$name|FAILED|$((SECONDS - t0)) s")
    status=1
  fi
}

"$py" - <<'EOF'
import jax, torch
print("jax", jax.__version__, jax.devices(), "| torch", torch.__version__, "cuda" if torch.cuda.is_available() else "no cuda")
EOF

# 1. Parity on the device JAX runs on (torch computes the reference on its own device). In one
# process (-o addopts= drops pyproject's -n: the GPU machine has no pytest-xdist, and workers would
# each claim most of the GPU's memory).
if [ $dry = 1 ]; then
  step parity "$py" -m pytest -o addopts= -q -x tests/layers/test_layers_api.py tests/layers/test_parity.py -k "shapes or jit or dropout"
else
  step parity "$py" -m pytest -o addopts= -q tests/layers/test_layers_api.py tests/layers/test_parity.py tests/poetry/test_model.py
fi

# 2. Training-step throughput, three implementations, same blocks.
if [ $dry = 1 ]; then
  step throughput "$py" bench/gpu_compare.py --tiny --batch 4 8
else
  step throughput "$py" bench/gpu_compare.py --batch 128 512
fi

# 3. A few epochs of real training (tiny corpus in a dry run).
if [ $dry = 1 ]; then
  "$py" - "$out/tiny.npz" <<'EOF'
import sys
from rnnjax.poetry.data import Vocab, encode_poems, save_npz
poems = ["床前明月光，疑是地上霜。举头望明月，低头思故乡。", "春眠不觉晓，处处闻啼鸟。夜来风雨声，花落知多少。"] * 20
vocab = Vocab.build(poems)
save_npz(sys.argv[1], encode_poems(poems, vocab), vocab)
EOF
  step train "$py" train.py --cell lstm --data "$out/tiny.npz" --embedding-dim 8 --hidden-dim 16 \
    --batch-size 8 --epochs 2 --precision bfloat16 --checkpoint-dir "$out/ckpt" --no-progress --sample-every 0
else
  step train "$py" train.py --cell lstm --epochs 3 --batch-size 512 --lr 3e-3 --precision bfloat16 \
    --checkpoint-dir "$out/ckpt" --no-progress
fi

echo
echo "| step | result | wall |"
echo "|---|---|---|"
for r in "${rows[@]}"; do echo "| ${r//|/ | } |"; done
echo
echo "| implementation | precision | batch | tokens/s |"
echo "|---|---|---|---|"
grep '^RESULT' "$out/throughput.log" | awk '{printf "| %s | %s | %s | %s |\n", $2, $3, $4, $5}'
echo
grep -E "val loss|real tokens/s" "$out/train.log" | tail -4
exit $status
