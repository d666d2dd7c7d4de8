#!/usr/bin/env bash
# One device call for the model (not the kernels: that is gpu_check.sh): the model's former forms
# ("legacy") and its fast paths ("fast") timed in the same run, then one profiled step of each.
# Sized for under 10 minutes on an H100/H200; each step has its own time limit.
#   bash bench/gpu_model_check.sh [OUT_DIR]      (the device tool sets $OUT; logs and JSON land there)
# Steps:
#   1. pytest of the model tests on CUDA (backends agree, fast paths = former forms, bench smoke)
#   2. eager before/after: cssformer-swin-t and upernet-swin-t at 512x512, 150 classes, bf16 and fp32,
#      variant legacy (former forms, foreach AdamW) and fast (fast paths, fused AdamW), Triton backend
#   2b. fp32 with TF32 on (runtime.set_tf32), fast variant
#   3. compiled: torch.compile (default mode) + CUDA-graph inference (mode="reduce-overhead"), bf16, fast
#   4. profile: per-op table of one cssformer-swin-t bf16 train step, legacy and fast
set -uo pipefail
source "$(dirname "$0")/gpu_env.sh"

stamp "1. model tests on CUDA"
CSSFORMER_AUTOTUNE=0 timeout "${TEST_TIMEOUT:-150}" python3 -m pytest -q -x -p no:cacheprovider \
    tests/test_model_acceptance.py tests/test_model_fast.py tests/test_bench_model.py tests/test_backend_switch.py \
    -k "not flops" 2>&1 | tee "$OUT_DIR/pytest_model.log" | tail -n 15
echo "pytest exit: ${PIPESTATUS[0]}"

# the autotune cache filled first, so that no step's timing includes tuning
stamp "autotune (bf16 + fp32 shapes of the swin-t models)"
timeout "${TUNE_TIMEOUT:-90}" python3 bench/bench_model.py --model cssformer-swin-t --precision bf16 fp32 \
    --backend triton --steps 1 --reps 1 --warmup 1 --no-loader --json "$OUT_DIR/model_tune.json" > "$OUT_DIR/model_tune.log" 2>&1
echo "tune exit: $?"

stamp "2. eager before/after"
timeout "${EAGER_TIMEOUT:-200}" python3 bench/bench_model.py --model cssformer-swin-t upernet-swin-t \
    --precision bf16 fp32 --backend triton --variant legacy fast --no-loader \
    --json "$OUT_DIR/model_eager.json" 2>&1 | tee "$OUT_DIR/model_eager.log" | tail -n 20
stamp "2b. fp32 + TF32"
timeout "${TF32_TIMEOUT:-60}" python3 bench/bench_model.py --model cssformer-swin-t upernet-swin-t \
    --precision fp32 --backend triton --tf32 --no-loader --json "$OUT_DIR/model_tf32.json" 2>&1 | tail -n 8

stamp "3. compiled"
timeout "${COMPILE_TIMEOUT:-200}" python3 bench/bench_model.py --model cssformer-swin-t upernet-swin-t \
    --precision bf16 --backend triton --mode compiled --cuda-graphs --no-loader \
    --json "$OUT_DIR/model_compiled.json" 2>&1 | tee "$OUT_DIR/model_compiled.log" | tail -n 10

stamp "4. profile"
timeout "${PROFILE_TIMEOUT:-60}" python3 bench/bench_model.py --model cssformer-swin-t --precision bf16 \
    --backend triton --variant legacy fast --steps 1 --reps 1 --profile --no-loader \
    --json "$OUT_DIR/model_profile.json" > "$OUT_DIR/model_profile.log" 2>&1; echo "profile exit: $?"
stamp "done"
