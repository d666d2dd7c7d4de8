#!/usr/bin/env bash
# One device call for the model (not the kernels: that is gpu_check.sh): CUDA tests of the model, then
# the model benchmark. Sized for under 10 minutes on an H100/H200; each step has its own time limit.
#   bash bench/gpu_model_check.sh [OUT_DIR]      (the device tool sets $OUT; logs and JSON land there)
# Steps:
#   1. pytest of the model tests on CUDA (backends agree, decoders train, bench smoke)
#   2. eager: the swin-t models + nano at 512x512, fp32 and bf16, sampling backend triton and reference,
#      with a per-op profile of one cssformer-swin-t train step in each precision
#   3. compiled: cssformer-swin-t and upernet-swin-t under torch.compile (+ CUDA-graph inference)
#   4. loader: images/s of the default training loader (synthetic set at 512x512)
set -uo pipefail
source "$(dirname "$0")/gpu_env.sh"

stamp "1. model tests on CUDA"
CSSFORMER_AUTOTUNE=0 timeout "${TEST_TIMEOUT:-150}" python3 -m pytest -q -x -p no:cacheprovider \
    tests/test_model_acceptance.py tests/test_model_decoders.py tests/test_bench_model.py tests/test_backend_switch.py \
    2>&1 | tee "$OUT_DIR/pytest_model.log" | tail -n 15
echo "pytest exit: ${PIPESTATUS[0]}"

stamp "2. eager"
timeout "${EAGER_TIMEOUT:-240}" python3 bench/bench_model.py --precision fp32 bf16 --backend triton reference \
    --no-loader --json "$OUT_DIR/model_eager.json" 2>&1 | tee "$OUT_DIR/model_eager.log" | tail -n 40
stamp "2b. profile"
timeout "${PROFILE_TIMEOUT:-60}" python3 bench/bench_model.py --model cssformer-swin-t --precision fp32 bf16 \
    --backend triton --steps 1 --reps 1 --profile --no-loader --json "$OUT_DIR/model_profile.json" \
    > "$OUT_DIR/model_profile.log" 2>&1; echo "profile exit: $?"

stamp "3. compiled"
timeout "${COMPILE_TIMEOUT:-200}" python3 bench/bench_model.py --model cssformer-swin-t upernet-swin-t \
    --precision bf16 --backend triton --mode eager compiled --cuda-graphs --no-loader \
    --json "$OUT_DIR/model_compiled.json" 2>&1 | tee "$OUT_DIR/model_compiled.log" | tail -n 15

stamp "4. loader"
timeout "${LOADER_TIMEOUT:-60}" python3 bench/bench_model.py --model cssformer-nano --precision fp32 \
    --steps 1 --reps 1 --json "$OUT_DIR/model_loader.json" 2>&1 | tail -n 3
stamp "done"
