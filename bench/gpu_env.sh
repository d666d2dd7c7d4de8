# Sourced by the device scripts (gpu_check.sh, gpu_model_check.sh): the output folder ($1, else $OUT,
# else ./gpu_out), the package on PYTHONPATH without installing it (the lent machines have torch,
# triton, pytest and rich), the autotune cache in the output folder, a timer, and the environment.
OUT_DIR="${1:-${OUT:-./gpu_out}}"
mkdir -p "$OUT_DIR"
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PKGS="$(mktemp -d)"
ln -s "$ROOT/kernels" "$PKGS/cssformer_kernels"
ln -s "$ROOT/cssformer" "$PKGS/cssformer"
export PYTHONPATH="$PKGS:$ROOT/tests:${PYTHONPATH:-}" PYTHONUNBUFFERED=1
export CSSFORMER_CACHE_DIR="$OUT_DIR/cache"
cd "$ROOT"

start=$(date +%s)
stamp() { echo "== [$(( $(date +%s) - start ))s] $*"; }

stamp "environment"
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.mem --format=csv 2>&1 | tee "$OUT_DIR/env.txt"
python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__, torch.cuda.get_device_name())" 2>&1 | tee -a "$OUT_DIR/env.txt"
