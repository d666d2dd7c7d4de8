"""Shared problem cases and tolerances for the sampling-op tests."""
import os
import random

import torch

from cssformer_kernels.shapes import ProblemShape

# Fresh inputs every run; the seed is printed in every failure message and can be replayed with
# CSSFORMER_TEST_SEED=<seed> pytest ...
SEED = int(os.environ.get("CSSFORMER_TEST_SEED", random.randrange(2**31)))

# Normwise relative error ||x - ref|| / ||ref|| against a float64 reference computed on the same
# (already rounded) inputs. fp32 accumulates in fp32; half types round the output (and their gradients).
TOLERANCE = {torch.float64: 1e-12, torch.float32: 1e-5, torch.float16: 3e-3, torch.bfloat16: 2e-2}


def random_shape(seed: int) -> ProblemShape:
    rng = random.Random(seed)
    levels = tuple((rng.randint(1, 9), rng.randint(1, 9)) for _ in range(rng.randint(1, 4)))
    return ProblemShape(N=rng.randint(1, 2), levels=levels, M=rng.randint(1, 3), D=rng.choice((8, 24, 32)),
                        P=rng.randint(1, 4), Q=rng.randint(1, 12))


CASES = {
    "one-level-batch1": ProblemShape(N=1, levels=((6, 5),), M=1, D=8, P=1, Q=7),
    "odd-1x1-d24": ProblemShape(N=2, levels=((7, 9), (4, 5), (1, 1)), M=3, D=24, P=2, Q=13),
    "four-levels-d32": ProblemShape(N=2, levels=((5, 6), (3, 3), (2, 2), (1, 1)), M=2, D=32, P=3, Q=5),
    f"random-seed{SEED}": random_shape(SEED),
}


def rel_err(x: torch.Tensor, ref: torch.Tensor) -> float:
    x, ref = x.double().cpu(), ref.double().cpu()
    return ((x - ref).norm() / ref.norm().clamp_min(1e-30)).item()


def off_pixel_centres(inputs: list, fused: bool, margin: float = 0.05) -> list:
    """The inputs with every sampling point moved at least ``margin`` pixels off a pixel centre, in the
    inputs' own dtype.

    On a pixel centre (``x_im`` an integer) a location's gradient is one-sided, and which side an
    implementation takes depends on how it rounds ``x_im``: the kernel (``ref * W + off - 0.5`` in fp32)
    and the float64 reference (``(ref + off / W) * W - 0.5``) may differ there. Half-precision
    coordinates land exactly on centres often (bf16 has 8 bits of mantissa), so the gradient checks use
    points off the centres; ``test_edge_locations`` checks the centres themselves."""
    inputs = list(inputs)
    spatial_shapes = inputs[1].cpu()
    wh = spatial_shapes.flip(-1).double().view(1, 1, 1, -1, 1, 2)  # (W_l, H_l)
    coord_index = 4 if fused else 3
    for _ in range(4):
        coords = inputs[coord_index].detach().double().cpu()
        if fused:
            ref = inputs[3].detach().double().cpu()
            ref = ref[:, :, None] if ref.dim() == 3 else ref
            x_im = ref[:, :, None, :, None, :] * wh + coords - 0.5
        else:
            x_im = coords * wh - 0.5
        near = (x_im - x_im.round()).abs() < margin
        if not near.any():
            return inputs
        step = 2 * margin if fused else 2 * margin / wh  # in the coordinates' own units
        moved = torch.where(near, coords + step, coords)
        inputs[coord_index] = moved.to(device=inputs[coord_index].device, dtype=inputs[coord_index].dtype)
    raise AssertionError("could not move the sampling points off the pixel centres")
