#!/usr/bin/env bash
# One device call: correctness of the kernels on CUDA, then timings. Sized for a few minutes on an
# H100/H200 (the lent machines have torch + triton + pytest + rich; our package is put on PYTHONPATH).
#   bash bench/gpu_check.sh [OUT_DIR]        (the device tool sets $OUT; logs and JSON land there)
# Steps (each under its own time limit, so a slow step cannot eat the others):
#   1. pytest of the kernel tests on CUDA (the same tests CI runs on the CPU through the interpreter)
#   2. the benchmark at detr_enc and seg512, fp32/bf16/fp16, Triton (canonical, fused) and the reference,
#      autotuning on (keys shared by both presets are tuned once), JSON + table
#   3. the level-tensor host round trip: fp32 Triton rows with the level tensors on the GPU (as drop-in
#      users pass them) and on the CPU; the two should time the same
set -uo pipefail
source "$(dirname "$0")/gpu_env.sh"
export CSSFORMER_AUTOTUNE_CONFIGS="${CSSFORMER_AUTOTUNE_CONFIGS:-32x1x4x1,16x4x4x1,32x2x4x1,32x4x4x1,32x4x8x1,64x4x8x1}"

stamp "1. correctness on CUDA"
CSSFORMER_AUTOTUNE=0 timeout "${TEST_TIMEOUT:-240}" python3 -m pytest -q -x -p no:cacheprovider tests/test_msda.py tests/test_msda_api.py tests/test_cli_autotune.py \
    2>&1 | tee "$OUT_DIR/pytest.log" | tail -n 25
echo "pytest exit: ${PIPESTATUS[0]}"

stamp "2. benchmark"
timeout "${BENCH_TIMEOUT:-300}" python3 bench/bench_msda.py --preset detr_enc seg512 --dtype ${DTYPES:-fp32 bf16 fp16} \
    --impl ${IMPLS:-triton triton_fused reference} --json "$OUT_DIR/bench.json" 2>&1 | tee "$OUT_DIR/bench.log"
echo "bench exit: ${PIPESTATUS[0]}"
stamp "3. levels on the GPU vs on the CPU"
timeout "${LEVELS_TIMEOUT:-150}" python3 bench/bench_msda.py --preset detr_enc seg512 --dtype fp32 \
    --impl triton triton_fused --levels device host --json "$OUT_DIR/bench_levels.json" 2>&1 | tee "$OUT_DIR/bench_levels.log"
echo "bench levels exit: ${PIPESTATUS[0]}"
cp "$CSSFORMER_CACHE_DIR/autotune.json" "$OUT_DIR/autotune.json" 2>/dev/null
stamp "done"
