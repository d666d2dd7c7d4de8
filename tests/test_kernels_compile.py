"""Compile the Triton kernels for a Hopper GPU (sm_90) on any machine, GPU or not.

The interpreter that runs the kernels in CPU tests accepts code that the compiler rejects (for
example reassigning a constexpr inside unrolled loops), so CI also compiles every kernel variant down
to a cubin with Triton's own toolchain. No GPU is needed: the target is given explicitly.
"""
import json
import os
import subprocess
import sys

import pytest

# Every layout (LAYOUT 0 rows, 1 strip, 2 tile), both D_SPLITs and both (x, y) load forms are compiled.
VARIANTS = {
    "canonical-fp32-rows": dict(types={}, FUSED=False, INT64=False, DETERMINISTIC=False, LAYOUT=0, D_SPLIT=1,
                                VEC_XY=True),
    "fused-bf16-fp32coords-int64-strip": dict(
        types={"value_ptr": "*bf16", "attw_ptr": "*bf16", "out_ptr": "*bf16", "grad_out_ptr": "*bf16"},
        FUSED=True, INT64=True, DETERMINISTIC=True, LAYOUT=1, D_SPLIT=2, VEC_XY=False),
    "fused-fp16-tile": dict(
        types={"value_ptr": "*fp16", "attw_ptr": "*fp16", "out_ptr": "*fp16", "grad_out_ptr": "*fp16",
               "loc_ptr": "*fp16", "ref_ptr": "*fp16"},
        FUSED=True, INT64=False, DETERMINISTIC=False, LAYOUT=2, D_SPLIT=2, VEC_XY=True),
}


def _compile(kernel_name: str, variant: str) -> dict:
    """Runs in a fresh process without TRITON_INTERPRET (where kernels are real JIT functions)."""
    import triton
    import triton.language as tl
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from cssformer_kernels import msda_backward, msda_forward

    kernel = {"forward": msda_forward._msda_forward_kernel, "backward": msda_backward._msda_backward_kernel}[kernel_name]
    spec = VARIANTS[variant]
    types = dict(spec["types"], shapes_ptr="*i64", starts_ptr="*i64", corner_ptr="*i64")
    constexprs = dict(REF_LEVELS=2 if spec["FUSED"] else 1, FUSED=spec["FUSED"], INT64=spec["INT64"], ACC=tl.float32,
                      LAYOUT=spec["LAYOUT"], BLOCK_R=32, P_BLOCK=4, BLOCK_D=32, D_SPLIT=spec["D_SPLIT"], TILE_W=8,
                      VEC_XY=spec["VEC_XY"], EVEN_D=True, LP_POW2=16)
    if kernel_name == "backward":
        constexprs["DETERMINISTIC"] = spec["DETERMINISTIC"]
    signature = {}
    for name in kernel.arg_names:
        if name in constexprs:
            signature[name] = "constexpr"
        elif name.endswith("_ptr"):
            signature[name] = types.get(name, "*fp32")
        else:
            signature[name] = "i64" if spec["INT64"] else "i32"
    compiled = triton.compile(ASTSource(kernel, signature, constexprs), target=GPUTarget("cuda", 90, 32),
                              options={"num_warps": 4})
    return {"cubin_bytes": len(compiled.asm["cubin"]), "arch": compiled.metadata.arch}


@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize("kernel", ["forward", "backward"])
def test_kernel_compiles_for_hopper(kernel, variant):
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    proc = subprocess.run([sys.executable, __file__, kernel, variant], env=env, capture_output=True, text=True)
    assert proc.returncode == 0, f"compiling {kernel} ({variant}) for sm_90 failed:\n{proc.stderr[-3000:]}"
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["arch"] == "sm90" and result["cubin_bytes"] > 0


if __name__ == "__main__":
    print(json.dumps(_compile(sys.argv[1], sys.argv[2])))
