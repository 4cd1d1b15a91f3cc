"""Convolution on the CPU: seven strategies behind one interface, chosen per problem and pass.

:func:`strategy` picks (rules and their measurements in its docstring and
BENCHMARKS.md; ``python -m benchmarks.strategies`` times every strategy on
every problem of the suite):

``"direct"`` (few input and output channels per group: depthwise,
ResNeXt-style groups, a network's first layer, few-channel layers on small
images; and forwards with few patch rows, such as RGB stems): compiled
loops, see :mod:`.direct`. ``"lanes"`` is the same on small planes of
large batches, with 16 images side by side. ``"planes"`` (depthwise 3x3
layers of stride 1 or 2: forward, weight gradient, the stride-2 input
gradient, and so the flipped input gradient of stride 1; the stride-1
forwards of 3x3 layers with few channels per group, such as ResNeXt's):
vector kernels over whole planes, reading the unpadded input, see
:mod:`.planes`.

``"implicit"`` (every forward with enough patch rows, and the gradients
where :data:`IMPLICIT_MIN_ROWS` and the rules after it say): no patch
matrix; a vector register tile multiplies straight from the padded planes,
see :mod:`.implicit`.

``"flipped"`` (the input gradient of most stride-1 layers, and, where
512-bit vectors run at full width, of strided ones with large outputs): the forward convolution of
``gy`` with the flipped kernel, one per stride phase, by whichever forward
strategy the rules pick for it (:func:`_grad_input_flipped`). Not a strategy of its
own: it cannot be forced.

``"winograd"`` (3x3, stride 1): Winograd F(4x4, 3x3) in all three
passes when forced, see :mod:`.winograd` for the algorithm and its
documented error bound. The rules no longer pick it: on the suite's 3x3
layers the implicit GEMM is as fast or faster, and exact.

``"cols"`` (the other gradients): a patch matrix, gathered by a compiled
threaded copy into a per-thread workspace, feeds BLAS. Forward, for images
with many outputs: ``(groups, K_g, C_g*T) @ (n, groups, C_g*T, P)`` over
the real output positions only, written straight into the
``(n, K, *out)`` result. For small images and for the gradients, the batch
is folded into the columns, ``(groups, C_g*T, n*L)``, so one GEMM covers a
whole chunk (``L`` counts a few dropped positions per row, see
:mod:`.windows`). The input gradient's patch matrix goes back through a
compiled scatter (col2im).

For large images the gradients work on the real outputs only, image by
image, with ``gy`` as it lies: ``W^T @ gy[b]`` then the scatter, and
``sum_b gy[b] @ cols[b]^T``; no dropped columns, so nothing is embedded or
masked.

``"taps"`` (1x1 kernels, and patch matrices too large for the workspace): no
patch matrix at all; a 1x1 stride-1 layer is one product per image, others
one batched GEMM per kernel tap on the tap's contiguous slice of the
phase-split input.

The engine takes the input unpadded, with the zero padding to apply
(``pads``): the direct kernels, the implicit GEMM, the gathers and the Winograd
transforms pad each plane in cache, so a padded copy of the input never reaches memory
(other padding modes are applied by :mod:`convlayer.functional` before).
Products go through :func:`.blas.matmul`, which leaves no BLAS threads
spinning. Batches are processed in chunks so the workspace stays under
:func:`convlayer.get_workspace_limit`. Inputs here are already validated
and of one float dtype; nothing in the engine checks arguments.
"""

from __future__ import annotations

import contextlib
import itertools
import math
import threading
from functools import lru_cache
from typing import NamedTuple

import numpy as np

from .. import _config
from . import blas
from .windows import WindowPlan, lattice_embed, lattice_mask, lattice_view, make_plan, merge_phases, split_phases


# Channels per group (inputs and outputs) and positions per image from which a 1x1 layer runs as plain
# products ("taps") rather than through a patch matrix; below them the products are too thin. (For
# larger kernels the patch matrix won every pass of the suite, weight gradients included once they used
# the real outputs only: dilated 3x3 22 vs 26-31 ms, 1-D k=9 79 vs 94 ms; python -m benchmarks.strategies.)
TAPS_MIN_CHANNELS = 16
TAPS_MIN_LENGTH = 256
# Largest C_g * K_g handled by the direct kernels (depthwise: 1; ResNeXt 4x4: 16; LeNet C1: 6), and on
# small images (tap runs of at most DIRECT_SMALL_LENGTH positions) the largest C_g * K_g for which they
# still beat the patch matrix, whose GEMM has only K_g rows there: LeNet C3 (6 -> 16, 10x10 outputs)
# 2.1 vs 2.9 ms forward, 3.0 vs 4.5 ms input gradient (python -m benchmarks.strategies).
DIRECT_MAX_CHANNELS = 16
DIRECT_SMALL_MAX_CHANNELS = 128
DIRECT_SMALL_LENGTH = 512


# Output positions per image from which the forward GEMM runs image by image, straight into the output
# (below it, per-image GEMMs are too small and the batch is folded into one GEMM instead).
PER_IMAGE_GEMM_MIN_OUTPUTS = 1024

# Images from which the direct kernels' work on small planes (runs of at most DIRECT_SMALL_LENGTH
# positions) goes to their lanes variant, 16 images side by side (see :mod:`.direct`): LeNet C3 at batch
# 64 and 256 ran 1.4-1.9x faster in each pass; on LeNet C1's 28x28 outputs, whose interleaved runs no
# longer fit the L1 cache, 1.5x slower.
LANES_MIN_IMAGES = 16
# With 256-bit vectors (AVX2), forwards on small planes with at least LANES_FORWARD_MIN_IMAGES images go to the
# lanes kernels too, not to the implicit GEMM (see IMPLICIT_MIN_ROWS), whose interleaved lattice of the whole
# batch (LeNet C3's at batch 256: 1.2 MB of input, 1.6 MB of output) outgrows Zen 3's 512 KB L2; with AVX-512 the
# implicit GEMM puts few output channels along the vectors instead (implicit.CHANNELS), and this was not
# measured. Zen 3, one process, best of 5 in each of 9-15 rounds alternating, implicit / lanes (ms, fastest and
# median round; one-off script): LeNet C3 at batch 256 2.26, 2.71 / 1.88, 2.33 (lanes faster in 14 of 15
# rounds), at 128 1.12, 1.39 / 0.97, 1.22 (8 of 9); 4 -> 32 channels, 5x5 on 14 x 14, batch 256 3.16, 4.18 /
# 2.82, 3.13 (9 of 9); 8 -> 16, 5x5 on 12 x 12, 1.72, 2.23 / 1.89, 2.04 (4 of 9) and 16 -> 8, 3x3 on 16 x 16,
# 2.63, 3.49 / 2.57, 3.36 (5 of 9). At batch 64 the implicit GEMM was as fast or faster (C3 0.57, 0.67 / 0.58,
# 0.67; 16 -> 8 0.57, 0.64 / 0.84, 0.91; 4 -> 32 0.71, 0.80 / 0.64, 0.82, implicit faster in 7 of 9 rounds).
LANES_FORWARD_MIN_IMAGES = 128

# Where the implicit GEMM (:mod:`.implicit`) takes over (python -m benchmarks.strategies; BENCHMARKS.md).
# Forward: wherever the patch matrix was used, on small planes with more than DIRECT_MAX_CHANNELS
# channel pairs (LeNet C3 at batch 256: 1.6 vs 2.0 ms lanes) and before Winograd (DeepBench C32 at
# 112x112: 14.8 vs 17.0 ms), with at least IMPLICIT_MIN_ROWS patch rows C_g * T per group (the 1-D stem's
# 10 rows: 1.7 vs 1.2 ms for the patch matrix). Input gradient: few input channels per group and many
# rows (speech, C=1 and 451 taps: 5.8 vs 10.9 ms; C3: 2.8 vs 3.8 ms; with 64-128 channels the patch
# matrix's product and scatter were as fast or faster; stride-1 layers mostly run theirs flipped, see
# FLIPPED_MIN_OUTPUTS). Weight gradient: at least IMPLICIT_GRAD_WEIGHT_MIN_ROWS rows and at most
# IMPLICIT_GRAD_WEIGHT_MAX_OUTPUTS outputs per group (against the patch matrix: speech 4.4 vs 14.7 ms, 3-D
# 3x3x3 14.5 vs 27.9, 1-D k=9 26.9 vs 46.9, ResNet 3x3/2's 256 outputs 7.2 vs 8.8, the 3-D stem's 81 rows
# 12.5 vs 15.9; against Winograd, ResNet 3x3 11.0 vs 13.3, DeepBench C32 14.2 vs 19.7 and C128 21.8 vs
# 21.9; even with DCGAN's 256 outputs, 10.7 vs 10.2; the 1-D stem's 10 rows 6.2 vs 1.4).
IMPLICIT_MIN_ROWS = 32
# The input gradient of a stride-1 layer is a forward convolution (:func:`_grad_input_flipped`), which the planner
# runs as one (with its own choice of forward strategy) where the flipped problem has at least
# FLIPPED_MIN_OUTPUTS outputs (the layer's C_g: a full tile of the implicit forward), IMPLICIT_MIN_ROWS patch
# rows (K_g * T) and more than one tap: dilated 3x3 8.2-9.2 vs 13.7-13.9 ms for the patch matrix, 3-D 3x3x3
# 17.8 vs 25.7, 1-D k=9 29.4 vs 42.8, ResNet 3x3 12.7 vs 13.0 for Winograd; but LeNet C3's 6 outputs 2.8 vs 2.6
# (implicit, scatter form), the 3-D stem's 3 outputs 22.9 vs 14.4 (patch matrix), ResNet 1x1 12.7 vs 5.9 (per-tap).
# And where the direct kernels take both problems and the flipped one has at least as many outputs as
# inputs per group: depthwise 3x3 2.6-2.9 vs 3.7-3.9 ms, ResNeXt's 4 x 4 4.2 vs 7.1 (their forward kernel is
# the faster); but LeNet C1's 6 inputs to 1 output, 0.9 vs 0.6 ms.
# With a stride, one forward per stride phase (each over about as many positions as the layer's output),
# where the layer has at least FLIPPED_MIN_PHASE_POSITIONS outputs per image: DCGAN's transposed 128->64
# forward (16x16 -> 32x32) 8.6-8.8 vs 10.8-12.4 ms for the patch matrix in the suite; on smaller planes the
# tile overhangs the phases' short rows: ResNet 3x3/2's 14x14 8.6-8.9 vs 7.3-7.6, DCGAN 256->128's 8x8
# 11.7-12.0 vs 8.9-9.2 (one-process A/B).
FLIPPED_MIN_OUTPUTS = 8
# Forwards with fewer than IMPLICIT_MIN_ROWS patch rows (and more than DIRECT_MAX_CHANNELS channel pairs, on
# large planes: RGB stems, one-channel inputs) no longer go to the patch matrix, whose GEMM has an inner
# dimension of 3-30 there; from FEW_ROWS_DIRECT_MIN_IMAGES images (the direct kernels' jobs are images and
# groups) they go to the direct kernels, except strided 1-D layers, which go to the implicit GEMM (with AVX-512
# only from FEW_ROWS_DIRECT_STRIDED_1D_MAX_ROWS rows). One
# process, rounds in turn (python -m benchmarks.few_rows), patch matrix / implicit / direct in ms:
# 3 -> 64 3x3 at 224x224, batch 8: 38-46 / 26-34 / 23-27; 1 -> 32 5x5 at 28x28, batch 64: 5.8-10.6 /
# 2.1-3.4 / 1.7-2.5; 3 -> 32 3x3/2 at 112x112: 3.9-6.3 / 2.2-3.8 / 1.8-2.6; 1-D 8 -> 64 k=3: 12-15 /
# 8.7-11.5 / 7.2-8.4; but the 1-D stem (1 -> 64, k=10, stride 5): 1.2-3.4 / 1.0-1.4 / 1.6-2.1.
FEW_ROWS_DIRECT_MIN_IMAGES = 4
# ...and up to FEW_ROWS_DIRECT_MAX_LENGTH lattice positions per image (512 x 512): a direct job holds its
# group's padded planes and four output planes at once (several MB per thread beyond that, not measured),
# where the patch matrix is chunked to the workspace limit.
FEW_ROWS_DIRECT_MAX_LENGTH = 1 << 18
# With 256-bit vectors (AVX2), 1-D forwards of stride 1 with at least FEW_ROWS_IMPLICIT_1D_MIN_ROWS patch rows
# (and fewer than IMPLICIT_MIN_ROWS) go to the implicit GEMM too, not the direct kernels. Zen 3, batch 8, 16000
# positions, one process, best of 5 in each of 7 rounds alternating, direct (the planner's choice before) /
# implicit (ms, fastest and median round; one-off script): 8 -> 64 k=3 (24 rows) 6.14, 6.47 / 5.10, 5.59
# (implicit faster in 7 of 7 rounds), 4 -> 64 k=5 (20) 5.76, 6.10 / 4.69, 5.37 (6), 2 -> 32 k=9 (18) 2.70, 3.30
# / 1.84, 2.18 (7), 2 -> 64 k=7 (14) 5.86, 6.04 / 3.66, 4.25 (7), 4 -> 64 k=3 (12) 4.71, 4.98 / 3.49, 4.34 (6);
# even with 3 -> 64 k=5 (15: 5.63, 5.97 / 5.40, 6.33, 2 rounds); but 1 -> 64 k=9 (9 rows) 2.23, 2.52 / 3.67,
# 4.14. 2-D layers with as few rows stay with the direct kernels (2 -> 32 3x3 at 64 x 64, 18 rows: 2.9-3.7 /
# 4.0-4.3, python -m benchmarks.few_rows).
FEW_ROWS_IMPLICIT_1D_MIN_ROWS = 12
# With 512-bit vectors, strided 1-D forwards with at most FEW_ROWS_DIRECT_STRIDED_1D_MAX_ROWS patch rows go to
# the direct kernels (on the terms of FEW_ROWS_DIRECT_MIN_IMAGES), not the implicit GEMM. Zen 4 (AVX-512), 16000
# positions, 64 outputs, one process, best of 15 in each of 5 rounds alternating, implicit / direct (ms, fastest
# and median round; /tmp script, not kept): the suite's 1-D stem (1 channel, k=10, stride 5, 10 rows) at batch 8
# 0.523, 0.536 / 0.332, 0.339 (direct faster in 5 of 5 rounds; PyTorch 0.315, 0.333), at batch 4 0.276, 0.315 /
# 0.178, 0.199 (5), at 32 2.44, 2.50 / 1.50, 1.95 (5); 2 -> 32 k=8 stride 4 (16 rows) 0.437, 0.462 / 0.339, 0.342
# (5); 1 -> 128 k=3 stride 2 2.65, 2.80 / 1.20, 1.87 (5); but from 21 rows the implicit GEMM: 3 -> 64 k=7 stride 3
# (batch 16, 4000 positions) 0.552, 0.594 / 0.729, 0.772 (0 of 5), 2 -> 64 k=15 stride 5 (30) 0.771, 0.785 /
# 0.822, 0.842 (0), 4 -> 64 k=6 stride 2 (24) 1.63, 1.92 / 1.70, 1.83 (1), 3 -> 64 k=10 stride 5 (30) 0.837,
# 0.917 / 0.754, 0.912 (3). Zen 3 keeps the implicit GEMM, measured there (see FEW_ROWS_DIRECT_MIN_IMAGES).
FEW_ROWS_DIRECT_STRIDED_1D_MAX_ROWS = 16
# Weight gradients with at most FEW_CHANNELS_DIRECT_GRAD_WEIGHT input channels per group go to the direct
# kernels on planes of up to FEW_ROWS_DIRECT_MAX_LENGTH positions, from one image per thread. On the AMD
# EPYC of BENCHMARKS.md (python -m benchmarks.few_rows --grad-weight; patch matrix / implicit / direct, ms):
# 3 -> 64 3x3 at 224x224 33-35 / 28-33 / 18-19, 1 -> 32 5x5 at 28x28 3.2-4.9 / 3.8-5.7 / 1.4-1.6,
# 3 -> 32 3x3/2 3.0-3.7 / 2.8-3.1 / 1.4-1.5, 1-D 8 -> 64 k=3 7.5-8.7 / 8.7-10.0 / 4.0-5.6, the 3-D stem's
# 2 images 17-19 / 13-19 / 10-13, the ResNet stem 27-30 / 19-22 / 15-21; the 1-D stem even (1.0-1.5 /
# 1.8-2.3 / 1.2-1.9). 1-D layers take the implicit GEMM's dot products instead (implicit.DOT, which
# came after these figures): the 1-D stem 0.38-0.47 / 0.48-0.52 ms (implicit / direct), 1-D 8 -> 64 k=3
# 2.97-3.32 / 4.32-6.17 (the same command, a later round); the suite's stem in one process, ten rounds
# alternating, 0.32 vs 0.41 (a one-off script). On Zen 3 (AVX2), with the 4 x 3 tile of dot products: the 1-D
# stem 0.59-0.82 / 0.67-1.07, 1-D 8 -> 64 k=3 4.81-5.76 / 5.68-6.40 (the same command).
FEW_CHANNELS_DIRECT_GRAD_WEIGHT = 8
# ...and at most FEW_CHANNELS_DIRECT_GRAD_WEIGHT_MAX_ROWS patch rows (C_g * T): with DeepBench's speech layer
# (one channel, 41 x 11 taps, 451 rows) the implicit GEMM wins, 3.7-4.0 vs 4.1-4.3 ms (one process, Zen 4);
# the ResNet stem's 147 rows stay with the direct kernels (6.2 vs 7.0 ms).
FEW_CHANNELS_DIRECT_GRAD_WEIGHT_MAX_ROWS = 256
FLIPPED_MIN_PHASE_POSITIONS = 256
IMPLICIT_GRAD_INPUT_MAX_CHANNELS = 8
# The input gradients of few input channels per group take the implicit GEMM from IMPLICIT_GRAD_INPUT_MIN_ROWS
# patch rows (python -m benchmarks.few_rows --grad-input; patch matrix / implicit, ms, Zen 4): one channel 5x5
# 2.3-2.5 / 1.0-1.3, RGB 3x3 22.7-25.1 / 19.1-20.0, RGB 3x3/2 1.2-1.4 / 0.9-1.1, the 3-D stem's 81 rows
# 14.2-17.0 / 8.7-9.8; but 1-D 8 -> 64 k=3, 24 rows, 4.7-5.1 / 5.2-6.2 (the 1-D stem's 10 rows: even).
IMPLICIT_GRAD_INPUT_MIN_ROWS = 25
# With 256-bit vectors (AVX2), those input gradients of stride-1 layers (at most IMPLICIT_GRAD_INPUT_MAX_CHANNELS
# input channels per group, more than one tap, more channel pairs than the direct kernels' own
# DIRECT_MAX_CHANNELS) run on the direct kernels wherever they have fewer than FEW_ROWS_DIRECT_GRAD_INPUT_ROWS
# patch rows, before the implicit GEMM, the flipped forwards and the patch matrix. Zen 3, the same command (5
# rounds, ms; planner before the rule / patch matrix / implicit / direct): RGB 3x3 on 224 x 224 (27 rows; the
# implicit GEMM) 55.5-64.1 / 30.9-43.9 / 52.8-60.8 / 34.7-37.2, PyTorch 46.8-60.9; 1-D 8 -> 64 k=3 (24 rows;
# the flipped forward) 14.6-22.3 / 7.6-10.2 / 13.6-29.9 / 9.0-10.9, PyTorch 8.1-9.6; one channel 5x5 (25)
# 2.3-4.1 / 6.2-7.6 / 2.8-3.2 / 2.0-2.6; 2 -> 32 3x3 (18; the patch matrix) 5.3-6.9 / 5.4-6.1 / 5.2-6.3 /
# 4.2-6.2. Strided layers keep their rules: the RGB 3x3/2 (27 rows) 2.3-3.5 / 3.3-4.6 / 2.3-2.6 / 2.4-2.8 (the
# implicit GEMM), the suite's 1-D stem (10 rows, stride 5) 1.6-2.7 / 1.6-1.9 / 1.2-1.7 / 1.0-1.4 (the patch
# matrix; the direct kernels faster, but not a rule of one layer). With 81 rows (the 3-D stem) the three ran
# alike, with 147 (the ResNet stem) the implicit GEMM won (24.5-32.8 / 30.0-38.0 / - / 35.7-41.2).
FEW_ROWS_DIRECT_GRAD_INPUT_ROWS = 64
# Elsewhere, from IMPLICIT_GRAD_INPUT_OTHER_MIN_ROWS rows, as measured in earlier rounds: against the direct and
# lanes kernels (small planes, few channel pairs; LeNet C3's 150 rows: 2.8 vs 3.8 ms), and for the strided input
# gradients with more channels (see _strided_grad_input_implicit); fewer rows were not measured there.
IMPLICIT_GRAD_INPUT_OTHER_MIN_ROWS = 128
IMPLICIT_GRAD_WEIGHT_MIN_ROWS = 64
IMPLICIT_GRAD_WEIGHT_MAX_OUTPUTS = 256
STRATEGIES = ("direct", "lanes", "taps", "cols", "winograd", "implicit", "planes")
_forced: list[str] = []


@contextlib.contextmanager
def force_strategy(name: str):
    """Use one strategy for every convolution inside the block (tests and benchmarks)."""
    if name not in STRATEGIES:
        raise ValueError(f"force_strategy: {name!r} is not one of {STRATEGIES}")
    _forced.append(name)
    try:
        yield
    finally:
        _forced.pop()


def strategy(c_g: int, k_g: int, plan, pass_: str = "forward", n: int = 1, flip: bool = True) -> str:
    """The algorithm for one pass (``"forward"``, ``"grad_input"``, ``"grad_weight"``) of a convolution
    with ``c_g`` inputs and ``k_g`` outputs per group, on ``n`` images.

    The rules follow the benchmark suite (``python -m benchmarks.strategies``
    times every strategy on every problem; see BENCHMARKS.md): for most
    input gradients of stride-1 layers (and, with full-width AVX-512, of
    strided ones with large outputs), ``"flipped"``, forward convolutions of the flipped
    problem with their own choice of strategy (see
    :data:`FLIPPED_MIN_OUTPUTS`; ``flip=False`` gives the rules without it,
    for where it does not apply); the plane kernels for depthwise 3x3 layers
    and the forwards of grouped ones (see :func:`_planes_fit`); the direct
    kernels for few channels per group and for forwards with few patch rows (see
    :data:`FEW_ROWS_DIRECT_MIN_IMAGES`); the implicit GEMM for forwards,
    most weight gradients and, except with full-width AVX-512 (see
    :func:`_strided_grad_input_implicit`), strided input gradients
    (see :data:`IMPLICIT_MIN_ROWS`; Winograd F(4x4, 3x3) runs only when forced);
    otherwise the patch matrix, gathered by a threaded compiled copy, feeds
    one large GEMM and wins in general, even for 2-tap kernels (WaveNet k=2:
    21 vs 32 ms weight gradient, 25 vs 40 ms input gradient against per-tap
    GEMMs); per-tap GEMMs win where there is nothing to gather (1x1
    kernels); for the lanes kernels see :data:`LANES_MIN_IMAGES` and
    :data:`LANES_FORWARD_MIN_IMAGES`. A forced
    strategy that does not apply to the problem (Winograd on a 5x5 kernel,
    say) falls back to these rules.
    """
    if _forced and _forced_fits(_forced[-1], c_g, k_g, plan, pass_):
        return _forced[-1]
    if _planes_fit(c_g, k_g, plan, pass_):
        return "planes"
    if pass_ == "grad_input" and _few_rows_direct_grad_input(c_g, k_g, plan):
        return "direct"
    if pass_ == "grad_input" and flip and _flipped_wins(c_g, k_g, plan):
        return "flipped"
    if c_g * k_g <= DIRECT_MAX_CHANNELS:
        return "lanes" if n >= LANES_MIN_IMAGES and plan.length <= DIRECT_SMALL_LENGTH else "direct"
    if c_g * k_g <= DIRECT_SMALL_MAX_CHANNELS and plan.length <= DIRECT_SMALL_LENGTH:
        if _implicit_wins(c_g, k_g, plan, pass_, "direct") and not _lanes_forward(pass_, n):
            return "implicit"
        return "lanes" if n >= LANES_MIN_IMAGES else "direct"
    if (pass_ == "grad_weight" and c_g <= FEW_CHANNELS_DIRECT_GRAD_WEIGHT and plan.n_taps > 1
            and c_g * plan.n_taps <= FEW_CHANNELS_DIRECT_GRAD_WEIGHT_MAX_ROWS
            and n >= blas._threads() and plan.length <= FEW_ROWS_DIRECT_MAX_LENGTH):
        if len(plan.out) == 1 and _implicit().DOT:
            return "implicit"  # the dot products along the positions
        return "direct"  # an image per thread at least: the kernel's jobs are images (and groups)
    wide = min(c_g, k_g) >= TAPS_MIN_CHANNELS and plan.length >= TAPS_MIN_LENGTH
    if plan.n_taps == 1 and wide:
        return "taps"
    if _implicit_wins(c_g, k_g, plan, pass_, "cols"):
        return "implicit"
    if pass_ == "forward" and plan.n_taps > 1 and not all(o == 1 for o in plan.out):
        direct = n >= FEW_ROWS_DIRECT_MIN_IMAGES and plan.length <= FEW_ROWS_DIRECT_MAX_LENGTH
        if len(plan.out) == 1 and not plan.unit_stride:  # few patch rows (see FEW_ROWS_DIRECT_MIN_IMAGES)
            direct = direct and not _zen3_rules() and c_g * plan.n_taps <= FEW_ROWS_DIRECT_STRIDED_1D_MAX_ROWS
            return "direct" if direct else "implicit"  # see FEW_ROWS_DIRECT_STRIDED_1D_MAX_ROWS
        if len(plan.out) == 1 and c_g * plan.n_taps >= FEW_ROWS_IMPLICIT_1D_MIN_ROWS and _zen3_rules():
            return "implicit"  # see FEW_ROWS_IMPLICIT_1D_MIN_ROWS
        if direct:
            return "direct"
    if c_g * plan.n_taps * plan.length * 8 > _config.get_workspace_limit():
        return "taps"  # the patch matrix of even one image and group would exceed the workspace limit
    return "cols"


def _implicit_wins(c_g: int, k_g: int, plan, pass_: str, instead_of: str) -> bool:
    """Whether the implicit GEMM beats ``instead_of`` on this pass (see :data:`IMPLICIT_MIN_ROWS`).
    Never for one output per image (LeNet's C5): the input as it lies is the patch matrix there."""
    rows = c_g * plan.n_taps
    if all(o == 1 for o in plan.out):
        return False
    if pass_ == "grad_input":  # its own minimums of rows (see IMPLICIT_GRAD_INPUT_MIN_ROWS)
        if c_g <= IMPLICIT_GRAD_INPUT_MAX_CHANNELS and instead_of == "cols":
            return rows >= IMPLICIT_GRAD_INPUT_MIN_ROWS
        return rows >= IMPLICIT_GRAD_INPUT_OTHER_MIN_ROWS and (
            c_g <= IMPLICIT_GRAD_INPUT_MAX_CHANNELS or (not plan.unit_stride and _strided_grad_input_implicit()))
    if rows < IMPLICIT_MIN_ROWS:
        return False
    if pass_ == "forward":
        return True
    return (instead_of == "cols" and rows >= IMPLICIT_GRAD_WEIGHT_MIN_ROWS
            and k_g <= IMPLICIT_GRAD_WEIGHT_MAX_OUTPUTS)


def _few_rows_direct_grad_input(c_g: int, k_g: int, plan) -> bool:
    """Whether the input gradient of a stride-1 layer with few input channels and few patch rows runs on the
    direct kernels, with 256-bit vectors (see :data:`FEW_ROWS_DIRECT_GRAD_INPUT_ROWS`)."""
    return (plan.unit_stride and c_g <= IMPLICIT_GRAD_INPUT_MAX_CHANNELS and c_g * k_g > DIRECT_MAX_CHANNELS
            and plan.n_taps > 1 and c_g * plan.n_taps < FEW_ROWS_DIRECT_GRAD_INPUT_ROWS and _zen3_rules())


def _lanes_forward(pass_: str, n: int) -> bool:
    """Whether a forward on small planes that the implicit GEMM would take goes to the lanes kernels instead:
    with 256-bit vectors, from :data:`LANES_FORWARD_MIN_IMAGES` images."""
    return pass_ == "forward" and n >= LANES_FORWARD_MIN_IMAGES and _zen3_rules()


def _zen3_rules() -> bool:
    """Whether the rules measured on Zen 3 with 256-bit vectors apply (:func:`_lanes_forward`,
    :func:`_few_rows_direct_grad_input`, :data:`FEW_ROWS_IMPLICIT_1D_MIN_ROWS`): without AVX-512, whose machines
    keep the rules measured there."""
    return _implicit().VECTOR_BYTES == 32


def _strided_grad_input_implicit() -> bool:
    """Whether strided input gradients with many channels go to the implicit GEMM (see
    :data:`IMPLICIT_GRAD_INPUT_MAX_CHANNELS`): except where 512-bit vectors run at full width
    (:data:`.implicit.FULL_WIDTH_512`). The patch matrix and the flipped phases won on an Intel Xeon;
    the implicit GEMM on Zen 3 (ResNet 3x3/2 10.2-10.6 vs 17.5-20.6 ms) and Zen 4 (6.3-6.9 vs 12.4-14.8,
    DCGAN's transposed forwards 10.6-11.5 vs 11.3-16.0 and 6.9-7.1 vs 7.7-8.8)."""
    return not _implicit().FULL_WIDTH_512


def _flipped_wins(c_g: int, k_g: int, plan) -> bool:
    """Whether the input gradient runs as forward convolutions of the flipped problem, one per stride phase
    (:func:`_grad_input_flipped`; see :data:`FLIPPED_MIN_OUTPUTS`). Forced strategies run their own gradient."""
    if plan.n_taps == 1 or all(o == 1 for o in plan.out):
        return False
    if not plan.unit_stride:  # one forward per stride phase, each over about out positions per image
        return (not _strided_grad_input_implicit() and c_g >= FLIPPED_MIN_OUTPUTS
                and k_g * plan.n_taps >= IMPLICIT_MIN_ROWS * plan.phases
                and math.prod(plan.out) >= FLIPPED_MIN_PHASE_POSITIONS)
    if c_g * k_g <= DIRECT_MAX_CHANNELS:  # both in the direct kernels
        return c_g >= k_g
    return c_g >= FLIPPED_MIN_OUTPUTS and k_g * plan.n_taps >= IMPLICIT_MIN_ROWS


def _winograd():
    from . import winograd

    return winograd


def _forced_fits(how: str, c_g: int, k_g: int, plan, pass_: str) -> bool:
    """Whether the forced strategy ``how`` applies to this pass (the others fall back to the rules)."""
    if how == "winograd":
        return _winograd_fits(c_g, k_g, plan)
    if how == "planes":
        return _planes_fit(c_g, k_g, plan, pass_)
    return True


def _planes_fit(c_g: int, k_g: int, plan, pass_: str) -> bool:
    """Whether the plane kernels of :mod:`.planes` compute this pass: the forward and weight gradient of
    layers with one input channel per group, 3 x 3, stride 1 or 2, 2-D, and the input gradient of the
    stride-2 ones without a channel multiplier (stride 1's is a forward, flipped); and the stride-1 forward
    of 3 x 3 layers whose groups the direct kernels would take (at most DIRECT_MAX_CHANNELS channel pairs;
    their stride-1 input gradients are such forwards, flipped). On all the layers measured, with 512-bit
    vectors (Zen 4) and with 256-bit ones (Zen 3), they beat the direct and lanes kernels; so they run on
    any CPU. Zen 4 (one process, best of 20 or 15, ms):

    * Stride-1 forwards, direct / lanes / depthwise: MobileNet's 144 x 56 x 56, batch 8, 1.7-2.6 (planner)
      / - / 0.9-1.5; 576 x 14 x 14, batch 32, 3.5 / 3.6 / 1.5, batch 8 1.2 / 1.4 / 0.6; 192 x 28 x 28,
      batch 32, 4.0 / 7.2 / 2.0; 32 x 112 x 112, batch 16, 3.2 / 8.6 / 1.5; 960 x 7 x 7, batch 32, 3.4 /
      2.9 / 1.9.
    * The suite's stride-2 forward (96 x 112 x 112, batch 8), direct / depthwise: 3.6-4.7 (in the suite) /
      1.4-1.6.
    * Weight gradients, direct / depthwise: 144 x 56 x 56 2.3-2.4 / 0.9-1.5; the stride-2 layer 4.7-5.1 /
      1.6.
    * The stride-2 input gradient, direct / depthwise: 4.9-6.4 / 1.4-2.4 with freed memory kept, as in the
      suite; 4.5-4.7 / 3.4-3.6 with new pages for each gradient.
    * ResNeXt's 4 x 4 groups (128 x 56 x 56, batch 8), direct / planes (direct sums, before F(2, 3) down the
      rows): forward 2.6-2.9 / 1.9-2.0, input gradient (flipped) 4.7-5.6 / 2.1-2.7.

    Zen 3, AVX2, the suite's passes (``F.conv`` and ``F.conv_backward``, best of 5 in each of 7 alternating
    rounds, one process; fastest and median round, ms), direct / planes: MobileNet's stride-1 layer forward
    3.1, 3.2 / 2.4, 2.7, input gradient (flipped) 3.2, 3.4 / 2.4, 2.5, weight gradient 4.0, 4.5 / 2.7, 3.1; the
    stride-2 layer 4.8, 5.0 / 3.3, 3.5, 6.2, 6.6 / 4.3, 4.7 and 6.8, 7.0 / 3.6, 3.9; ResNeXt's forward 4.7,
    4.9 / 3.5, 4.4 (winning 7, 7, 7, 7, 7, 7 and 6 rounds of 7).
    """
    if c_g > 1:  # few channels per group, where the direct kernels would run: the grouped forward
        return pass_ == "forward" and c_g * k_g <= DIRECT_MAX_CHANNELS and _plane_kernels().applies_grouped(c_g, plan)
    if not _plane_kernels().applies(c_g, plan):
        return False
    return pass_ != "grad_input" or (k_g == 1 and not plan.unit_stride)


def _winograd_fits(c_g: int, k_g: int, plan) -> bool:
    """Whether forced Winograd applies: 3x3 stride 1, and one image's transformed input and products within
    the workspace limit (chunks are whole images)."""
    wg = _winograd()
    return wg.supported(plan) and wg.bytes_per_image(c_g, k_g, plan.out, 8) <= _config.get_workspace_limit()


def _winograd_scratch(c_g, k_g, tiles, dtype):
    """Views of the thread's workspace: the transformed input ``(36, C_g, tiles)`` and the products (or the
    transformed gradient) ``(36, K_g, tiles)``."""
    patch = _winograd().PATCH ** 2
    buf = workspace((patch * (c_g + k_g) * tiles,), dtype)
    v = buf[:patch * c_g * tiles].reshape(patch, c_g, tiles)
    return v, buf[v.size:].reshape(patch, k_g, tiles)


def _winograd_grad_weight(gy, x, groups, pads):
    """Weight gradient of a 3x3 stride-1 convolution by Winograd (see :func:`.winograd.grad_weight`)."""
    wg = _winograd()
    n, c = x.shape[:2]
    k = gy.shape[1]
    c_g, k_g = c // groups, k // groups
    out_shape = gy.shape[2:]
    per_image = wg.tiles_per_image(out_shape)
    step = max(1, _config.get_workspace_limit() // wg.bytes_per_image(c_g, k_g, out_shape, x.itemsize))
    gw = np.empty((k, c_g, 3, 3), dtype=x.dtype)
    for g in range(groups):
        xg = x[:, g * c_g:(g + 1) * c_g] if groups > 1 else x
        gyg = gy[:, g * k_g:(g + 1) * k_g] if groups > 1 else gy
        acc = np.zeros((wg.PATCH ** 2, k_g, c_g), dtype=x.dtype)
        for start in range(0, n, step):
            m = min(n, start + step) - start
            v, ug = _winograd_scratch(c_g, k_g, m * per_image, x.dtype)
            wg.grad_weight(xg[start:start + m], gyg[start:start + m], pads, acc, v, ug)
        gw[g * k_g:(g + 1) * k_g] = wg.weight_from_products(acc, x.dtype)
    return gw


def _winograd_forward(x, w, groups, pads, y):
    """``y`` from ``x`` zero-padded by ``pads`` (see :mod:`.winograd`), batch chunked under the workspace limit."""
    wg = _winograd()
    out_shape = y.shape[2:]
    n, c = x.shape[:2]
    k = w.shape[0]
    c_g, k_g = c // groups, k // groups
    per_image = wg.tiles_per_image(out_shape)
    step = max(1, _config.get_workspace_limit() // wg.bytes_per_image(c_g, k_g, out_shape, x.itemsize))
    for g in range(groups):
        xg = x[:, g * c_g:(g + 1) * c_g] if groups > 1 else x
        u = wg.transform_weight(w[g * k_g:(g + 1) * k_g])
        for start in range(0, n, step):
            m = min(n, start + step) - start
            v, prod = _winograd_scratch(c_g, k_g, m * per_image, x.dtype)
            out = y[start:start + m, g * k_g:(g + 1) * k_g] if groups > 1 else y[start:start + m]
            if out.flags.c_contiguous:
                wg.forward(xg[start:start + m], u, pads, out, v, prod)
            else:
                part = np.empty(out.shape, dtype=y.dtype)
                wg.forward(xg[start:start + m], u, pads, part, v, prod)
                out[...] = part
    return y


def _implicit():
    from . import implicit  # compiled on first use, like the direct kernels

    return implicit


def _scratch(dtype):
    """The thread's workspace as a function of the shape, for :mod:`.implicit`."""
    return lambda shape: workspace(shape, dtype)


def _plane_kernels():
    from . import planes  # compiled on first use, like the direct kernels

    return planes


def _parallel_kernels(n, k, c_g, plan) -> bool:
    """Whether the plane kernels run on all threads (see :data:`.direct.KERNEL_PARALLEL_MIN_WORK`)."""
    return _work(n, k, c_g, plan) >= _direct().KERNEL_PARALLEL_MIN_WORK


def _direct():
    from . import direct  # compiled on first use; importing numba costs ~0.3 s

    return direct


def _pointwise(plan, pads) -> bool:
    """A 1x1 convolution with stride 1 and no padding: a plain product per image."""
    return plan.n_taps == 1 and plan.unit_stride and plan.padded == plan.full and not any(
        lo or hi for lo, hi in pads)


def _pointwise_tile(inner: int, outer: int) -> bool:
    """Whether a 1x1 product (a forward, or an input gradient as the forward of the transposed weights) with
    ``inner`` input and ``outer`` output channels per group runs on the implicit GEMM's tile, on its operand as
    it lies (:func:`.implicit.forward_pointwise`), rather than as OpenBLAS's per-image products: where the inputs
    (the inner dimension) are at most ``implicit.POINTWISE_MAX_INNER`` (64 with AVX-512, 48 with AVX2), or,
    with AVX-512 (``implicit.POINTWISE_FEWER_OUTPUTS``), the outputs at most the inputs. A likely reason:
    OpenBLAS zeroes each image's output first, its beta step for NumPy's beta = 0, then adds the product to
    it, two passes over an output that outgrows the caches, with an inner dimension of a few dozen too little
    arithmetic to hide them; the tile writes each output once. The AVX2 measurements are in
    :mod:`.implicit`'s comment. Zen 4, one process, GFLOP/s against OpenBLAS: ResNet 256->64 142-167 vs
    88-148, MobileNet 144->24 137-148 vs 86-91, 128->128 150-183 vs 143-171, 512->128 164-180 vs 150-176,
    1024->256 at 14x14 122-152 vs 125-150 (four rounds); with more outputs than inputs, ms, best of 5 in each
    of 8-12 rounds alternating (min-median): the suite's input gradients, ResNet 1x1 256->64 4.87-4.93 vs
    5.21-5.32 and MobileNet 144->24 1.03-1.16 vs 1.25-1.34; forwards 64->256 at 56x56 4.76-5.49 vs 5.21-5.62,
    32->192 at 28x28 0.43-0.46 vs 0.54-0.76, 16->96 at 112x112 10.5-11.2 vs 10.8-11.9; even (within 2%) with
    64->384 and 96->576 at 14x14, 128->512 at 28x28, 160->960 at 7x7, 256->1024 at 14x14 (one-off scripts)."""
    imp = _implicit()
    return inner <= imp.POINTWISE_MAX_INNER or (imp.POINTWISE_FEWER_OUTPUTS and outer <= inner)


def _dot_pointwise(c_g: int, k_g: int) -> bool:
    """Whether a 1x1 stride-1 layer's weight gradient runs as dot products along the positions
    (:func:`.implicit.grad_weight_rows`) rather than as OpenBLAS's per-image products: with AVX-512, every one;
    with AVX2, where the fewer of its channels per group, inputs or outputs, are at most
    ``implicit.DOT_POINTWISE_MAX_CHANNELS`` (see the measurements there)."""
    limit = _implicit().DOT_POINTWISE_MAX_CHANNELS
    return limit is None or min(c_g, k_g) <= limit


def _dense(plan, pads) -> bool:
    """The kernel covers the whole (unpadded) input, one output per image: a fully connected layer, and the
    input's own layout ``(C, *S)`` is already the patch matrix (LeNet's C5)."""
    return (all(o == 1 for o in plan.out) and plan.full == plan.kernel and all(d == 1 for d in plan.dilation)
            and not any(lo or hi for lo, hi in pads))


# Elements from which the finiteness check runs on all threads (below, on one: a layer's weights).
FINITE_CHECK_MIN_SIZE = 1 << 16


def _no_dropped(plan) -> bool:
    """Whether the lattice has no dropped positions (1-D layers, for one): then no input meets a zero of the
    gradient's padding, and the weight gradients need not look for inf and NaN in it (WaveNet's 16 MB input:
    0.5 of 9 ms)."""
    return plan.length == math.prod(plan.out)


def _all_finite(a: np.ndarray) -> bool:
    """True when no element is inf or NaN (one read-only pass, threaded from FINITE_CHECK_MIN_SIZE elements).
    Strided arrays: a sum is finite only if every term is (a finite sum that overflows answers False, which
    only costs the slower exact path)."""
    if a.flags.c_contiguous:
        return _direct().all_finite(a, a.size >= FINITE_CHECK_MIN_SIZE)
    with np.errstate(over="ignore", invalid="ignore"):
        return bool(np.isfinite(np.sum(a)))


def _work(n, k, c_g, plan) -> int:
    """Multiply-adds of one pass of the direct kernels (dropped positions included)."""
    return n * k * c_g * plan.n_taps * plan.length


def _direct_args(d, plan, x_shape, pads, whole, how="direct"):
    """Kernel arguments of the direct (or lanes) kernels: the runs, then the fill segments minus ``complete``."""
    lanes = how == "lanes"
    runs = d.lanes_run_arrays(plan, whole) if lanes else d.run_arrays(plan, whole)
    return (*runs, *d.fill_arrays(plan, tuple(x_shape[2:]), tuple(pads), lanes)[:-1])


def _kernel_name(pass_: str, how: str) -> str:
    return pass_ if how == "direct" else f"{pass_}_lanes"


def _times_zero(a: np.ndarray, axis: int) -> np.ndarray:
    """``(a.shape[axis],)``: the sum of ``0 * a`` over all other axes, each entry 0, or NaN where its slice of
    ``a`` holds inf or NaN (as ``0 * inf``): the outputs of a pass whose other operand, the padded input, is
    all padding."""
    rest = tuple(i for i in range(a.ndim) if i != axis)
    finite = np.isfinite(a).all(axis=rest)
    return np.where(finite, 0, np.nan).astype(a.dtype)


def _zero_pad(x: np.ndarray, pads) -> np.ndarray:
    """``x (N, C, *S)`` zero-padded by ``pads`` ((lo, hi) per spatial axis); ``x`` itself when all are zero."""
    if not any(lo or hi for lo, hi in pads):
        return x
    xp = np.zeros((*x.shape[:2], *(s + lo + hi for s, (lo, hi) in zip(x.shape[2:], pads))), dtype=x.dtype)
    xp[(slice(None), slice(None), *(slice(lo, lo + s) for s, (lo, _) in zip(x.shape[2:], pads)))] = x
    return xp


def _crop(gxp: np.ndarray, pads, in_shape) -> np.ndarray:
    """Adjoint of :func:`_zero_pad`: the interior of ``gxp`` (a new array unless nothing was padded)."""
    if not any(lo or hi for lo, hi in pads):
        return gxp
    return gxp[(slice(None), slice(None), *(slice(lo, lo + s) for s, (lo, _) in zip(in_shape[2:], pads)))].copy()


def _planes(a: np.ndarray) -> np.ndarray:
    """``(N, C, *S)`` as contiguous ``(N, C, prod(S))`` (a view when already contiguous)."""
    return np.ascontiguousarray(a).reshape(*a.shape[:2], math.prod(a.shape[2:]))


def _tap_views(xph: np.ndarray, n: int, groups: int, plan: WindowPlan):
    """Yield ``(t, view (n, groups, C_g, L))`` of each tap's input slice (no copies)."""
    v = xph.reshape(n, groups, xph.shape[1] // groups, plan.phases, plan.q_size)  # (n, g, C_g, R, Q)
    L = plan.length
    for t, (r, off) in enumerate(plan.taps):
        yield t, v[:, :, :, r, off:off + L]


def _chunks(n: int, per_item_bytes: int):
    step = max(1, _config.get_workspace_limit() // max(per_item_bytes, 1))
    for start in range(0, n, step):
        yield slice(start, min(n, start + step))


def _phases(xp_chunk: np.ndarray, plan: WindowPlan) -> np.ndarray:
    """Phase-split padded chunk ``(n, C, *P)`` as ``(n, C, R, Q)``."""
    n, c = xp_chunk.shape[:2]
    return split_phases(xp_chunk.reshape(n * c, *xp_chunk.shape[2:]), plan).reshape(n, c, plan.phases, plan.q_size)


_workspace = threading.local()
# Bytes to which the workspace is aligned: a cache line, and a 512-bit vector.
ALIGNMENT = 64


def workspace(shape, dtype) -> np.ndarray:
    """A scratch array reused across calls on this thread (never returned to callers).

    Memory written for the first time after allocation is slow on virtual
    machines (page faults, ~1 GB/s): reusing one buffer for the patch
    matrix halves the time of a GEMM-strategy convolution. The buffer is at
    most the workspace limit plus one image's patch matrix. It starts on a
    cache line (:data:`ALIGNMENT`), so vector loads at multiples of 64 bytes
    from its start never straddle two lines.
    """
    nbytes = math.prod(shape) * np.dtype(dtype).itemsize
    buf = getattr(_workspace, "buf", None)
    if buf is None or buf.nbytes < nbytes:
        raw = np.empty(nbytes + ALIGNMENT, dtype=np.uint8)
        skip = -raw.ctypes.data % ALIGNMENT
        buf = _workspace.buf = raw[skip:skip + nbytes]
    return buf[:nbytes].view(dtype).reshape(shape)


def release_workspace() -> None:
    """Free this thread's scratch buffer (``convlayer.release_workspace()``; the next GEMM-strategy call makes a new one)."""
    _workspace.buf = None


def _cols(x_chunk: np.ndarray, plan: WindowPlan, groups: int, pads) -> np.ndarray:
    """Patch matrix ``(g, C_g*T, n*L)`` of a chunk ``(n, C, *S)`` zero-padded by ``pads``, batch folded into
    the columns.

    It lives in the thread's :func:`workspace`: use it before the next call.
    """
    n, c = x_chunk.shape[:2]
    buf = workspace((c, plan.n_taps, n, plan.length), x_chunk.dtype)
    cols = _direct().gather(np.ascontiguousarray(x_chunk), plan, pads, buf)  # (C, T, n, L)
    return cols.reshape(groups, (c // groups) * plan.n_taps, n * plan.length)


def _embed(gy_chunk: np.ndarray, plan: WindowPlan, groups: int) -> np.ndarray:
    """``gy (n, K, *out)`` into the GEMM layout ``(g, K_g, n*L)`` with zeros at the dropped columns."""
    n, k = gy_chunk.shape[:2]
    flat = lattice_embed(np.swapaxes(gy_chunk, 0, 1), plan)  # (K, n, L)
    return flat.reshape(groups, k // groups, n * plan.length)


def _workspace_per_item(c: int, k: int, plan: WindowPlan, itemsize: int) -> int:
    return (c * (plan.n_taps + plan.phases) + k) * plan.length * itemsize


def _taps_per_item(c: int, k: int, plan: WindowPlan, itemsize: int) -> int:
    return 2 * (c + k) * plan.length * itemsize


def conv_forward(x: np.ndarray, w: np.ndarray, groups: int, plan: WindowPlan, pads) -> np.ndarray:
    """Valid cross-correlation of ``x (N, C, *S)`` zero-padded by ``pads`` with ``w (K, C/g, *k)``: ``(N, K, *out)``.

    ``plan`` describes the padded input (``plan.full == S + lo + hi``).
    """
    n, c = x.shape[:2]
    k = w.shape[0]
    c_g, k_g = c // groups, k // groups
    wmat = w.reshape(groups, k_g, c_g * plan.n_taps)  # (g, K_g, C_g*T)
    y = np.empty((n, k, *plan.out), dtype=x.dtype)
    if y.size == 0:
        return y
    if x.size == 0:  # no input elements (an empty axis, padded): every term is a weight times a padding zero
        y[...] = _times_zero(w, 0).reshape(1, k, *(1,) * len(plan.out))
        return y
    how = strategy(c_g, k_g, plan, "forward", n)
    if how == "planes":  # reads the unpadded planes
        return _plane_kernels().forward(x, w, groups, plan, pads, y, _parallel_kernels(n, k, c_g, plan))
    if how in ("direct", "lanes"):  # the padding happens plane by plane inside the kernel
        d = _direct()
        d.kernel(_kernel_name("forward", how), _work(n, k, c_g, plan))(
            _planes(x), np.ascontiguousarray(wmat.reshape(k, c_g, plan.n_taps)),
            *_direct_args(d, plan, x.shape, pads, True, how), groups, y.reshape(n, k, math.prod(plan.out)))
        return y
    if how == "winograd" and _all_finite(w) and _all_finite(x):
        return _winograd_forward(x, w, groups, pads, y)
    if how == "winograd":  # inf and NaN would spread over whole tiles: take the exact path
        how = "cols"
    if how == "implicit" and not _dense(plan, pads):
        im = _implicit()
        for sl in _chunks(n, im.forward_bytes(c, k, groups, plan, x.shape, pads, x.dtype)):
            im.forward(x[sl], w, groups, plan, pads, y[sl], _scratch(x.dtype))
        return y
    if how == "implicit":
        how = "cols"
    if how == "cols" and _dense(plan, pads):  # the kernel covers the input: a fully connected layer
        xg = _planes(x).reshape(n, groups, c_g * plan.n_taps).swapaxes(0, 1)  # (g, n, C_g*T)
        out = blas.matmul(xg, wmat.swapaxes(1, 2), np.empty((groups, n, k_g), dtype=x.dtype))  # (g, n, K_g)
        y[...] = out.swapaxes(0, 1).reshape(y.shape)
        return y
    if how == "taps" and _pointwise(plan, pads) and _pointwise_tile(c_g, k_g):
        return _implicit().forward_pointwise(x, w, groups, y, _parallel_kernels(n, k, c_g, plan))
    if how == "taps" and _pointwise(plan, pads):  # 1x1, stride 1: one GEMM per image, straight into y
        blas.matmul(wmat, _planes(x).reshape(n, groups, c_g, -1), y.reshape(n, groups, k_g, -1))
        return y
    if how == "taps":
        xp = _zero_pad(x, pads)
        wtaps = np.moveaxis(wmat.reshape(groups, k_g, c_g, plan.n_taps), -1, 0)  # (T, g, K_g, C_g)
        for sl in _chunks(n, _taps_per_item(0, k, plan, xp.itemsize)):
            m = xp[sl].shape[0]
            acc = np.zeros((m, groups, k_g, plan.length), dtype=xp.dtype)
            tmp = np.empty_like(acc)
            for t, view in _tap_views(_phases(xp[sl], plan), m, groups, plan):
                blas.matmul(wtaps[t], view, tmp)  # (n, g, K_g, L)
                acc += tmp
            y[sl] = lattice_view(acc.reshape(m, k, plan.length), plan)
        return y
    count = math.prod(plan.out)
    if count < PER_IMAGE_GEMM_MIN_OUTPUTS:  # small images: one GEMM for the whole chunk, batch in the columns
        for sl in _chunks(n, _workspace_per_item(c, k, plan, x.itemsize)):
            m = x[sl].shape[0]
            acc = blas.matmul(wmat, _cols(x[sl], plan, groups, pads), np.empty((groups, k_g, m * plan.length), x.dtype))
            y[sl] = np.swapaxes(lattice_view(acc.reshape(k, m, plan.length), plan), 0, 1)  # (n, K, *out)
        return y
    d = _direct()
    for sl in _chunks(n, _workspace_per_item(c, k, plan, x.itemsize)):
        m = x[sl].shape[0]
        cols = d.gather_outputs(np.ascontiguousarray(x[sl]), plan, pads,
                                workspace((m, c, plan.n_taps, count), x.dtype))  # (n, C, T, P)
        # One GEMM per image, written straight into the output: no dropped columns, no transpose.
        blas.matmul(wmat, cols.reshape(m, groups, c_g * plan.n_taps, count), y[sl].reshape(m, groups, k_g, count))
    return y


def conv_grad_input(gy: np.ndarray, w: np.ndarray, groups: int, plan: WindowPlan, in_shape, pads) -> np.ndarray:
    """Gradient w.r.t. ``x`` of :func:`conv_forward`: ``gy (N, K, *out)`` to ``in_shape (N, C, *S)``."""
    n, k = gy.shape[:2]
    c = in_shape[1]
    c_g, k_g = c // groups, k // groups
    if n == 0 or k == 0 or math.prod(in_shape) == 0:  # nothing to sum, or nothing to sum into
        return np.zeros(in_shape, dtype=gy.dtype)
    how = strategy(c_g, k_g, plan, "grad_input", n)
    if how == "flipped" and _all_finite(w):  # the padded zeros meet every weight
        return _grad_input_flipped(gy, w, groups, plan, in_shape, pads)
    if how == "flipped":
        how = strategy(c_g, k_g, plan, "grad_input", n, flip=False)
    if how == "planes" and _all_finite(w):  # the gradient's zero lanes meet every weight
        return _plane_kernels().grad_input(gy, w, plan, pads, in_shape, _parallel_kernels(n, k, c_g, plan))
    if how == "planes":
        how = "direct"
    if how in ("direct", "lanes"):
        d = _direct()
        gx = np.empty(in_shape, dtype=gy.dtype)
        whole = _all_finite(w)
        complete = d.fill_arrays(plan, tuple(in_shape[2:]), tuple(pads))[-1]
        d.kernel(_kernel_name("grad_input", how), _work(n, k, c_g, plan))(
            _planes(gy), np.ascontiguousarray(w.reshape(k, c_g, plan.n_taps)),
            *_direct_args(d, plan, in_shape, pads, whole, how), groups, complete, gx.reshape(n, c, -1))
        return gx
    flipped = _flipped_pads(plan, pads, in_shape[2:]) if how == "winograd" else None
    if flipped is not None and _all_finite(w) and _all_finite(gy):
        gx = np.empty(in_shape, dtype=gy.dtype)
        _winograd_forward(gy, _flipped_weights(w, groups), groups, flipped, gx)
        return gx
    if how == "winograd":  # padding wider than the kernel, or inf/NaN in the data: the exact path
        how = "cols"
    if how == "implicit" and not _dense(plan, pads) and _all_finite(w):  # 0 * w at the dropped positions
        im = _implicit()
        gx = np.empty(in_shape, dtype=gy.dtype)
        for sl in _chunks(n, k * im.lattice_stride(plan, gy.dtype) * gy.itemsize):
            im.grad_input(gy[sl], w, groups, plan, in_shape, pads, gx[sl], _scratch(gy.dtype))
        return gx
    if how == "implicit":
        how = "cols"
    if how == "cols" and _dense(plan, pads):
        gyg = _planes(gy).reshape(n, groups, k_g).swapaxes(0, 1)  # (g, n, K_g)
        wmat = w.reshape(groups, k_g, c_g * plan.n_taps)
        gx = blas.matmul(gyg, wmat, np.empty((groups, n, c_g * plan.n_taps), dtype=gy.dtype))  # (g, n, C_g*T)
        return np.ascontiguousarray(gx.swapaxes(0, 1)).reshape(in_shape)
    if how == "taps" and _pointwise(plan, pads):
        gx = np.empty(in_shape, dtype=gy.dtype)
        wmat_t = w.reshape(groups, k_g, c_g).transpose(0, 2, 1)  # (g, C_g, K_g)
        if _pointwise_tile(k_g, c_g):  # the forward of w^T per group
            w_t = np.ascontiguousarray(wmat_t).reshape(c, k_g)
            return _implicit().forward_pointwise(gy, w_t, groups, gx, _parallel_kernels(n, c, k_g, plan))
        blas.matmul(wmat_t, _planes(gy).reshape(n, groups, k_g, -1), gx.reshape(n, groups, c_g, -1))
        return gx
    if how == "cols" and math.prod(plan.out) >= PER_IMAGE_GEMM_MIN_OUTPUTS:
        return _grad_input_cols_per_image(gy, w, groups, plan, in_shape, pads)
    if how == "cols":
        return _grad_input_cols(gy, w, groups, plan, in_shape, pads)
    return _crop(_grad_input_taps(gy, w, groups, plan, c), pads, in_shape)


def _flipped_pads(plan: WindowPlan, pads, size):
    """The zero padding under which the input gradient of a stride-1 layer is one forward convolution of
    ``gy`` as it lies (the one phase of :func:`_phases_of`), for forced Winograd; None with a stride, or
    where the correlation would slice ``gy`` (padding beyond the kernel's reach)."""
    if not plan.unit_stride:
        return None
    phase = [axis[0] for axis in _phases_of(plan, pads, size)]
    if any(p.start > 0 or p.end < o for p, o in zip(phase, plan.out)):
        return None
    return tuple((-p.start, p.end - o) for p, o in zip(phase, plan.out))


class _Phase(NamedTuple):
    """One stride phase of one axis of :func:`_grad_input_flipped`: input positions ``m * s + phi - lo`` for
    ``m0 <= m < m0 + count``, fed by ``taps`` (a ``step`` apart in ``gy``) from ``gy[start:end]``."""

    phi: int
    taps: list
    m0: int
    count: int
    start: int
    end: int
    step: int


def _phases_of(plan: WindowPlan, pads, size) -> list[list[_Phase]]:
    """Per axis, its stride phases (see :func:`_grad_input_flipped`)."""
    axes = []
    for s, d, k, (lo, _), n in zip(plan.stride, plan.dilation, plan.kernel, pads, size):
        phases = []
        for phi in range(s):
            taps = [t for t in range(k) if (t * d) % s == phi]  # t * d = u * s + phi
            m0 = -((phi - lo) // s)
            count = max(0, (n - 1 + lo - phi) // s - m0 + 1)
            step = d // math.gcd(s, d)  # u of consecutive taps of the phase
            u0 = (taps[0] * d - phi) // s if taps else 0
            phases.append(_Phase(phi, taps, m0, count, m0 - u0 - (len(taps) - 1) * step, m0 + count - u0, step))
        axes.append(phases)
    return axes


def _grad_input_flipped(gy, w, groups, plan, in_shape, pads):
    """Input gradient as forward convolutions of ``gy``, one per stride phase of the input.

    Input position ``i = m * s + phi - lo`` receives ``gy[o] * w[t]`` from
    the taps with ``t * d = u * s + phi``, at ``o = m - u``. So on each
    phase ``phi`` the gradient is the cross-correlation of ``gy`` with the
    phase's taps (``u`` a stride ``d / gcd(s, d)`` apart), flipped and with
    their channel axes swapped per group (:func:`_flipped_weights`); ``gy``
    is zero-padded where the correlation reads past it and sliced where it
    would read entries that no position of the phase receives. Stride 1 has
    one phase (the "full" correlation); stride ``s`` has ``s ** rank``, each
    a stride-1 problem on the planner's own forward strategy (for a
    transposed convolution's forward: its sub-kernels). Phases that no tap
    reaches keep a zero gradient.
    """
    n, c = in_shape[:2]
    live, whole, single = _flipped_layout(plan, tuple(map(tuple, pads)), tuple(in_shape[2:]))
    if single:
        gx = positions = None
    else:
        gx = (np.empty if whole else np.zeros)(in_shape, dtype=gy.dtype)
        positions = np.arange(math.prod(in_shape[2:]), dtype=np.int64).reshape(in_shape[2:])
    for phase, read, fplan, fpads, dest in live:
        whole_kernel = all(len(p.taps) == k for p, k in zip(phase, plan.kernel))  # stride 1: no copy of w
        sub = w if whole_kernel else w[(slice(None), slice(None), *np.ix_(*(p.taps for p in phase)))]
        part = conv_forward(gy[(slice(None), slice(None), *read)], _flipped_weights(sub, groups), groups, fplan,
                            fpads)
        if gx is None:  # stride 1: the one phase is the whole gradient
            return part
        _direct().place(part.reshape(n * c, -1), np.ascontiguousarray(positions[dest]).reshape(-1),
                        gx.reshape(n * c, -1))
    return np.zeros(in_shape, dtype=gy.dtype) if gx is None else gx


@lru_cache(maxsize=256)
def _flipped_layout(plan: WindowPlan, pads, size):
    """``(live, whole, single)`` of :func:`_grad_input_flipped` for one geometry, cached (a layer's input
    gradient repeats it every step; after the pass's memory-bound kernel the Python that worked it out ran from
    cold caches, 30-35 us of ResNeXt's 2 ms): per live phase ``(phase, read, fplan, fpads, dest)``, the slices of
    ``gy`` it reads, its forward problem, and the slices of the input it fills; whether the live phases cover
    every input position; whether there is a single phase. Slices only, no arrays: the entries stay small."""
    phases = _phases_of(plan, pads, size)
    live, whole = [], True
    for phase in itertools.product(*phases):
        read = tuple(slice(max(p.start, 0), min(p.end, o)) for p, o in zip(phase, plan.out))
        if all(p.taps and p.count for p in phase) and all(r.stop > r.start for r in read):
            fpads = tuple((max(-p.start, 0), max(p.end - o, 0)) for p, o in zip(phase, plan.out))
            fplan = make_plan(tuple(p.end - p.start for p in phase), tuple(len(p.taps) for p in phase),
                              (1,) * len(phase), tuple(p.step for p in phase), tuple(p.count for p in phase))
            dest = tuple(slice(p.m0 * s + p.phi - lo, None, s) for p, s, (lo, _) in zip(phase, plan.stride, pads))
            live.append((phase, read, fplan, fpads, dest))
        elif all(p.count for p in phase):  # no tap reaches these positions, or only padding does: zeros
            whole = False
    return tuple(live), whole, math.prod(map(len, phases)) == 1


def _flipped_weights(w: np.ndarray, groups: int) -> np.ndarray:
    """``(C, K_g, *k)``: per group, ``w (K, C_g, *k)`` flipped along every spatial axis, channel axes swapped."""
    k, c_g, *kernel = w.shape
    flip = (slice(None),) * 3 + (slice(None, None, -1),) * len(kernel)
    wg = w.reshape(groups, k // groups, c_g, *kernel)[flip]
    return np.ascontiguousarray(wg.swapaxes(1, 2)).reshape(groups * c_g, k // groups, *kernel)


def _grad_input_cols(gy, w, groups, plan, in_shape, pads):
    """Input gradient by the patch matrix: ``W^T @ gy`` per chunk, then the compiled scatter (col2im) straight
    into the unpadded gradient."""
    n, k = gy.shape[:2]
    c = in_shape[1]
    c_g, k_g = c // groups, k // groups
    # Where w holds inf or NaN, 0 * inf in the dropped columns must not leak into real positions.
    mask = None if _all_finite(w) else lattice_mask(plan)
    gx = np.empty(in_shape, dtype=gy.dtype)
    wmat_t = w.reshape(groups, k_g, c_g * plan.n_taps).transpose(0, 2, 1)  # (g, C_g*T, K_g)
    d = _direct()
    for sl in _chunks(n, _workspace_per_item(c, k, plan, gy.itemsize)):
        m = gy[sl].shape[0]
        gcols = blas.matmul(wmat_t, _embed(gy[sl], plan, groups),
                            workspace((groups, c_g * plan.n_taps, m * plan.length), gy.dtype))  # (g, C_g*T, n*L)
        gcols = gcols.reshape(c, plan.n_taps, m, plan.length)  # (C, T, n, L)
        if mask is not None:
            gcols = np.where(mask, gcols, 0)
        d.scatter(gcols, plan, in_shape, pads, gx[sl])
    return gx


def _grad_input_taps(gy, w, groups, plan, c):
    """Gradient w.r.t. the padded input ``(N, C, *plan.full)`` by per-tap GEMMs."""
    n, k = gy.shape[:2]
    c_g, k_g = c // groups, k // groups
    # Where w holds inf or NaN, 0 * inf in the dropped columns must not leak into real positions.
    mask = None if _all_finite(w) else lattice_mask(plan)
    gxp = np.empty((n, c, *plan.full), dtype=gy.dtype)
    wtaps = np.moveaxis(w.reshape(groups, k_g, c_g, plan.n_taps), -1, 0).transpose(0, 1, 3, 2)  # (T, g, C_g, K_g)
    L = plan.length
    for sl in _chunks(n, _taps_per_item(c, k, plan, gy.itemsize)):
        m = gy[sl].shape[0]
        gflat = lattice_embed(gy[sl], plan).reshape(m, groups, k_g, L)  # (n, g, K_g, L)
        gph = np.zeros((m, groups, c_g, plan.phases, plan.q_size), dtype=gy.dtype)
        if plan.n_taps == 1 and mask is None:  # 1x1: the product is the gradient, written in place
            (r, off), = plan.taps
            blas.matmul(wtaps[0], gflat, gph[:, :, :, r, off:off + L])
        else:
            tmp = np.empty((m, groups, c_g, L), dtype=gy.dtype)
            for t, (r, off) in enumerate(plan.taps):
                blas.matmul(wtaps[t], gflat, tmp)  # (n, g, C_g, L)
                gph[:, :, :, r, off:off + L] += tmp if mask is None else np.where(mask, tmp, 0)
        gxp[sl] = merge_phases(gph.reshape(m * c, plan.phases, plan.q_size), plan).reshape(m, c, *plan.full)
    return gxp


def conv_grad_weight(gy: np.ndarray, x: np.ndarray, groups: int, plan: WindowPlan, kernel_shape, pads) -> np.ndarray:
    """Gradient w.r.t. the weight of :func:`conv_forward`: ``(K, C/g, *k)`` from ``gy (N, K, *out)`` and ``x``."""
    n, c = x.shape[:2]
    k = gy.shape[1]
    c_g, k_g = c // groups, k // groups
    if n == 0 or k == 0:  # the sum over no images, or no weights
        return np.zeros((k, c_g, *kernel_shape), dtype=x.dtype)
    if x.size == 0:  # no input elements (an empty axis, padded): every term is a padding zero times gy
        return np.broadcast_to(_times_zero(gy, 1).reshape(k, 1, *(1,) * len(kernel_shape)),
                               (k, c_g, *kernel_shape)).copy()
    how = strategy(c_g, k_g, plan, "grad_weight", n)
    if how == "planes":
        gw = _plane_kernels().grad_weight(gy, x, groups, plan, pads, _parallel_kernels(n, k, c_g, plan))
        return gw.reshape(k, c_g, *kernel_shape)
    if how in ("direct", "lanes"):
        d = _direct()
        # Each image's (or block of LANES images') share, summed after: no two jobs write one entry.
        parts = np.zeros((n if how == "direct" else -(-n // d.LANES), k, c_g, plan.n_taps), dtype=x.dtype)
        whole = _no_dropped(plan) or _all_finite(x)
        d.kernel(_kernel_name("grad_weight", how), _work(n, k, c_g, plan))(
            _planes(gy), _planes(x), *_direct_args(d, plan, x.shape, pads, whole, how), groups, parts)
        return parts.sum(axis=0).reshape(k, c_g, *kernel_shape)
    if how == "winograd" and _all_finite(gy) and _all_finite(x):
        return _winograd_grad_weight(gy, x, groups, pads)
    if how == "winograd":  # inf and NaN would spread over whole tiles: take the exact path
        how = "cols"
    if how == "implicit" and not _dense(plan, pads):  # its steps skip the dropped positions: inf and NaN as they are
        im = _implicit()
        gw = None  # the first chunk's sums as they come (a whole batch's, mostly), the others added to them
        for sl in _chunks(n, im.grad_weight_bytes(c, k, groups, plan, x.shape, pads, x.dtype)):
            part = im.grad_weight(gy[sl], x[sl], groups, plan, pads, _scratch(x.dtype))
            gw = part if gw is None else np.add(gw, part, out=gw)
        return gw.reshape(k, c_g, *kernel_shape)
    if how == "implicit":
        how = "cols"
    if how == "cols" and _dense(plan, pads):  # gy^T @ x per group, the batch as the inner dimension
        gyg = _planes(gy).reshape(n, groups, k_g).transpose(1, 2, 0)  # (g, K_g, n)
        xg = _planes(x).reshape(n, groups, c_g * plan.n_taps).swapaxes(0, 1)  # (g, n, C_g*T)
        gw = blas.matmul(gyg, xg, np.empty((groups, k_g, c_g * plan.n_taps), dtype=x.dtype))
        return gw.reshape(k, c_g, *kernel_shape)
    if how == "taps" and _pointwise(plan, pads) and _dot_pointwise(c_g, k_g):
        # Dot products along the positions (see _dot_pointwise), x and gy read as they lie (Zen 4, one process,
        # ms: ResNet's 1x1 256->64 5.3-5.6 vs 6.0-6.5 for OpenBLAS's per-image products, MobileNet's 144->24
        # 1.0-1.9 vs 1.8-2.8)
        gw = _implicit().grad_weight_rows(gy, x, groups, plan, pads, _scratch(x.dtype))
        return gw.reshape(k, c_g, *kernel_shape)
    if how == "taps" and _pointwise(plan, pads):  # sum over images of gy[b] @ x[b]^T
        gyb, xb = _planes(gy).reshape(n, groups, k_g, -1), _planes(x).reshape(n, groups, c_g, -1)
        if c_g > k_g:  # x[b] @ gy[b]^T, transposed after: OpenBLAS runs these faster with more rows than columns
            # (Zen 4, one process, ms: ResNet's 1x1 256->64 5.5-5.7 vs 6.2-6.6, MobileNet's 144->24 1.7-1.8 vs 2.0)
            per_image = blas.matmul(xb, gyb.swapaxes(-1, -2), np.empty((n, groups, c_g, k_g), dtype=x.dtype))
            return per_image.sum(axis=0).swapaxes(-1, -2).reshape(k, c_g, *kernel_shape)
        per_image = blas.matmul(gyb, xb.swapaxes(-1, -2), np.empty((n, groups, k_g, c_g), dtype=x.dtype))
        return per_image.sum(axis=0).reshape(k, c_g, *kernel_shape)
    count = math.prod(plan.out)
    if how == "cols" and count >= PER_IMAGE_GEMM_MIN_OUTPUTS:
        return _grad_weight_cols_per_image(gy, x, groups, plan, kernel_shape, pads)
    # Where x holds inf or NaN, 0 * inf in the dropped columns must not leak into the sums.
    mask = None if _all_finite(x) else lattice_mask(plan)
    if how == "taps":
        xp = _zero_pad(x, pads)
        gw = np.zeros((plan.n_taps, groups, k_g, c_g), dtype=xp.dtype)
        for sl in _chunks(n, _taps_per_item(c, k, plan, xp.itemsize)):
            m = xp[sl].shape[0]
            gflat = lattice_embed(gy[sl], plan).reshape(m, groups, k_g, plan.length)  # (n, g, K_g, L)
            for t, view in _tap_views(_phases(xp[sl], plan), m, groups, plan):  # view (n, g, C_g, L)
                v = view if mask is None else np.where(mask, view, 0)
                gw[t] += blas.matmul(gflat, v.transpose(0, 1, 3, 2),
                                     np.empty((m, groups, k_g, c_g), dtype=xp.dtype)).sum(axis=0)  # (g, K_g, C_g)
        return np.moveaxis(gw, 0, -1).reshape(k, c_g, *kernel_shape)  # (K, C_g, *k)
    gw = np.zeros((groups, k_g, c_g * plan.n_taps), dtype=x.dtype)
    for sl in _chunks(n, _workspace_per_item(c, k, plan, x.itemsize)):
        m = x[sl].shape[0]
        cols = _cols(x[sl], plan, groups, pads)  # (g, C_g*T, n*L)
        if mask is not None:
            cols = np.where(np.tile(mask, m), cols, 0)
        gw += blas.matmul(_embed(gy[sl], plan, groups), cols.transpose(0, 2, 1), np.empty_like(gw))  # (g, K_g, C_g*T)
    return gw.reshape(k, c_g, *kernel_shape)


def _grad_weight_cols_per_image(gy, x, groups, plan, kernel_shape, pads):
    """Weight gradient by the patch matrix of the real outputs only (large images): ``sum_b gy[b] @ cols[b]^T``
    per group, ``gy`` used as it is. No dropped columns: nothing to embed, nothing to mask."""
    n, c = x.shape[:2]
    k = gy.shape[1]
    c_g, k_g = c // groups, k // groups
    count = math.prod(plan.out)
    d = _direct()
    gyp = _planes(gy)
    gw = np.zeros((groups, k_g, c_g * plan.n_taps), dtype=x.dtype)
    for sl in _chunks(n, _workspace_per_item(c, k, plan, x.itemsize)):
        m = x[sl].shape[0]
        cols = d.gather_outputs(np.ascontiguousarray(x[sl]), plan, pads,
                                workspace((m, c, plan.n_taps, count), x.dtype))  # (n, C, T, P)
        parts = blas.matmul(gyp[sl].reshape(m, groups, k_g, count),
                            cols.reshape(m, groups, c_g * plan.n_taps, count).swapaxes(-1, -2),
                            np.empty((m, groups, k_g, c_g * plan.n_taps), dtype=x.dtype))  # (n, g, K_g, C_g*T)
        gw += parts.sum(axis=0)
    return gw.reshape(k, c_g, *kernel_shape)


def _grad_input_cols_per_image(gy, w, groups, plan, in_shape, pads):
    """Input gradient by the patch matrix of the real outputs only (large images): ``W^T @ gy[b]`` per image
    and group, ``gy`` used as it is, then the compiled scatter of those patches into the unpadded gradient."""
    n, k = gy.shape[:2]
    c = in_shape[1]
    c_g, k_g = c // groups, k // groups
    count = math.prod(plan.out)
    d = _direct()
    gyp = _planes(gy)
    gx = np.empty(in_shape, dtype=gy.dtype)
    wmat_t = w.reshape(groups, k_g, c_g * plan.n_taps).transpose(0, 2, 1)  # (g, C_g*T, K_g)
    for sl in _chunks(n, _workspace_per_item(c, k, plan, gy.itemsize)):
        m = gy[sl].shape[0]
        gcols = blas.matmul(wmat_t, gyp[sl].reshape(m, groups, k_g, count),
                            workspace((m, groups, c_g * plan.n_taps, count), gy.dtype))  # (n, g, C_g*T, P)
        d.scatter_outputs(gcols.reshape(m, c, plan.n_taps, count), plan, in_shape, pads, gx[sl])
    return gx


def table_conv_forward(xp: np.ndarray, weight: np.ndarray, outputs, by_input, plan: WindowPlan) -> np.ndarray:
    """Convolution with a connection table (see :class:`convlayer.layers.ConnectionTableConv`).

    ``weight`` is ``(connections, T)``; ``by_input[i] = (rows, outs)`` lists
    the weight rows and output maps of the connections leaving input map
    ``i``. One GEMM per input map, ``(deg_i, T) @ (T, n*L)``: only listed
    connections cost arithmetic.
    """
    n, c = xp.shape[:2]
    y = np.empty((n, outputs, *plan.out), dtype=xp.dtype)
    for sl in _chunks(n, _workspace_per_item(c, outputs, plan, xp.itemsize)):
        m = xp[sl].shape[0]
        cols = _cols(xp[sl], plan, c, ((0, 0),) * len(plan.full))  # (C, T, n*L)
        acc = np.zeros((outputs, m * plan.length), dtype=xp.dtype)
        for i, (rows, outs) in enumerate(by_input):
            # outs are distinct: a map lists an input once
            acc[outs] += blas.matmul(weight[rows], cols[i], np.empty((len(rows), cols.shape[2]), dtype=xp.dtype))
        y[sl] = np.swapaxes(lattice_view(acc.reshape(outputs, m, plan.length), plan), 0, 1)
    return y


def table_conv_backward(gy: np.ndarray, xp: np.ndarray, weight: np.ndarray, by_input, plan: WindowPlan):
    """Gradients ``(grad of padded input, grad of weight (connections, T))`` of :func:`table_conv_forward`."""
    n, c = xp.shape[:2]
    outputs = gy.shape[1]
    gxp = np.empty((n, c, *plan.full), dtype=xp.dtype)
    gw = np.zeros_like(weight)
    for sl in _chunks(n, _workspace_per_item(c, outputs, plan, xp.itemsize)):
        m = xp[sl].shape[0]
        cols = _cols(xp[sl], plan, c, ((0, 0),) * len(plan.full))  # (C, T, n*L)
        gflat = _embed(gy[sl], plan, 1)[0]  # (K, n*L)
        gcols = np.empty_like(cols)
        for i, (rows, outs) in enumerate(by_input):
            g_out = gflat[outs]  # (deg_i, n*L)
            gw[rows] += blas.matmul(g_out, cols[i].T, np.empty((len(rows), cols.shape[1]), dtype=xp.dtype))
            blas.matmul(weight[rows].T, g_out, gcols[i])  # (T, n*L)
        _direct().scatter(gcols.reshape(c, plan.n_taps, m, plan.length), plan, (m, c, *plan.full),
                          ((0, 0),) * len(plan.full), gxp[sl])
    return gxp, gw
