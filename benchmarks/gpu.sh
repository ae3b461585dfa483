#!/usr/bin/env bash
# One prepared run for a GPU machine (< 8 minutes on one H100/H200-class GPU): bf16 stage-2 step time and MFU of
# the paper's 7B shape (random init; LoRA r 8, alpha 32 on q_proj/v_proj, lr 2e-5, as configs/mplug-owl-7b/),
# stage-1 step time (vision + abstractor train, LLM frozen) and batched generation throughput. Results go to
# $OUT/gpu.json and gpu.md when OUT is set, else runs/bench/gpu/. The logic is benchmarks/gpu_bench.py.
#
#   bash benchmarks/gpu.sh              # needs a CUDA device (exit 2 with one line without one)
#   bash benchmarks/gpu.sh --dry-run    # the plan: configs, shapes, parameter counts, FLOPs; no GPU, no weights
#   bash benchmarks/gpu.sh --only stage2 --steps 3    # any gpu_bench.py flags (--help lists them)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PY="${PYTHON:-}"
if [ -z "$PY" ]; then
  if [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=python3; fi
fi
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
export PYTORCH_CUDA_ALLOC_CONF="${PYTORCH_CUDA_ALLOC_CONF:-expandable_segments:True}"
exec "$PY" benchmarks/gpu_bench.py "$@"
