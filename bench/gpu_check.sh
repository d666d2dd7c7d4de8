#!/usr/bin/env bash
# One device call: correctness of the kernels on CUDA, then old and new layouts timed side by side, then
# the static cost report on this machine's Triton. Sized for about 9 minutes on an H100/H200 (the lent
# machines have torch + triton + pytest + rich; our package is put on PYTHONPATH).
#   bash bench/gpu_check.sh [OUT_DIR]        (the device tool sets $OUT; logs and JSON land there)
# Steps (each under its own time limit, so a slow step cannot eat the others):
#   1. pytest of the kernel tests on CUDA (the same tests CI runs on the CPU through the interpreter)
#   2. the benchmark at detr_enc, seg512 and the model's shape (cssformer), uniform and local inputs,
#      fp32/bf16, Triton canonical + fused at CONFIGS (default: "auto" = autotune's pick over the whole
#      config space, every layout included; "default" = the untuned config (rows layout); the v3 config
#      (rows, D_SPLIT=1); a one-head 8x8 tile and a one-head strip), and the fp32 reference (the
#      "vs fp32 ref" column), JSON + table. Config names: BLOCK_RxP_BLOCKxwarpsxstages[,KEY=VALUE...]
#   3. the model's exact call: cssformer presets (batch 2 and 1), recorded inputs, bf16 value/offsets/
#      logits with fp32 reference points, and fp32
#   4. the level-tensor host round trip (fp32 Triton rows with the level tensors on the GPU and on the
#      CPU; the two should time the same); LEVELS=0 skips it
#   5. the static cost report (bench/kernel_report.py) with this machine's Triton, sm_90
set -uo pipefail
source "$(dirname "$0")/gpu_env.sh"
CONFIGS="${CONFIGS:-auto default 32x4x4x1,LAYOUT=rows,D_SPLIT=1 64x2x4x1,LAYOUT=tile,D_SPLIT=2,TILE_W=8 32x4x4x1,LAYOUT=strip,D_SPLIT=2}"
TIMING=(--warmup "${WARMUP:-10}" --rep "${REP:-50}")

stamp "1. correctness on CUDA"
CSSFORMER_AUTOTUNE=0 timeout "${TEST_TIMEOUT:-240}" python3 -m pytest -q -x -p no:cacheprovider tests/test_msda.py tests/test_msda_api.py tests/test_cli_autotune.py \
    2>&1 | tee "$OUT_DIR/pytest.log" | tail -n 25
echo "pytest exit: ${PIPESTATUS[0]}"

stamp "2. benchmark: layouts/configs side by side (${CONFIGS})"
timeout "${BENCH_TIMEOUT:-300}" python3 bench/bench_msda.py --preset detr_enc seg512 cssformer --inputs uniform local \
    --dtype ${DTYPES:-fp32 bf16} --impl ${IMPLS:-triton triton_fused reference} --configs ${CONFIGS} "${TIMING[@]}" \
    --json "$OUT_DIR/bench.json" 2>&1 | tee "$OUT_DIR/bench.log"
echo "bench exit: ${PIPESTATUS[0]}"

stamp "3. the model's call (recorded inputs)"
timeout "${MODEL_CALL_TIMEOUT:-120}" python3 bench/bench_msda.py --preset cssformer cssformer_b1 --inputs recorded \
    --dtype bf16 fp32 --impl triton_fused reference --configs ${MODEL_CALL_CONFIGS:-auto default} "${TIMING[@]}" \
    --json "$OUT_DIR/bench_model_call.json" 2>&1 | tee "$OUT_DIR/bench_model_call.log"
echo "bench model call exit: ${PIPESTATUS[0]}"

if [ "${LEVELS:-1}" != 0 ]; then
    stamp "4. levels on the GPU vs on the CPU"
    timeout "${LEVELS_TIMEOUT:-90}" python3 bench/bench_msda.py --preset detr_enc seg512 --dtype fp32 \
        --impl triton triton_fused --levels device host "${TIMING[@]}" --json "$OUT_DIR/bench_levels.json" 2>&1 \
        | tee "$OUT_DIR/bench_levels.log" | tail -n 20
    echo "bench levels exit: ${PIPESTATUS[0]}"
fi
cp "$CSSFORMER_CACHE_DIR/autotune.json" "$OUT_DIR/autotune.json" 2>/dev/null

stamp "5. static cost report, this machine's Triton"
timeout "${REPORT_TIMEOUT:-180}" python3 bench/kernel_report.py --arch 90 --config auto --jobs "${REPORT_JOBS:-12}" \
    --json "$OUT_DIR/kernel_report.json" --markdown "$OUT_DIR/kernel_report.md" 2>&1 | tail -n 40 | tee "$OUT_DIR/kernel_report.log"
echo "kernel report exit: ${PIPESTATUS[0]}"
stamp "done"
