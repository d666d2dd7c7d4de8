#!/usr/bin/env bash
# The transformers integration on a GPU, in one run: its tests on CUDA tensors, then bench/bench_hf.py
# (patched vs transformers' default path, forward and forward+backward, fp32 and bf16 autocast).
# Needs transformers 5.x importable on the machine. Usage: bench/gpu_hf_check.sh [OUT_DIR]
set -uo pipefail
source "$(dirname "$0")/gpu_env.sh"
python3 -c "import transformers; print('transformers', transformers.__version__)" 2>&1 | tee -a "$OUT_DIR/env.txt" || exit 2
stamp "integration and drop-in tests on CUDA"
python3 -m pytest tests/test_integrations_transformers.py tests/test_dropin.py -q 2>&1 | tee "$OUT_DIR/hf_tests.txt"
stamp "bench_hf"
python3 bench/bench_hf.py --json "$OUT_DIR/hf.json" 2>&1 | tee "$OUT_DIR/hf_bench.txt"
stamp "done"
