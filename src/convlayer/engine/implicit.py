"""Implicit GEMM: convolution products read straight from the padded planes, no patch matrix.

The patch-matrix strategy (``"cols"`` in :mod:`.gemm`) copies every input
element ``taps`` times into memory and hands the copy to BLAS; on the
suite's layers that copy, and BLAS's own packing of it, cost as much as
the arithmetic, and OpenBLAS runs products with 16-64 rows at half its
square-matrix speed. Here the products are formed by one small compiled
kernel instead, which reads its operands where they lie:

1. **Planes.** Each input plane is padded and phase-split once, in cache,
   into a buffer of the layout of :mod:`.windows` (``_fill`` of
   :mod:`.direct`; the padded input is never written out whole). Kernel
   tap ``t`` of channel ``c`` then reads the contiguous run
   ``plane_c[bases[t] + p]`` over the lattice positions ``p`` of the
   output. Row ``r = c * T + t`` of the patch matrix is that run: it is
   never copied, only addressed (``row_offsets``). On small planes, where
   the tiles would overhang an image's few positions, the forward
   and the input gradient interleave the images' positions instead, so
   that one lattice spans the batch (:func:`interleaves`); with AVX-512,
   the forward of layers with one vector of output channels per group
   puts the channels along the vectors there instead
   (:func:`forward_channels`), and so does the forward of layers with
   multiples of four vectors of them wherever the lattice and the tiles'
   overhang would add many positions to the outputs
   (:func:`channels_wide`), on a wider tile that steps over the outputs
   only.
2. **Microkernel.** :func:`make_microkernel` emits, as LLVM IR with
   explicit vector types, the register tile of a GEMM: ``mr`` rows times
   ``nv`` vectors of columns, accumulated over ``kc`` steps with fused
   multiply-adds, each step one broadcast per row and one load per
   vector. The rows of both operands and of the result are given by
   offset tables, so one generator serves the three passes, each with
   the tile that suits it:

   * forward ``y[k, p] += W[k, r] * plane[r][p]``: packed weights
     broadcast, plane runs loaded as vectors over positions ``p``
     (``FORWARD_MR x FORWARD_NV``, with AVX-512 prefetching the runs of
     later steps);
   * input gradient ``plane_grad[r][p] += W[k, r] * gy[k, p]``: the
     transposed weights broadcast, ``gy`` loaded, and the tile added
     straight into the gradient's padded planes (col2im without the
     matrix; ``MR x NV``). :mod:`.gemm` runs most stride-1 input
     gradients as forwards of the flipped problem instead;
   * weight gradient ``gW[r, k] += plane[r][p] * gy[p, k]``: plane
     elements broadcast, ``gy`` laid out block by block with its channels
     along the vectors, the output positions ``p`` as the steps, read from
     the lattice through a table (``MR x NV``, or
     ``WIDE_MR x WIDE_NV`` where the outputs per group fill it); jobs by
     image, each thread summing into its own copy of the result, or, where
     that copy would not fit in cache, by patch rows over the whole batch
     (:data:`CHUNKS_MIN_BYTES`). For 1-D
     layers, and 1x1 layers with AVX-512, where both operands run along
     the positions, :func:`make_dot_microkernel`'s tile of dot products
     instead (``DOT_MR x DOT_NR``), with no transposed copy.

   Vector width comes from the CPU (512-bit registers with AVX-512, else
   256, with tiles of their own): the accumulators fill most of the
   register file, and with their data in cache the tiles ran at 174-256
   GFLOP/s on two AVX-512 cores, about that machine's GEMM peak, and at
   128-148 on two Zen 3 cores with AVX2, about that one's
   (``python -m benchmarks.microkernel --steps 128``; runs vary by up to
   1.4x).

Dropped lattice columns (the few positions per row that wrap around) are
computed and thrown away by the forward; the input gradient sees zeros
there, so ``0 * w`` must be zero: :mod:`.gemm` uses this strategy for it
only when the weights are finite. The weight gradient's steps are the
output positions only (a table of where each lies in the lattice), so
it multiplies nothing that is not in the sum, whatever the input holds.
Kernels assume valid, contiguous, same-dtype input and never check
arguments.
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np
from llvmlite import binding as _llvm
from llvmlite import ir
from numba import njit, prange, types
from numba.core import cgutils
from numba.extending import intrinsic

from . import blas
from .direct import (_FLAGS, COPY_PARALLEL_MIN, KERNEL_PARALLEL_MIN_WORK, SPLIT2, _fill, _take, _unfill,
                     dynamic_threads, fill_arrays, run_arrays)
from .windows import make_plan


# Register width for the microkernel: 64 bytes (zmm) where the CPU has AVX-512, else 32 (ymm).
VECTOR_BYTES = 64 if _llvm.get_host_cpu_features().get("avx512f", False) else 32
# Whether 512-bit vectors run on 512-bit units: AVX-512 on Intel's cores, not on AMD's Zen 4 (LLVM's
# ``znver4``), which splits each 512-bit operation over its 256-bit units. :mod:`.gemm`'s AVX-512 rules
# that were measured on an Intel Xeon apply only where this holds; on Zen 4 the Zen 3 (AVX2) ones won.
FULL_WIDTH_512 = VECTOR_BYTES == 64 and _llvm.get_host_cpu_name() != "znver4"
# The gradients' tile, rows by vectors per row: 8 x 2 zmm accumulators (16 of 32 registers); 12 x 2
# ran 5% faster in cache (a one-off script) but wastes a third of a block on 16- and 32-row products.
# With 16 ymm registers (AVX2), 6 x 2 (12 accumulators, BLIS's Haswell shape): 128 GFLOP/s in cache on
# 2 Zen 3 cores against 91 for 4 x 2 (``python -m benchmarks.microkernel --tile 4x2 --tile 6x2``, noisy:
# 90-128 against 91-117 over three runs); in the suite's gradients (one process per tile, alternating, three
# rounds) DeepBench C128 weight gradient 35-45 vs 43-66 ms, 3-D 3x3x3 input gradient 27-31 vs 36-41.
MR = 8 if VECTOR_BYTES == 64 else 6
NV = 2
# The forward's tile is wider, 8 x 3 zmm (24 registers): one broadcast weight serves three vectors of
# positions. In the forward kernel alone (on planes filled beforehand), against 8 x 2: ResNet 3x3
# 4.2-5.0 vs 4.8-5.3 ms, DeepBench C128 10.0-10.3 vs 11.2, 3-D 3x3x3 14.2-14.7 vs 15.9, 1-D k=9
# 20.7-22.6 vs 24.9; 6 x 4 was as fast, 12 x 2, 14 x 2 and 10 x 3 slower. With AVX2, 4 x 3 ymm (12
# of 16 registers; as fast as 6 x 2 in cache, 129 vs 128 GFLOP/s, and in the suite's forwards even or
# a little faster: ResNet 3x3 16.8-18.6 vs 18.1-18.8 ms, 3-D 3x3x3 23.6-27.2 vs 27.6-36.9). The
# gradients keep their own tile: the weight gradient's vectors run over output channels, which
# 48-wide vectors would pad by up to half.
FORWARD_MR = 8 if VECTOR_BYTES == 64 else 4
FORWARD_NV = 3
# The weight gradient's wide tile, 6 x 4 zmm (24 registers), one row of 64 output channels in float32,
# where K_g is a multiple of that row (K_g = 64 in the suite): ResNet 3x3 3.8-4.9 vs 4.7-6.2 ms for
# 8 x 2, 3-D 3x3x3 12.5-12.7 vs 13.4-20.0, 1-D k=9 18.7-24.7 vs 30.0-31.4 (the kernel alone); at
# K_g = 96 and 32 its padding makes it slower, at 128 it is even. With AVX2 the gradients' 6 x 2 is
# already the widest that fits.
WIDE_MR, WIDE_NV = (6, 4) if VECTOR_BYTES == 64 else (MR, NV)
# Steps ahead for which the forward's tile prefetches the plane run it will read (8 and 16: 3-10% less time
# than none with AVX-512, in the forward kernel alone on the suite's large layers; 2 too few). With AVX2 none:
# the hints cost more than they save (4 x 3 in cache 110 vs 129 GFLOP/s; in the suite's forwards ResNet
# 3x3 21.6-22.3 vs 16.8-18.6 ms, dilated d2 14.9-15.1 vs 11.6-12.8, the 1-D stem even).
FORWARD_PREFETCH = 8 if VECTOR_BYTES == 64 else 0
# The forward on filled planes tiles the real output positions instead of the lattice's where the output rows
# are whole vectors (:func:`_forward_gapped`): no multiply-adds for the dropped positions between rows (11% of
# the lattice of the dilated d4 layer, 64 positions a row of 72) and no copy out of a local tile. The same
# outputs, bitwise. Zen 4 (AVX-512), one process, best of 5 in each of 4 rounds alternating (ms, the suite's
# layers at larger batches; a one-off script): dilated 3x3 d4, 64 channels at 64 x 64, batch 16, 24.3-25.7 vs
# 27.2-29.1 on the lattice (PyTorch 22.1-22.8); d2 23.6-24.1 vs 25.1-26.0 (PyTorch 23.0-23.9); DeepBench C32 at
# 112 x 112, batch 8, 9.7-10.2 vs 10.5 (PyTorch 9.7-10.3). With AVX2 the rule is the same (rows of whole 8-wide
# vectors: ResNet 3x3's 56 too), not measured on Zen 3.
GAPPED = True
# Forward: lattice positions per job (a multiple of the tile's width in every dtype and register width)
# and steps (patch rows) per microkernel call; on the suite's layers 64-512 positions and 64-512 rows
# were within noise of each other with the 8 x 2 tile.
BLOCK_POSITIONS = 192
BLOCK_ROWS = 256
# The 1x1 tile's jobs (:func:`forward_pointwise`) with fewer inputs than BLOCK_ROWS take more positions each, as
# many as keep the job's block of the input as large (:func:`_pointwise_block`), up to POINTWISE_MAX_BLOCK: with
# AVX-512, where it was measured. Zen 4, one process, best of 9 in each of 10 rounds alternating (ms; a one-off
# script): ResNet 1x1 256->64's input gradient (64 inputs: 768 positions a job) 4.51-5.09 vs 4.85-5.26, faster in
# 9 of 10 rounds; MobileNet 144->24's (24 inputs: 768) 1.02-1.39 vs 1.13-1.95, faster in 7; its forward (144:
# 336) 0.95-1.53 vs 1.02-1.47, within noise. Fixed blocks of 96 to 1536 positions on ResNet's input gradient
# (best of 7, 5 rounds): 96 5.25-5.63, 192 5.03-5.52, 384 4.92-5.25, 768 4.69-4.81, 1536 4.73-6.03; on its forward
# (256 inputs, which keeps 192) 192 and 384 4.85-5.71, 768 5.16-6.22.
POINTWISE_BLOCKS = VECTOR_BYTES == 64
POINTWISE_MAX_BLOCK = 768
# Forward on small planes: where the tiles would cover more than INTERLEAVE_MIN_OVERHANG times the positions
# they cover with the images interleaved (a tile 48 positions wide over DCGAN's 8 x 9 lattice covers 96 of 72;
# over LeNet C3's 10 x 14, 144 for 100 outputs), the images' positions are interleaved, position by position,
# into one lattice for the whole batch, which the tiles cover with at most one partial tile per output row
# (they skip the positions dropped between rows where these are a tile wide, see :func:`_tile_starts`; LeNet
# C3's forward at batch 256, 0.90-1.03 vs 1.05-1.14 ms, one process; see :func:`forward`). The input gradient
# does the same with its own, NV-vector tiles (:func:`grad_input_spread`, :func:`_grad_input_tiles`): DCGAN's
# transposed 256->128 forward, 71 positions under 96, 8.6-8.8 vs 10.1-10.4 ms (one process), where it has 128
# jobs (channels) for the batch. LeNet C3's input gradient has one job for its 6 channels, which ran on one
# thread with the whole batch interleaved (3.1 vs 2.0 ms at batch 256); it interleaves runs of
# INTERLEAVE_IMAGES images instead, each a lattice of its own, and its tiles skip the dropped positions
# between rows: 0.29 vs 0.49 ms at batch 64, 1.13-1.24 vs 1.78-1.80 at 256; DCGAN 256->128's transposed
# forward, whose tiles now skip the 16 positions dropped after every 128 too, 5.67-5.91 vs 6.28-7.13 (one
# process, alternating, a one-off script). Below INTERLEAVE_MIN_OVERHANG the copies in and out of the
# interleaved layout cost more than the tiles save: ResNet 3x3/2's 15 x 14 lattice (240 positions under the
# tiles, 209 interleaved) ran its forward in 5.7 vs 6.1 ms without (one process, Zen 4). With AVX2 the input
# gradient's 16-position tiles cover DCGAN 256->128's 72 lattice positions with 80, against 64 interleaved (1.25
# times, which the bound once excluded): its transposed forward's kernel alone, replayed on its captured operands,
# 13.3 vs 15.9 ms on one thread and 6.9 vs 7.7 on two; the whole pass 7.7, 8.0 vs 8.5, 8.7 ms (fastest and median
# of 8 rounds, one process, faster in all 8; Zen 3). No other pass of the suite lies between 1.2 and 1.25, with
# either vector width (1.125-1.148 the nearest below, 1.35 above).
INTERLEAVE_MIN_OVERHANG = 1.2
# Where the forward would interleave and the output channels per group fill at most CHANNELS_MAX_VECTORS
# vectors, up to a quarter of them padding, with AVX-512, it runs with the channels along the vectors instead
# (:func:`forward_channels`): CHANNELS_MR positions per tile (24 of 32 zmm accumulators), the input broadcast.
# Each further vector of channels broadcasts the input again: DCGAN's 256 channels (16 vectors) took 9.7-13.0
# ms against 7.2-9.2 interleaved. See the other measurements there.
CHANNELS_MR = 24
CHANNELS_MAX_VECTORS = 1
CHANNELS = VECTOR_BYTES == 64
# Where the forward's tiles (positions along the vectors, :data:`BLOCK_POSITIONS` per job) would cover at least
# CHANNELS_WIDE_MIN_COVER times the outputs (the lattice's dropped positions and the tiles' overhang) and K_g fills
# the weight gradient's wide tile (WIDE_NV vectors), with AVX-512, the channels-along-vectors forward runs with
# that tile instead, WIDE_MR output positions by WIDE_NV vectors of channels, which steps over the outputs only:
# CHANNELS_WIDE_POSITIONS positions per job, their tiles taking CHANNELS_WIDE_STEPS steps at a time. One process,
# the two alternating 8 times (one-off scripts; Zen 4, where one variant moved by 5% between runs): ResNet 3x3/2
# (cover 1.22) 5.96 vs 6.71 ms, and 4.91-5.30 vs 5.73-5.89 in two of three earlier runs; the 3-D C64 layer (1.14)
# forward 13.5 vs 14.9, input gradient (its flipped forward, the same shape) 14.4 vs 15.5. Below 1.13 no gain
# that held: the dilated d4 layer (1.125) 6.55 vs 6.94 forward but 7.26 vs 6.90 input gradient (the same
# problem), DeepBench C128 (1.10) forward 19.1 vs 20.4 but input gradient 20.8 vs 19.8, DCGAN 128->64's input
# gradient (a forward on 16 x 16 outputs, 1.125) mostly slower (7.3-10.1 ms against 7.2-7.7), ResNet 3x3 (1.04)
# 9.49 vs 9.30. Before the steps-table tile was kept from unrolling (:func:`_no_unroll`) the channels-along-vectors
# forward lost on these layers (12 x 2: 15.4 vs 6.1 ms). Jobs of 24 positions ran slower on ResNet 3x3/2,
# 96-192 positions and chunks of 128-512 steps within noise of 48 and 256.
CHANNELS_WIDE_MIN_COVER = 1.13
CHANNELS_WIDE_POSITIONS = 48
CHANNELS_WIDE_STEPS = 256
# The 1x1 products (forwards, and input gradients as forwards of the transposed weights) that run on the
# forward's tile from their operand as it lies (:func:`forward_pointwise`; :func:`.gemm._pointwise_tile`): those
# with at most POINTWISE_MAX_INNER inputs (the product's inner dimension), and, with AVX-512
# (POINTWISE_FEWER_OUTPUTS), those with at most as many outputs as inputs (see .gemm's comment on
# _pointwise_tile for the Zen 4 measurements). With AVX2, only the first: Zen 3, the suite's batch of 8, one
# process, best of 5 in each of 5-7 rounds alternating, OpenBLAS's per-image products against the tile (ms,
# fastest and median round; one-off script): with 16-48 inputs the tile won 4-5 of 5 or 7 rounds in ten of the
# twelve passes measured, 3 of 5 in 48->48's forward and 128->32's input gradient, its median lower but in one
# (MobileNet's 144->24 input gradient 2.87, 3.34 / 1.86, 3.13; 24->144 forward 2.76, 3.85 / 2.05, 2.69; at
# 28 x 28, 32->192 1.46, 1.98 / 0.94, 1.07 and 48->288 2.79, 3.17 / 1.94, 2.32, and the input gradients of
# their reverses 1.79, 2.26 / 0.83, 1.14 and 2.55, 2.77 / 2.26, 2.83; 48->48 at 56 x 56 2.15, 2.50 / 2.12,
# 2.26 and 1.97, 3.35 / 1.78, 1.99); with 64 or more, at 56 x 56 it lost or ran even, also where the outputs
# are fewer (ResNet's 256->64 forward 7.61, 8.09 / 9.32, 9.84, input gradient 8.17, 8.90 / 8.44, 9.12;
# 144->24 forward 2.36, 3.00 / 2.90, 3.19, 128->32 3.09, 3.99 / 4.13, 4.43; 16->96 at 112 x 112, input
# gradient 6.16, 6.40 / 7.47, 9.61); 64->384 and 384->64 at 14 x 14 ran even; at 28 x 28 it won with 192
# (192->32's forward 1.73, 2.06 / 1.11, 1.16) but lost with 288 (48->288's input gradient 2.20, 2.80 / 3.36, 3.42).
POINTWISE_FEWER_OUTPUTS = VECTOR_BYTES == 64
POINTWISE_MAX_INNER = 64 if VECTOR_BYTES == 64 else 48
# The forward of 1-D stride-1 layers reads the input where it lies (:func:`_windowed`): each job copies its
# block's window of the input into a buffer of its own (:func:`_window`), zero-padded, and its tiles read the
# patch rows there. With WINDOWS_IN_PLACE, a job whose window lies inside the input reads it there instead, only
# the first and last blocks copying: so measured on Zen 4 with AVX-512 (commit a3d6ef9, together with the tiles
# stored in the output itself: WaveNet's forward 5.68 against 6.42 ms). On Zen 3 with AVX2 the copy won: the
# suite's passes, best of 5 in each of 3 rounds per process, 3 processes each alternating (ms, lowest and highest
# process's fastest round), in place / copied: WaveNet's forward 8.57-8.86 / 7.21-7.47, its input gradient (a
# flipped forward) 8.76-9.37 / 7.28-7.46, the 1-D k=9 forward 34.47-41.97 / 32.30-32.68 (in two processes) and input
# gradient 34.73-36.17 / 33.40-34.72. The copied window's patch rows lie 224 elements apart, the input's a plane
# apart (64 KB for WaveNet's 16000 positions); why that costs so much is not established: the same copy for the
# 2-D forwards (each job's window of the filled planes) ran even on the suite's 2-D layers (0-4 of 5 rounds),
# and so did the filled planes padded to an odd number of cache lines (the dilated d4 layer's are 336 lines
# apart). The copies add 1.2 times the input's size.
WINDOWS_IN_PLACE = VECTOR_BYTES == 64
# With 256-bit vectors the forward of the other layers reads windows too (:func:`_forward_windowed`): each job
# copies, per channel and phase, the positions of the padded plane that its block of WINDOW_BLOCK lattice positions
# reads (:func:`_window`, from the segments of :func:`.direct.fill_arrays`), so no filled copy of the whole batch
# goes through memory (DeepBench C32's 13 MB took 1.3 of its forward's 14 ms) and the copies overlap the other
# thread's arithmetic. On Zen 3, one process flipping the setting call by call, 16 calls each, three processes
# (ms, the fastest call of each process, windows / planes): C32's forward 13.77-14.24 / 14.50-15.01 and input
# gradient (a flipped forward) 13.40-13.73 / 14.26-14.68; the dilated d4 layer's 8.32-8.59 / 9.16-9.46 and
# 8.52-9.02 / 9.24-9.82; d2's 8.78-11.32 / 9.08-11.49 and 8.61-8.78 / 8.71-9.35; ResNet 3x3 64->64's forward
# 12.84-14.51 / 12.83-14.79 (even) and input gradient 12.67-16.41 / 13.06-17.09. Blocks of 576 positions beat
# 192, 288 and 384 by 0-3% (C32, d2, d4). The window holds the block and the kernel's reach past it; where that
# is more than WINDOW_MAX_SPREAD times the block, the copies' overlap costs more than the fill (3x3x3 C64, 4.3
# times: 1-3% slower, and 5-10% with blocks of 192); where an image's padded planes take less than
# WINDOWS_MIN_BYTES the fill costs little (LeNet C3's forward, a job per image, 3% slower; DCGAN 128->64's input
# gradient, a forward of stride 2 over 289 KB per image, 8.29-9.33 / 8.23-9.05, the planes faster in 11-15 of 16
# calls). Strided layers read each phase's window from the input, every ``stride``-th column (:func:`_window`),
# where the planes are filled by first splitting each row's columns: ResNet 3x3/2's forward (450 KB per image)
# 7.67-9.72 / 7.73-9.87 with blocks of 120 positions, windows faster in 12-15 of 16 calls in each of eight
# processes; blocks of 216 (one a job, each window 512 KB) were slower, 11.82 / 10.66, so a block is cut to keep its
# window within WINDOW_MAX_BYTES, five eighths of Zen 3's 512 KB L2 (the stride-1 layers' windows above are 106-303
# KB). DeepBench C128 (450 KB) ran even or
# faster, 26.97-32.31 / 27.27-32.14 (11 and 12 of 16), its input gradient 26.31-27.19 / 27.12-27.26; the ResNet
# 7x7/2 stem even (6-11 of 16 in four processes, 1 in a fifth). With AVX-512 the rule is not measured: the planes
# stay. Weight gradients from such windows ran even (C32, ResNet 3x3, d2, d4) or slower (3x3x3 C64): they keep
# the planes.
WINDOWS_ND = VECTOR_BYTES == 32
WINDOW_BLOCK = 576
WINDOW_MAX_SPREAD = 3
WINDOWS_MIN_BYTES = 3 << 17
WINDOW_MAX_BYTES = 320 << 10
_NO_SEGMENTS = (np.zeros(0, np.int64),) * 3  # the segments' arguments of the kernels that read no window
_ONE_PHASE = np.zeros(1, np.int64)  # the phases of a window of a layer of stride 1 (see :func:`_window`)
_NO_WINDOW = (*_NO_SEGMENTS, 1, _ONE_PHASE)  # the window's arguments of a forward that reads none
# The input gradient interleaves the whole batch only where its jobs per lattice leave this many per thread.
INTERLEAVE_MIN_JOBS_PER_THREAD = 8
# Images whose planes the interleaving copies handle together: one 64-byte line of float32 per position.
INTERLEAVE_IMAGES = 16
# Input gradient: lattice positions per pass over the row blocks (32-256 were within noise of each other).
GRAD_INPUT_POSITIONS = 32
# Weight gradient: at most GRAD_WEIGHT_POSITIONS output positions per job, in blocks as even as can be
# (:func:`_even_blocks`; the steps of each microkernel call; the job's block of gy,
# transposed, is 512 x 64 channels, 128 KiB of float32, in L2).
GRAD_WEIGHT_POSITIONS = 512
# The weight gradient's transposes (:func:`_transpose_block`: gy with its channels along the vectors, and the
# chunk jobs' sums into the result) go in blocks of TRANSPOSE_CHANNELS channels by TRANSPOSE_POSITIONS positions:
# each position's channels written as one run, each channel's positions read a cache line at a time, the block in
# L1. Written channel by channel, one entry per position, a position's entries lay kgp apart (1 KiB for 256
# channels: the rows of a block in 4 of the L1's 64 sets); read all of a position's channels at once, rows of gy
# a power of two apart fall in one set (the dilated layers' 4096 positions), which 8 channels, the L1's ways,
# keep within. Zen 3, best of 50 (ms; one-off scripts), the whole batch's gy on two threads (:func:`_transpose_all`,
# alternating processes): ResNet 3x3/2's 8 x 256 x 196 0.15 against 0.54-0.56, DeepBench C128's 16 x 128 x 784
# 0.62-0.63 against 2.08-2.45, DCGAN 256->128's 16 x 256 x 64 0.09-0.11 against 0.34-0.39, 128->64's 16 x 128 x
# 256 0.20-0.21 against 0.53; a job's blocks, one thread, in cache: 0.48-0.52 ns an entry against 1.03-2.02 (64
# channels by 3136 positions, 32 by 12544, 64 by 4096, 128 by 784), and 0.37 against 3.25-3.40 with all of a
# position's channels at once (3136 and 4096 positions).
TRANSPOSE_CHANNELS = 8
TRANSPOSE_POSITIONS = 16
# Where the per-thread sums of the weight gradient (patch rows by output channels, padded) would take more than
# CHUNKS_MIN_BYTES, more than half of Zen 4's 1 MiB L2, the jobs go by CHUNK_ROWS patch rows instead of by images
# (:func:`_grad_weight_chunks`): each job's sums stay in cache over the whole batch, and there are no per-thread
# sums to zero, add up and transpose after. Zen 4, two threads, one process, alternating (best of 5, ms, lowest
# and median of the rounds; one-off scripts): DCGAN 256->128's transposed weight gradient (2 MiB of sums per
# thread) 5.84-7.01 against 6.53-8.00 (30 rounds) and 5.74-6.54 against 6.09-7.54 (15), ResNet 3x3/2's (1.1 MiB)
# 5.98-6.66 against 5.59-7.31 and 4.97-5.61 against 5.23-5.70; 96-1536 rows per job within noise of each other.
# Where the two ran alike: DCGAN 128->64's 512 KiB (by images, at the bound; 6.29-7.36 by rows against 6.35-7.40),
# DeepBench C128's 576 KiB (by rows, above it; 18.9-20.4 against 19.0-20.5), the 3-D C64 layer's 432 KiB.
CHUNKS_MIN_BYTES = 1 << 19
CHUNK_ROWS = 384
# A job's sums, its rows by K_g padded, take at most CHUNK_MAX_BYTES, half of Zen 3's 512 KB L2, and the jobs
# are taken as the threads come free (DYNAMIC_JOBS: each job owns its rows, so the sums do not depend on which
# thread takes it). DCGAN 256->128's transposed weight gradient ran 4 jobs of 512 rows, each summing 512 KB; now
# 8 of 256. One process flipping call by call, 16 calls each, two processes on a busy stretch (ms, fastest call,
# this rule / 384 rows in fixed shares): DCGAN 256->128 11.58-12.18 / 11.44-12.36, faster in 15 and 11 of 16
# calls (9.81-9.90 / 11.02-11.11, 16 and 14 of 16, with the counter and 96-row jobs); ResNet 3x3/2 (6 jobs of 192
# rows, 4 of 288 before) 11.22-11.36 / 11.31-11.41, 7 and 8 of 16; DCGAN 128->64 and DeepBench C128 (jobs
# unchanged) even, 6-8 of 16. Sums of 96 KB (jobs of 96 rows) ran slower on C128 and ResNet 3x3/2 (2 and 3 of 16
# against 256 KB): each job reads the whole batch's gy again.
CHUNK_MAX_BYTES = 256 << 10
# The weight gradient of 1-D layers: dot products along the positions (:func:`make_dot_microkernel`), DOT_MR
# patch rows by DOT_NR output channels, in jobs of at most DOT_POSITIONS positions, which amortize the tile's
# horizontal sums; gy is read where it lies, not transposed block by block. The rows are the input's window with
# stride 1, the filled planes' phases otherwise. With AVX-512, 4 x 6 (24 of 32 registers). Zen 4, one process,
# alternating (one-off scripts): WaveNet's 6.3-7.3 ms against 8.4-12.0 with the transposed blocks, 160 GFLOP/s
# where the tile of :func:`make_microkernel` gets 125; 1-D k=9 even (25-28 vs 25-30 ms); strided 64->64 k=3/2,
# 128->128 k=4/4 and 32->64 k=5/2 over 8000-16000 positions 98-145 GFLOP/s against 71-125. 4 x 6 and 6 x 4 ran
# alike, 4 x 4 and 3 x 8 slower; blocks of 1024-8192 positions within noise of each other on WaveNet, 1024 slower
# on k=9. With AVX2's 16 registers, 4 x 3 (12 accumulators). Zen 3, the suite's weight gradients in one process,
# five rounds alternating, best of 5 (fastest and median round, ms; one-off script), the transposed blocks /
# 4 x 3 / 5 x 2: WaveNet 13.4, 13.6 / 9.7, 9.8 / 10.0, 10.4; 1-D k=9 45.1, 45.4 / 37.2, 38.2 / 40.9, 41.4; the
# 1-D stem 0.82, 1.02 / 0.69, 0.74 / 0.61, 0.75; in three to five rounds 4 x 2 and 3 x 3 were slower than 4 x 3
# on WaveNet and k=9, and 3 x 4, 2 x 6 and 4 x 6 (which spills) slower than the transposed blocks.
DOT_MR, DOT_NR = (4, 6) if VECTOR_BYTES == 64 else (4, 3)
DOT_POSITIONS = 4096
DOT = True
# The weight gradient of 1x1 stride-1 layers by the same dot products (from :mod:`.gemm`): with AVX-512, all of
# them (None); with AVX2, those with at most DOT_POINTWISE_MAX_CHANNELS channels per group on one side (input
# or output). Zen 3's 4 x 3 tile against OpenBLAS's per-image products (as for POINTWISE_MAX_INNER, fastest and
# median round, ms): 16 to 48 on the smaller side won 4-7 of 5-7 rounds (MobileNet's 144->24 2.87, 3.16 /
# 2.07, 2.28; 24->144 2.50, 3.19 / 1.78, 2.33; 16->96 at 112 x 112 6.13, 6.83 / 4.71, 5.29; 128->32 3.40,
# 3.49 / 2.50, 2.59; 48->48 2.71, 2.90 / 1.28, 1.48; 32->192 and 48->288 at 28 x 28 1.29, 2.03 / 0.90, 0.97
# and 3.18, 3.39 / 2.07, 2.43); with 64 it lost (ResNet's 256->64 7.63, 8.10 / 7.74, 8.53, 1-2 of 7 rounds;
# 64->256 7.54, 8.45 / 8.50, 9.19; 64->384 at 14 x 14 1.72, 2.28 / 1.70, 3.16), but for 384->64 at 14 x 14
# (1.39, 1.67 / 1.20, 1.51).
DOT_POINTWISE_MAX_CHANNELS = None if VECTOR_BYTES == 64 else 48


def lanes(dtype) -> int:
    """Elements per vector register for ``dtype``."""
    return VECTOR_BYTES // np.dtype(dtype).itemsize


def _ir_helpers(context, builder, signature):
    """``(data, const, at)`` for a tile's code generation: the data pointer of array argument ``k``, an i64
    constant, a pointer ``offset`` elements past ``ptr``."""

    def data(k, value):
        return context.make_array(signature.args[k])(context, builder, value).data

    def const(v):
        return ir.Constant(ir.IntType(64), v)

    def at(ptr, offset):
        return builder.gep(ptr, [offset])

    return data, const, at


def prefetch_line(builder, ptr):
    """Ask for the cache line at ``ptr`` (``llvm.prefetch``: to read, kept in all cache levels, data); an address
    outside the arrays does no harm."""
    i8p, i32 = ir.IntType(8).as_pointer(), ir.IntType(32)
    hint = cgutils.get_or_insert_function(builder.module, ir.FunctionType(ir.VoidType(), [i8p, i32, i32, i32]),
                                          "llvm.prefetch.p0i8")
    builder.call(hint, [builder.bitcast(ptr, i8p), ir.Constant(i32, 0), ir.Constant(i32, 3), ir.Constant(i32, 1)])


def _no_unroll(builder, latch):
    """Mark the loop whose back edge ends block ``latch`` not to be unrolled (``llvm.loop.unroll.disable``).

    With the steps read from a table, LLVM unrolled the 8 x 2 tile's loop
    twice and hoisted the second step's broadcasts above the first's
    multiply-adds, spilling accumulators to the stack: 54 against 113
    GFLOP/s in cache on one Zen 4 core (a one-off script); not unrolled,
    101-114 against 107-115 with contiguous steps (6 x 4: 110-117 against
    111-117)."""
    module = builder.module
    disable = module.add_metadata([ir.MetaDataString(module, "llvm.loop.unroll.disable")])
    # A loop's ID is a node of its own whose first operand is itself: made with a placeholder unique in the
    # module (another loop of the same function would otherwise get the same cached node), then pointed at itself.
    loop_id = module.add_metadata([ir.MetaDataString(module, f"loop {len(module.metadata)}"), disable])
    loop_id.operands = (loop_id, disable)
    latch.terminator.set_metadata("llvm.loop", loop_id)


def make_microkernel(mr: int, nv: int, vector_bytes: int, prefetch: int = 0, steps_table: bool = False,
                     gaps: bool = False):
    """A Numba intrinsic ``mk(a, aoff, arows, astride, b, boff, brows, bstart, c, coff, crows, kc, beta)``
    (with ``gaps``, one more argument, ``voff``).

    Computes the ``mr x (nv * lanes)`` tile ``C += A @ B`` (or ``C = A @ B``
    when ``beta`` is False) over ``kc`` steps ``s``, where

    * ``A[i, s] = a[aoff + arows[i] + s * astride]`` (broadcast), or with
      ``steps_table`` ``a[aoff + arows[i] + astride[s]]``, ``astride`` then
      a 1-D int64 array,
    * ``B[s, j] = b[boff + brows[bstart + s] + j]`` (a vector load per
      ``lanes`` columns), or with ``gaps`` vector ``v`` of the row (columns
      ``v * lanes`` to ``v * lanes + lanes - 1``) from
      ``b[boff + brows[bstart + s] + voff[v] + j - v * lanes]``, ``voff`` a
      1-D int64 array of ``nv`` offsets: vectors that lie apart,
    * ``C[i, j] = c[coff + crows[i] + j]``.

    ``a``, ``b`` and ``c`` are 1-D arrays of one float dtype, the row tables
    1-D int64 arrays; nothing is bounds-checked. The accumulators are
    vector values, kept in registers; each step is one fused multiply-add
    per accumulator. With ``prefetch``, each step also asks the cache for
    the ``B`` row of step ``s + prefetch`` (the last step's, near the end):
    rows that lie anywhere, which the hardware prefetcher cannot guess.
    """

    def codegen(context, builder, signature, args):
        a_arr, aoff, arows_arr, astride, b_arr, boff, brows_arr, bstart = args[:8]
        c_arr, coff, crows_arr, kc, beta = args[8:13]
        dtype = signature.args[0].dtype
        fty = context.get_value_type(dtype)
        width = vector_bytes // (4 if dtype == types.float32 else 8)
        vt = ir.VectorType(fty, width)
        align = 4 if dtype == types.float32 else 8
        data, const, at = _ir_helpers(context, builder, signature)

        def table(ptr, i):
            return builder.load(at(ptr, i))

        a_ptr, b_ptr, c_ptr = data(0, a_arr), data(4, b_arr), data(8, c_arr)
        ar, br, cr = data(2, arows_arr), data(6, brows_arr), data(10, crows_arr)
        a_rows = [at(a_ptr, builder.add(aoff, table(ar, const(i)))) for i in range(mr)]
        b_base = at(b_ptr, boff)
        b_rows = at(br, bstart)
        zero = ir.Constant(vt, None)
        acc = [[cgutils.alloca_once_value(builder, zero) for _ in range(nv)] for _ in range(mr)]
        name = f"llvm.fma.v{width}{'f32' if dtype == types.float32 else 'f64'}"
        fma = cgutils.get_or_insert_function(builder.module, ir.FunctionType(vt, [vt] * 3), name)
        undef = ir.Constant(vt, ir.Undefined)
        splat = ir.Constant(ir.VectorType(ir.IntType(32), width), [0] * width)
        lane0 = ir.Constant(ir.IntType(32), 0)
        if gaps:  # where each vector starts, from the row's start; one hint for each vector's first and last
            vo = data(13, args[13])
            starts = [table(vo, const(j)) for j in range(nv)]
            lines = [builder.add(o, const(e)) for o in starts for e in (0, width - 1)]
        else:  # elements of B per step; one hint per cache line it may touch, and its last element
            starts = [const(width * j) for j in range(nv)]
            run = nv * width
            lines = [const(e) for e in sorted({*range(0, run, 64 // (vector_bytes // width)), run - 1})]
        with cgutils.for_range(builder, kc) as loop:
            s = loop.index
            if prefetch:
                ahead = builder.add(s, const(prefetch))
                ahead = builder.select(builder.icmp_signed("<", ahead, kc), ahead, builder.sub(kc, const(1)))
                later = at(b_base, table(b_rows, ahead))
                for e in lines:
                    prefetch_line(builder, at(later, e))
            row = at(b_base, table(b_rows, s))
            bv = [builder.load(builder.bitcast(at(row, starts[j]), vt.as_pointer()), align=align)
                  for j in range(nv)]
            step = table(data(3, astride), s) if steps_table else builder.mul(s, astride)
            for i in range(mr):
                av = builder.load(at(a_rows[i], step))
                av = builder.shuffle_vector(builder.insert_element(undef, av, lane0), undef, splat)
                for j in range(nv):
                    builder.store(builder.call(fma, [av, bv[j], builder.load(acc[i][j])]), acc[i][j])
            latch = builder.basic_block
        if steps_table:
            _no_unroll(builder, latch)
        for i in range(mr):
            row = at(c_ptr, builder.add(coff, table(cr, const(i))))
            for j in range(nv):
                p = builder.bitcast(at(row, const(width * j)), vt.as_pointer())
                value = builder.load(acc[i][j])
                with builder.if_else(beta) as (add, store):
                    with add:
                        builder.store(builder.fadd(builder.load(p, align=align), value), p, align=align)
                    with store:
                        builder.store(value, p, align=align)
        return context.get_dummy_value()

    def sig(a, arows, astride, b, brows, c, crows, *voff):
        return types.void(a, types.intp, arows, astride if steps_table else types.intp, b, types.intp, brows,
                          types.intp, c, types.intp, crows, types.intp, types.boolean, *voff)

    if gaps:
        @intrinsic
        def mk(typingctx, a, aoff, arows, astride, b, boff, brows, bstart, c, coff, crows, kc, beta, voff):
            return sig(a, arows, astride, b, brows, c, crows, voff), codegen
    else:
        @intrinsic
        def mk(typingctx, a, aoff, arows, astride, b, boff, brows, bstart, c, coff, crows, kc, beta):
            return sig(a, arows, astride, b, brows, c, crows), codegen

    return mk


def make_dot_microkernel(mr: int, nr: int, vector_bytes: int):
    """A Numba intrinsic ``dk(a, aoff, arows, b, boff, brows, c, coff, crows, kc)``: the ``mr x nr`` tile
    ``C += A @ B^T`` of dot products over ``kc`` steps ``s``, where

    * ``A[i, s] = a[aoff + arows[i] + s]``,
    * ``B[j, s] = b[boff + brows[j] + s]``,
    * ``C[i, j] = c[coff + crows[i] + j]``.

    Both operands run along the steps, so both are loaded as vectors (the
    positions along the lanes, unaligned) and each of the ``mr * nr``
    accumulators keeps a vector of partial sums; a last step under a mask
    (zeros past ``kc``) takes the positions that do not fill a vector, and
    each accumulator's lanes are added (in any order) into its entry of
    ``C`` at the end. :func:`make_microkernel`'s tiles broadcast one
    operand, which must then lie with the other dimension along the
    vectors; this one needs neither operand transposed, at the cost of
    one horizontal sum per entry per call, which long calls amortize.
    Nothing is bounds-checked.
    """

    @intrinsic
    def dk(typingctx, a, aoff, arows, b, boff, brows, c, coff, crows, kc):
        sig = types.void(a, types.intp, arows, b, types.intp, brows, c, types.intp, crows, types.intp)

        def codegen(context, builder, signature, args):
            a_arr, aoff, ar_arr, b_arr, boff, br_arr, c_arr, coff, cr_arr, kc = args
            dtype = signature.args[0].dtype
            fty = context.get_value_type(dtype)
            width = vector_bytes // (4 if dtype == types.float32 else 8)
            vt, it = ir.VectorType(fty, width), ir.VectorType(ir.IntType(32), width)
            i32 = ir.IntType(32)
            align = 4 if dtype == types.float32 else 8
            suffix = f"v{width}{'f32' if dtype == types.float32 else 'f64'}"
            module = builder.module
            data, const, at = _ir_helpers(context, builder, signature)

            def rows(ptr, off, table, count):
                return [at(ptr, builder.add(off, builder.load(at(table, const(i))))) for i in range(count)]

            a_rows = rows(data(0, a_arr), aoff, data(2, ar_arr), mr)
            b_rows = rows(data(3, b_arr), boff, data(5, br_arr), nr)
            c_rows = rows(data(6, c_arr), coff, data(8, cr_arr), mr)
            zero = ir.Constant(vt, None)
            acc = [[cgutils.alloca_once_value(builder, zero) for _ in range(nr)] for _ in range(mr)]
            fma = cgutils.get_or_insert_function(module, ir.FunctionType(vt, [vt] * 3), f"llvm.fma.{suffix}")
            mload = cgutils.get_or_insert_function(
                module, ir.FunctionType(vt, [vt.as_pointer(), i32, ir.VectorType(ir.IntType(1), width), vt]),
                f"llvm.masked.load.{suffix}.p0")
            hsum = cgutils.get_or_insert_function(module, ir.FunctionType(fty, [fty, vt]),
                                                  f"llvm.vector.reduce.fadd.{suffix}")

            def step(s, load):
                av = [load(row, s) for row in a_rows]
                bv = [load(row, s) for row in b_rows]
                for i in range(mr):
                    for j in range(nr):
                        builder.store(builder.call(fma, [av[i], bv[j], builder.load(acc[i][j])]), acc[i][j])

            def vector(row, s):
                return builder.bitcast(at(row, s), vt.as_pointer())

            full = builder.sdiv(kc, const(width))
            with cgutils.for_range(builder, full) as loop:
                step(builder.mul(loop.index, const(width)), lambda row, s: builder.load(vector(row, s), align=align))
            done = builder.mul(full, const(width))
            left = builder.sub(kc, done)
            with builder.if_then(builder.icmp_signed(">", left, const(0))):
                undef = ir.Constant(it, ir.Undefined)
                count = builder.insert_element(undef, builder.trunc(left, i32), ir.Constant(i32, 0))
                count = builder.shuffle_vector(count, undef, ir.Constant(it, [0] * width))
                mask = builder.icmp_signed("<", ir.Constant(it, list(range(width))), count)
                step(done, lambda row, s: builder.call(mload, [vector(row, s), ir.Constant(i32, align), mask, zero]))
            for i in range(mr):
                for j in range(nr):
                    total = builder.call(hsum, [ir.Constant(fty, 0.0), builder.load(acc[i][j])], fastmath=("reassoc",))
                    p = at(c_rows[i], const(j))
                    builder.store(builder.fadd(builder.load(p), total), p)
            return context.get_dummy_value()

        return sig, codegen

    return dk


_mk = make_microkernel(MR, NV, VECTOR_BYTES)
_mk_forward = make_microkernel(FORWARD_MR, FORWARD_NV, VECTOR_BYTES, FORWARD_PREFETCH)
# The forward's tile cut to one or two vectors where a row's last tile needs no more (:func:`_tile_vectors`).
_mk_forward1 = make_microkernel(FORWARD_MR, 1, VECTOR_BYTES, FORWARD_PREFETCH)
_mk_forward2 = make_microkernel(FORWARD_MR, 2, VECTOR_BYTES, FORWARD_PREFETCH)
# The forward's tile over real output positions whose vectors lie apart in the lattice (:func:`_forward_gapped`).
_mk_forward_gaps = make_microkernel(FORWARD_MR, FORWARD_NV, VECTOR_BYTES, FORWARD_PREFETCH, gaps=True)
_mk_wide = make_microkernel(WIDE_MR, WIDE_NV, VECTOR_BYTES, 0, True)  # steps from a table
_mk_steps = make_microkernel(MR, NV, VECTOR_BYTES, 0, True)
_dk = make_dot_microkernel(DOT_MR, DOT_NR, VECTOR_BYTES)
_mk_channels = make_microkernel(CHANNELS_MR, 1, VECTOR_BYTES, 0, True)


def _fill_planes(x, seg_dst, seg_src, seg_len, step, size, out):  # pragma: no cover - compiled
    """``out[b, c, :size]``: plane ``x[b, c]`` padded and phase-split (see :func:`.direct.fill_arrays`); the
    slack after it zeroed (blocks read up to a block past the last position)."""
    n, c = x.shape[:2]
    for job in prange(n * c):
        b = job // c
        ch = job % c
        _fill(out[b, ch, :size], x[b, ch], seg_dst, seg_src, seg_len, step)
        tail = out[b, ch, size:]
        for i in range(tail.shape[0]):
            tail[i] = 0


@njit(**_FLAGS)
def _forward_job(job, xph, wpack, rowoff, rows, width, length, block, steps, size, span, pad, windows_in_place,
                 seg_dst, seg_src, seg_len, step, phases, out, groups, nblocks, nr, ct, kbs, mr, k_g, tstride, arows,
                 crows, drows, lattice, into_output, direct, c_g):  # pragma: no cover - compiled
    """Job ``job`` of :func:`_forward` (image, group, block of lattice positions)."""
    b = job // (groups * nblocks)
    g = (job // nblocks) % groups
    p0 = (job % nblocks) * block
    nc = min(block, length - p0)
    starts = _tile_starts(rows, width, p0, nc, nr)
    if starts.shape[0] == 0:
        return
    vectors = _tile_vectors(rows, width, p0, nc, starts, nr, nr // FORWARD_NV)
    src, start, offs = xph[b], p0, rowoff[g]
    if span and windows_in_place and p0 >= pad and p0 - pad + span <= size:  # inside the input: no copy
        start, offs = p0 - pad, direct[g]
    elif span:
        local = np.empty(c_g * phases.shape[0] * span, dtype=out.dtype)
        _window(xph[b], g * c_g * size, size, c_g, p0, span, seg_dst, seg_src, seg_len, step, phases, local)
        src, start = local, 0
    # the tiles' destination: the output itself, or a local tile whose real positions are copied out after
    stored = into_output and p0 + starts[-1] + nr <= length
    if stored:
        tile, base, rstride, trows = out[b].reshape(out.shape[1] * lattice), g * k_g * lattice + p0, lattice, drows
    else:
        tile, base, rstride, trows = np.empty(kbs * mr * tstride, dtype=out.dtype), 0, tstride, crows
    for r0 in range(0, ct, steps):
        kc = min(steps, ct - r0)
        for kb in range(kbs):
            for t in range(starts.shape[0]):
                j = starts[t]
                _forward_tile(vectors[t], wpack[g], (kb * ct + r0) * mr, arows, mr, src, start + j, offs, r0,
                              tile, base + kb * mr * rstride + j, trows, kc, r0 > 0)
    if stored:
        return
    q = max(0, np.searchsorted(rows, p0, "right") - 1)  # the output row holding position p0
    while q < rows.shape[0] and rows[q] < p0 + nc:
        lo = max(rows[q], p0)
        hi = min(rows[q] + width, p0 + nc)
        if hi > lo:
            o = q * width + lo - rows[q]
            for k in range(k_g):
                dst = out[b, g * k_g + k, o:o + hi - lo]
                src = tile[k * tstride + lo - p0:k * tstride + hi - p0]
                for i in range(hi - lo):
                    dst[i] = src[i]
        q += 1


def _forward(xph, wpack, rowoff, rows, width, length, block, steps, size, span, pad, windows_in_place,
             seg_dst, seg_src, seg_len, step, phases, dynamic, out):  # pragma: no cover - compiled
    """``out (n, K, P)`` from the filled planes ``xph (n, C * stride)``; or, with ``span`` (see
    :func:`_forward_windowed`), from the unpadded input ``xph (n, C * size)``, each job copying the window
    of its group's padded planes that its block reads, ``span`` positions from the block's first, ``p0``,
    in each of the phases that start at ``phases``, into a local buffer (:func:`_window`, from the segments
    ``seg_dst, seg_src, seg_len`` and ``step`` of :func:`.direct.fill_arrays`' plain layout; ``rowoff``
    then counts in it, see :func:`_window_rows`): no padded copy of the whole input goes
    through memory (WaveNet's 16 MB: 14% of its forward, 6.9 vs 7.7 ms). With ``windows_in_place``
    (:data:`WINDOWS_IN_PLACE`, 1-D layers padded by ``pad`` before), a job whose window lies inside the
    input reads it there instead.

    ``wpack (groups, kbs * CT * MR)``: each group's weights in blocks of
    ``MR`` output channels, ``(kbs, CT, MR)``, rows past ``K_g`` zero;
    ``rowoff (groups, CT)``: where patch row ``r`` starts in ``xph[b]``.
    With ``dynamic`` threads, each takes the next job as it comes free (see
    :data:`.direct.DYNAMIC_JOBS`; 0: ``prange``'s equal shares).
    One job per (image, group, block of ``block`` lattice positions): the
    tiles go to a local ``(kbs * MR, block + nr)`` array, then its real
    positions (output rows start at lattice positions ``rows``) to ``out``.
    No tile starts at a dropped position: one that would starts at the
    next row instead (:func:`_tile_starts`).
    """
    n = xph.shape[0]
    groups, ct = rowoff.shape
    mr = FORWARD_MR
    kbs = wpack.shape[1] // (ct * mr)
    nr = FORWARD_NV * (VECTOR_BYTES // out.itemsize)
    k_g = out.shape[1] // groups
    nblocks = -(-length // block)
    tstride = block + nr  # a tile may start up to nr - 1 positions before the block's end
    arows = np.arange(mr)
    crows = np.arange(mr) * tstride
    c_g = xph.shape[1] // size // groups if span else 0
    # A lattice of one row that starts each output plane (1-D stride 1, 1x1): a job whose tiles end within it
    # stores them in ``out`` itself, not through the local tile and a copy, where the tile's rows are all output
    # channels. WaveNet's forward 5.7 vs 6.4 ms and input gradient 5.8 vs 6.6, with the input read where it
    # lies (below); 1-D k=9's forward 21.5 vs 22.5 (one process, alternating; a one-off script).
    lattice = out.shape[2]
    into_output = rows.shape[0] == 1 and rows[0] == 0 and width == length <= lattice and k_g % mr == 0
    drows = np.arange(mr) * lattice
    direct = np.empty((groups, ct), dtype=np.int64)  # with ``span``: the rows in ``xph[b]`` itself
    if span and windows_in_place:
        taps = ct // c_g
        for g in range(groups):
            for r in range(ct):
                direct[g, r] = rowoff[g, r] + (r // taps) * (size - span) + g * c_g * size
    jobs = n * groups * nblocks
    # With ``dynamic`` threads each takes the next job as it comes free (see .direct.DYNAMIC_JOBS); else one job
    # per iteration of prange's equal shares. The bound is computed apart: as prange's argument, the conditional
    # made the loop serial.
    counter = np.zeros(1, dtype=np.int64)
    slots = dynamic if dynamic else jobs
    for slot in prange(slots):
        job = _take(counter) if dynamic else np.int64(slot)
        while job < jobs:
            _forward_job(job, xph, wpack, rowoff, rows, width, length, block, steps, size, span, pad,
                         windows_in_place, seg_dst, seg_src, seg_len, step, phases, out, groups, nblocks, nr, ct, kbs,
                         mr, k_g, tstride, arows, crows, drows, lattice, into_output, direct, c_g)
            job = _take(counter) if dynamic else jobs


@njit(**_FLAGS)
def _window(x, start, size, channels, first, span, seg_dst, seg_src, seg_len, step, phases,
            out):  # pragma: no cover - compiled
    """``out[(c * P + h) * span + i]``: position ``phases[h] + first + i`` of the padded, phase-split plane of
    channel ``c`` (see :func:`.direct.fill_arrays`, whose segments, of plain ``step``, say where the ``size``
    positions of the unpadded plane ``x[start + c * size:]`` lie in it), zero elsewhere, for ``channels``
    channels and the ``P`` phases that start at ``phases``: the window of the padded planes that a block of
    lattice positions from ``first`` reads (see :func:`_forward`).

    Each segment's clipping to the window is worked out once, then copied for every channel: the segments
    are the same in every plane, and a 2-D layer's are as short as a row (14 positions for ResNet's 3x3/2),
    so that working them out again per channel cost as much as the copies. Channel by channel, the windows
    took 1.9-2.4x as long (one thread, us a window: ResNet 3x3/2 114 against 61, DeepBench C128 52 against
    24, WaveNet 12 against 5; a one-off script), and the suite's forwards up to 12% longer (BENCHMARKS.md)."""
    nseg = seg_dst.shape[0]
    nph = phases.shape[0]
    cstride = nph * span
    for h in range(nph):
        at0 = phases[h] + first
        lo, hi = 0, nseg  # the first segment that ends after the window's first position
        while lo < hi:
            mid = (lo + hi) // 2
            if seg_dst[mid] + seg_len[mid] <= at0:
                lo = mid + 1
            else:
                hi = mid
        s = lo
        at = 0  # the window's positions before ``at`` are written
        base = h * span
        while s < nseg and seg_dst[s] - at0 < span:
            d0 = seg_dst[s] - at0
            a = max(d0, 0)
            e = min(d0 + seg_len[s], span)
            if a > at:
                for cl in range(channels):
                    dst = out[cl * cstride + base + at:cl * cstride + base + a]
                    for i in range(a - at):
                        dst[i] = 0
            src0 = start + seg_src[s] + (a - d0) * step
            m = e - a
            # the loops written out, as in .direct._fill: a shared helper, even inlined, made the strided fill
            # 1.4-1.9x slower, and a helper for the zeros made these windows 1.2-1.4x slower (one-off scripts)
            if step == 1:
                for cl in range(channels):
                    dst = out[cl * cstride + base + a:cl * cstride + base + e]  # slices: a vector loop
                    part = x[src0 + cl * size:src0 + cl * size + m]
                    for i in range(m):
                        dst[i] = part[i]
            elif step == 2:  # a constant stride vectorises too (interleaved loads)
                for cl in range(channels):
                    dst = out[cl * cstride + base + a:cl * cstride + base + e]
                    part = x[src0 + cl * size:src0 + cl * size + 2 * m]
                    for i in range(m):
                        dst[i] = part[2 * i]
            else:
                for cl in range(channels):
                    dst = out[cl * cstride + base + a:cl * cstride + base + e]
                    for i in range(m):
                        dst[i] = x[src0 + cl * size + i * step]
            at = e
            s += 1
        if span > at:
            for cl in range(channels):
                dst = out[cl * cstride + base + at:cl * cstride + base + span]
                for i in range(span - at):
                    dst[i] = 0


@njit(**_FLAGS)
def _forward_gapped_job(job, xph, wpack, rowoff, rows, width, count, block, steps, out, groups, nblocks,
                        lanes_, ct, kbs, mr, k_g, arows, crows):  # pragma: no cover - compiled
    """Job ``job`` of :func:`_forward_gapped` (image, group, block of real output positions)."""
    b = job // (groups * nblocks)
    g = (job // nblocks) % groups
    p0 = (job % nblocks) * block
    nc = min(block, count - p0)
    nr = FORWARD_NV * lanes_
    ntiles = -(-nc // nr)
    at = np.empty((ntiles, FORWARD_NV), dtype=np.int64)  # where each vector of each tile lies in the lattice
    for t in range(ntiles):
        for u in range(FORWARD_NV):
            q = min(p0 + t * nr + u * lanes_, count - lanes_)  # past the block's end: never read
            at[t, u] = rows[q // width] + q % width
    src, offs, dst = xph[b], rowoff[g], out[b].reshape(out.shape[1] * count)
    for r0 in range(0, ct, steps):
        kc = min(steps, ct - r0)
        for kb in range(kbs):
            aoff = (kb * ct + r0) * mr
            base = (g * k_g + kb * mr) * count + p0
            for t in range(ntiles):
                j = t * nr
                vectors = min(FORWARD_NV, (nc - j) // lanes_)
                if vectors == FORWARD_NV:
                    _mk_forward_gaps(wpack[g], aoff, arows, mr, src, 0, offs, r0, dst, base + j, crows, kc, r0 > 0,
                                     at[t])
                else:  # the last tile of an image, one or two vectors: each one contiguous
                    for u in range(vectors):
                        _mk_forward1(wpack[g], aoff, arows, mr, src, at[t, u], offs, r0, dst, base + j + u * lanes_,
                                     crows, kc, r0 > 0)


def _forward_gapped(xph, wpack, rowoff, rows, width, block, steps, dynamic, out):  # pragma: no cover - compiled
    """``out (n, K, P)`` from the filled planes ``xph (n, C * stride)``, as :func:`_forward` computes it, but with
    tiles over the ``P`` real output positions, not the lattice's: output rows of ``width`` positions, a whole
    number of vectors, start at lattice positions ``rows``, and a tile's three vectors are read where each lies
    (:func:`make_microkernel`'s ``gaps``). No multiply-add goes to the dropped positions between the rows, and the
    tiles store into ``out`` itself, with no local tile and no copy; ``K_g`` must be a multiple of
    :data:`FORWARD_MR`. Jobs: (image, group, block of ``block`` real positions), dealt as in :func:`_forward`."""
    n = xph.shape[0]
    groups, ct = rowoff.shape
    mr = FORWARD_MR
    kbs = wpack.shape[1] // (ct * mr)
    lanes_ = VECTOR_BYTES // out.itemsize
    k_g = out.shape[1] // groups
    count = out.shape[2]
    nblocks = -(-count // block)
    arows = np.arange(mr)
    crows = np.arange(mr) * count
    jobs = n * groups * nblocks
    counter = np.zeros(1, dtype=np.int64)
    slots = dynamic if dynamic else jobs
    for slot in prange(slots):
        job = _take(counter) if dynamic else np.int64(slot)
        while job < jobs:
            _forward_gapped_job(job, xph, wpack, rowoff, rows, width, count, block, steps, out, groups, nblocks,
                                lanes_, ct, kbs, mr, k_g, arows, crows)
            job = _take(counter) if dynamic else jobs


@njit(**_FLAGS)
def _tile_starts(rows, width, p0, nc, nr):  # pragma: no cover - compiled
    """Offsets from ``p0`` of the tiles (``nr`` positions each, none overlapping) that cover the real positions
    among lattice positions ``p0 .. p0 + nc - 1``: ``nr`` apart, except that a tile that would start at a dropped
    position (between output rows, which start at ``rows`` and are ``width`` long) starts at the next row. The
    rows of interleaved images are ``n`` times as far apart, with ``n`` times as many positions dropped between
    them as one image has (LeNet's C3: 4 x 64 after every 10 x 64); a tile's overhang into the next row is
    computed there once, and so is never accumulated twice."""
    out = np.empty(-(-nc // nr), dtype=np.int64)
    count = 0
    q = max(0, np.searchsorted(rows, p0, "right") - 1)
    j = 0
    while j < nc:
        while q < rows.shape[0] and rows[q] + width <= p0 + j:
            q += 1
        if q == rows.shape[0]:
            break
        j = max(j, rows[q] - p0)
        if j >= nc:
            break
        out[count] = j
        count += 1
        j += nr
    return out[:count]


@njit(**_FLAGS)
def _tile_vectors(rows, width, p0, nc, starts, nr, lanes):  # pragma: no cover - compiled
    """Vectors (of ``lanes`` positions) each tile of :func:`_tile_starts` must compute: all ``nr // lanes``,
    except where the real positions it covers end sooner and the positions after them up to ``p0 + nc`` are
    dropped until the next tile starts (a row's end with a gap after it at least as long as the rest of the
    tile, or the block's end): then enough vectors for those positions only. DCGAN 256->128's input gradient,
    16 images interleaved, rows of 128 real positions and 16 dropped: each row's third tile needs two of its
    three vectors; the kernel alone 5.04-5.19 vs 5.52-5.74 ms (a one-off script), the same outputs bitwise."""
    out = np.empty(starts.shape[0], dtype=np.int64)
    full = nr // lanes
    q = 0
    for t in range(starts.shape[0]):
        a = p0 + starts[t]
        while q + 1 < rows.shape[0] and rows[q + 1] <= a:
            q += 1
        end = min(rows[q] + width, p0 + nc)  # the real positions of a's row in the block end here
        out[t] = full
        if a + nr > end:
            following = rows[q + 1] if q + 1 < rows.shape[0] else p0 + nc  # the next real position
            if following >= min(a + nr, p0 + nc):
                out[t] = min(full, -(-(end - a) // lanes))
    return out


@njit(inline="always", **_FLAGS)
def _forward_tile(vectors, a, aoff, arows, mr, b, boff, brows, bstart, c, coff, crows, kc,
                  beta):  # pragma: no cover - compiled
    """The forward's tile of ``vectors`` vectors (:func:`_tile_vectors`). Inlined: called, with its fourteen
    arguments, it made WaveNet's input gradient 13% slower (one process, four rounds; a one-off script)."""
    if vectors == FORWARD_NV:
        _mk_forward(a, aoff, arows, mr, b, boff, brows, bstart, c, coff, crows, kc, beta)
    elif vectors == 2:
        _mk_forward2(a, aoff, arows, mr, b, boff, brows, bstart, c, coff, crows, kc, beta)
    else:
        _mk_forward1(a, aoff, arows, mr, b, boff, brows, bstart, c, coff, crows, kc, beta)


@njit(**_FLAGS)
def _image_run(job, runs, n):  # pragma: no cover - compiled
    """``(outer, first, count)`` of job ``job`` of the interleaving copies: ``runs`` runs of
    :data:`INTERLEAVE_IMAGES` images (the last may be shorter) per outer index (a channel)."""
    first = (job % runs) * INTERLEAVE_IMAGES
    return job // runs, first, min(INTERLEAVE_IMAGES, n - first)


def _fill_interleaved(x, seg_dst, seg_src, seg_len, step, size, out):  # pragma: no cover - compiled
    """``out[c, s * n + b] = filled[b, c, s]``: the planes of :func:`_fill_planes` with their positions
    interleaved over the ``n`` images, one channel per row of ``out (C, cstride)``; the slack after
    ``size * n`` zeroed. One job per channel and :data:`INTERLEAVE_IMAGES` images: their planes are
    transposed, position by position (even columns before odd ones for :data:`.direct.SPLIT2`), into a
    buffer in cache, whose runs of images then go to the filled positions whole, the padding zeroed.
    DCGAN 256->128's input gradient, 16 images of 128 planes (a one-off script, the copy alone): 0.25-0.28
    vs 0.37-0.43 ms on two threads, 0.39 vs 0.58 on one, against filling each image's plane
    (:func:`.direct._fill`) and then transposing."""
    n, c, length = x.shape
    m = INTERLEAVE_IMAGES
    nb = -(-n // m)
    half = length // 2
    split = step == SPLIT2
    step = 1 if split else step
    for job in prange(c * nb):
        ch, b0, count = _image_run(job, nb, n)
        planes = np.empty(length * m, dtype=out.dtype)  # planes[p * m + i]: image b0 + i's position p
        for i in range(count):
            src = x[b0 + i, ch]
            if split:
                for p in range(half):
                    planes[p * m + i] = src[2 * p]
                    planes[(half + p) * m + i] = src[2 * p + 1]
            else:
                for p in range(length):
                    planes[p * m + i] = src[p]
        dst = out[ch]
        if count == n:  # the whole batch: the runs are contiguous
            dst[:size * n] = 0
        else:
            for s in range(size):
                run = dst[s * n + b0:s * n + b0 + count]
                for i in range(count):
                    run[i] = 0
        for g in range(seg_dst.shape[0]):
            for t in range(seg_len[g]):
                run = dst[(seg_dst[g] + t) * n + b0:(seg_dst[g] + t) * n + b0 + count]
                src = planes[(seg_src[g] + t * step) * m:(seg_src[g] + t * step) * m + count]
                for i in range(count):
                    run[i] = src[i]
        if b0 == 0:
            for i in range(size * n, dst.shape[0]):
                dst[i] = 0


def _deinterleave(src, out):  # pragma: no cover - compiled
    """``out[b, k, p] = src[k, p * n + b]`` for ``out (n, K, P)``: the interleaved forward's output. One job
    per channel and :data:`INTERLEAVE_IMAGES` images, reading a run of images at a time into a local block
    of as many positions, whose rows are then written whole (written one entry at a time, the images' rows,
    ``K * P`` apart, can share a cache set: DCGAN's 256 x 64 outputs per image, 64 KiB)."""
    n, k_total, count = out.shape
    m = INTERLEAVE_IMAGES
    nb = -(-n // m)
    for job in prange(k_total * nb):
        k, b0, images = _image_run(job, nb, n)
        row = src[k]
        block = np.empty((m, m), dtype=out.dtype)
        for p0 in range(0, count, m):
            p1 = min(count, p0 + m)
            for p in range(p0, p1):
                run = row[p * n + b0:p * n + b0 + images]
                for i in range(images):
                    block[i, p - p0] = run[i]
            for i in range(images):
                dst = out[b0 + i, k, p0:p1]
                for j in range(p1 - p0):
                    dst[j] = block[i, j]


def _embed_interleaved(gy, rows, width, out):  # pragma: no cover - compiled
    """``out (n // spread, K, lstride)``: ``gy (n, K, P)`` on one lattice per ``spread`` images, position by
    position (``out[b // spread, k, p * spread + b % spread]``), zeros at the dropped positions and after."""
    n, k_total = gy.shape[:2]
    chunks = out.shape[0]
    spread = n // chunks
    for job in prange(chunks * k_total):
        chunk = job // k_total
        k = job % k_total
        dst = out[chunk, k]
        for i in range(dst.shape[0]):
            dst[i] = 0
        for bb in range(spread):
            src = gy[chunk * spread + bb, k]
            for q in range(rows.shape[0]):
                for i in range(width):
                    dst[(rows[q] + i) * spread + bb] = src[q * width + i]


def _embed_rows(gy, rows, width, out):  # pragma: no cover - compiled
    """``out (n, K, stride)``: ``gy (n, K, P)`` on the lattice (as :func:`.windows.lattice_embed`, compiled and
    threaded), zeros at the dropped positions and after."""
    n, k_total = gy.shape[:2]
    stride = out.shape[2]
    for job in prange(n * k_total):
        b = job // k_total
        k = job % k_total
        dst = out[b, k]
        src = gy[b, k]
        end = 0
        for q in range(rows.shape[0]):
            for i in range(end, rows[q]):
                dst[i] = 0
            piece = dst[rows[q]:rows[q] + width]
            run = src[q * width:(q + 1) * width]
            for i in range(width):
                piece[i] = run[i]
            end = rows[q] + width
        for i in range(end, stride):
            dst[i] = 0


@njit(**_FLAGS)
def _grad_input_job(job, gyl, ktable, wtpack, crow, starts, block, chans, n_taps, seg_dst, seg_src, seg_len, step,
                    size, stride, complete, spread, out, groups, jobs_per_group, c_g, k_g, mr, arows, length_in, half,
                    split, unit):  # pragma: no cover - compiled
    """Job ``job`` of :func:`_grad_input` (image, group, block of channels)."""
    b = job // (groups * jobs_per_group)
    g = (job // jobs_per_group) % groups
    c0 = (job % jobs_per_group) * chans
    c1 = min(c_g, c0 + chans)
    # The padded rows of the last block may land past the chans planes: scratch, never read, left unzeroed (DCGAN
    # 256->128, one channel a job: zeroing the nine planes cost 0.3 ms a call).
    local = np.empty((chans + mr) * stride, dtype=out.dtype)
    local[:chans * stride] = 0
    for t0 in range(0, starts.shape[0], block):
        for rb in range(c0 * n_taps // mr, -(-(c1 * n_taps) // mr)):
            for j in starts[t0:t0 + block]:
                _mk(wtpack[g], rb * k_g * mr, arows, mr, gyl[b], j, ktable, g * k_g,
                    local, j - c0 * stride, crow[rb * mr:(rb + 1) * mr], k_g, True)
    if spread == 1:
        for c in range(c0, c1):
            _unfill(out[b, g * c_g + c], local[(c - c0) * stride:(c - c0) * stride + size], seg_dst, seg_src,
                    seg_len, step, complete)
        return
    planes = np.empty(length_in * spread, dtype=out.dtype)  # planes[p * spread + bb]: image bb's position p
    for c in range(c0, c1):
        if not complete:  # input elements that no window reaches get a zero gradient
            planes[:] = 0
        base = (c - c0) * stride
        for sg in range(seg_dst.shape[0]):  # the filled positions' runs of images, whole
            for t in range(seg_len[sg]):
                src = local[base + (seg_dst[sg] + t) * spread:base + (seg_dst[sg] + t + 1) * spread]
                q = seg_src[sg] + t * unit
                run = planes[q * spread:(q + 1) * spread]
                for i in range(spread):
                    run[i] = src[i]
        for bb in range(spread):  # each image's plane out of them, its columns merged for SPLIT2
            dst = out[b * spread + bb, g * c_g + c]
            if split:
                for p in range(half):
                    dst[2 * p] = planes[p * spread + bb]
                    dst[2 * p + 1] = planes[(half + p) * spread + bb]
            else:
                for p in range(length_in):
                    dst[p] = planes[p * spread + bb]


def _grad_input(gyl, ktable, wtpack, crow, starts, block, chans, n_taps, seg_dst, seg_src, seg_len, step, size,
                stride, complete, spread, dynamic, out):  # pragma: no cover - compiled
    """``out (n, C, S)``, the input gradient, from ``gyl (n // spread, K * lstride)`` (``gy`` on the lattice,
    zeros at the dropped positions; ``ktable[k] = k * lstride``; with ``spread`` images interleaved position
    by position, as :func:`forward` interleaves them, ``gyl`` holds one lattice per ``spread`` images and the
    local planes are interleaved the same way). The tiles start at ``starts`` (:func:`_grad_input_tiles`),
    ``block`` of them at a time.

    ``wtpack (groups, rbs * K_g * MR)``: each group's transposed weights in
    blocks of ``MR`` patch rows, ``(rbs, K_g, MR)``, rows past ``C_g * T``
    zero. ``crow[r]``: where patch row ``r`` (channel ``r // T``, tap
    ``r % T``) starts in a buffer of planes ``stride`` apart. One job per
    (image, group, ``chans`` channels: a whole number of row blocks), taken
    as in :func:`_forward` with ``dynamic`` threads: it
    adds its tiles into a local buffer of padded planes, which then goes
    back to the unpadded planes (:func:`.direct._unfill`). Interleaved,
    the runs of images at the real positions go whole into a buffer of the
    images' planes, position by position, which is then transposed into
    each image's plane (the adjoint of :func:`_fill_interleaved`; DCGAN
    256->128's transposed forward, the kernel alone: 5.60-5.67 vs
    5.78-5.83 ms on two threads, 11.2-11.5 vs 11.8-12.0 on one, against a
    gather and :func:`.direct._unfill` per image; a one-off script).
    """
    n = gyl.shape[0]
    c_total = out.shape[1]
    groups = wtpack.shape[0]
    c_g = c_total // groups
    k_g = ktable.shape[0] // groups
    mr = MR
    nr = NV * (VECTOR_BYTES // out.itemsize)
    jobs_per_group = -(-c_g // chans)
    arows = np.arange(mr)
    length_in = out.shape[2]
    half = length_in // 2
    split = step == SPLIT2
    unit = 1 if split else step  # in an image's plane, its columns split for SPLIT2 (see .direct._unfill)
    jobs = n * groups * jobs_per_group
    # the jobs dealt either way, as in _forward
    counter = np.zeros(1, dtype=np.int64)
    slots = dynamic if dynamic else jobs
    for slot in prange(slots):
        job = _take(counter) if dynamic else np.int64(slot)
        while job < jobs:
            _grad_input_job(job, gyl, ktable, wtpack, crow, starts, block, chans, n_taps, seg_dst, seg_src, seg_len,
                            step, size, stride, complete, spread, out, groups, jobs_per_group, c_g, k_g, mr, arows,
                            length_in, half, split, unit)
            job = _take(counter) if dynamic else jobs


@njit(**_FLAGS)
def _transpose_block(gy, k0, k_g, p0, p1, kgp, out):  # pragma: no cover - compiled
    """``out[(p - p0) * kgp + k] = gy[k0 + k, p]`` for the output positions ``p0 <= p < p1`` and ``k < k_g``: a
    block of one image's ``gy (K, P)`` with its channels along the vectors. The ``kgp - k_g`` padding channels
    are left as they are (the caller zeroes them once). In blocks of :data:`TRANSPOSE_CHANNELS` by
    :data:`TRANSPOSE_POSITIONS`; :func:`_grad_weight_chunks` transposes its sums with it too."""
    for kb in range(0, k_g, TRANSPOSE_CHANNELS):
        kn = min(k_g - kb, TRANSPOSE_CHANNELS)
        for q in range(p0, p1, TRANSPOSE_POSITIONS):
            for i in range(q, min(p1, q + TRANSPOSE_POSITIONS)):
                dst = out[(i - p0) * kgp + kb:(i - p0) * kgp + kb + kn]
                src = gy[k0 + kb:k0 + kb + kn, i]
                for k in range(kn):
                    dst[k] = src[k]


@njit(**_FLAGS)
def _job_rows(x, job, groups, nblocks, block, length, c_g, size, span, seg_dst, seg_src, seg_len,
              local):  # pragma: no cover - compiled
    """``(b, g, p0, kc, src, start)`` of the weight gradients' job ``job`` (image ``b``, group ``g``, the ``kc``
    positions from ``p0``): its patch rows lie in ``src`` from ``start``. With ``span``, ``x[b]`` is the unpadded
    input and the window of the block, ``span`` positions of the padded planes from ``p0``, is copied into ``local``
    (:func:`_window`); otherwise ``x[b]`` holds the rows, the block's from ``p0``."""
    b = job // (groups * nblocks)
    g = (job // nblocks) % groups
    p0 = (job % nblocks) * block
    kc = min(block, length - p0)
    if span:
        _window(x[b], g * c_g * size, size, c_g, p0, span, seg_dst, seg_src, seg_len, 1, _ONE_PHASE, local)
        return b, g, p0, kc, local, 0
    return b, g, p0, kc, x[b], p0


def _grad_weight(xph, gy, rowoff, steps, kgp, length, block, n_threads, wide, size, span, seg_dst, seg_src, seg_len,
                 parts):  # pragma: no cover - compiled
    """``parts (n_threads, groups, CTp * kgp)``: per-thread sums of ``gW^T[r, k] = sum_p plane[r][p] gy[p, k]``
    over the ``length`` output positions ``p``.

    ``xph (n, C * stride)`` filled planes, ``gy (n, K, length)`` as given,
    ``rowoff (groups, CTp)`` where patch row ``r`` starts in ``xph[b]``
    (rows past ``C_g * T`` repeat row 0) and ``steps[p]`` where output
    position ``p`` lies in the lattice; or, with ``span`` (1-D layers of
    stride 1), ``xph (n, C * size)`` the unpadded input, each job copying
    the window its block reads, ``span`` padded positions from ``p0``, into
    a buffer of its thread (:func:`_window`), ``rowoff`` counting in that
    buffer and ``steps[p] = p``. The tile is the wide one
    (:data:`WIDE_MR`) where ``wide``. Jobs are (image, group, ``block``
    positions), dealt to the threads in turn (not taken as they come free,
    :data:`.direct.DYNAMIC_JOBS`: which thread sums which job must not
    change from call to call). Each job first lays its
    block of ``gy`` out with the channels along the vectors, ``kgp`` apart
    (:func:`_transpose_block`), in a buffer of its thread that stays in
    cache, then adds its products into the thread's own part, so no two
    threads write one entry. The tile's steps are the block's output
    positions only, read from the lattice through ``steps``: the dropped
    lattice columns between output rows (13 of 209 positions on ResNet
    3x3/2's 14 x 14 outputs, 7 of 71 on DCGAN 256->128's) are not
    multiplied.
    """
    n = xph.shape[0]
    groups, ctp = rowoff.shape
    k_g = gy.shape[1] // groups
    mr = WIDE_MR if wide else MR
    nr = (WIDE_NV if wide else NV) * (VECTOR_BYTES // parts.itemsize)
    nblocks = -(-length // block)
    jobs = n * groups * nblocks
    ptable = np.arange(block) * kgp  # step s (position p0 + s) of the buffer
    crow = np.arange(ctp) * kgp
    align = VECTOR_BYTES // parts.itemsize
    c_g = xph.shape[1] // size // groups if span else 0
    for tid in prange(n_threads):
        raw = np.zeros(block * kgp + align, dtype=parts.dtype)  # the padding channels stay zero
        skip = (-raw.ctypes.data % VECTOR_BYTES) // parts.itemsize  # vector loads that never split a line
        gyt = raw[skip:skip + block * kgp]
        local = np.empty(max(1, c_g * span), dtype=parts.dtype)
        for job in range(tid, jobs, n_threads):
            b, g, p0, kc, src, start = _job_rows(xph, job, groups, nblocks, block, length, c_g, size, span, seg_dst,
                                                 seg_src, seg_len, local)
            _transpose_block(gy[b], g * k_g, k_g, p0, p0 + kc, kgp, gyt)
            at = steps[p0:p0 + kc]
            base = start - p0  # steps count from the block's start in the window, from 0 in the planes
            for rb in range(ctp // mr):
                for kb in range(0, kgp, nr):
                    if wide:
                        _mk_wide(src, base, rowoff[g, rb * mr:(rb + 1) * mr], at, gyt, kb, ptable, 0, parts[tid, g],
                                 kb, crow[rb * mr:(rb + 1) * mr], kc, True)
                    else:
                        _mk_steps(src, base, rowoff[g, rb * mr:(rb + 1) * mr], at, gyt, kb, ptable, 0, parts[tid, g],
                                  kb, crow[rb * mr:(rb + 1) * mr], kc, True)


def _transpose_all(gy, groups, kgp, out):  # pragma: no cover - compiled
    """``out[b, g, p, k] = gy[b, g * K_g + k, p]`` for ``k < K_g``, zero for the padding channels up to ``kgp``:
    the whole batch's ``gy (n, K, P)`` with its channels along the vectors, one job per image and group."""
    n, kk, length = gy.shape
    k_g = kk // groups
    for job in prange(n * groups):
        b, g = job // groups, job % groups
        dst = out[b, g].reshape(-1)
        _transpose_block(gy[b], g * k_g, k_g, 0, length, kgp, dst)
        for p in range(length):
            dst[p * kgp + k_g:(p + 1) * kgp] = 0


def _grad_weight_chunks(xph, gyt, rowoff, steps, block, chunk, wide, dynamic, out):  # pragma: no cover - compiled
    """``out (groups, K_g, CT)``: ``gW[k, r] = sum_p plane[r][p] gy[p, k]`` with the jobs by patch rows.

    ``xph (n, C * stride)`` filled planes, ``gyt (n, groups, P, kgp)`` from
    :func:`_transpose_all`, ``rowoff (groups, CTp)`` and ``steps`` as in
    :func:`_grad_weight`. Job ``(g, r0)`` sums the ``chunk`` patch rows
    from ``r0`` over every image and position block into a buffer of its
    own, then writes them, transposed, into ``out``: the rows' sums stay in
    cache while the images go by, and no two jobs write one entry, so
    there are no per-thread parts to add up after, and the sums are the
    same whichever thread takes a job: with ``dynamic`` threads, each takes
    the next job as it comes free (see :data:`.direct.DYNAMIC_JOBS`; 0:
    ``prange``'s equal shares).
    """
    groups, ctp = rowoff.shape
    jobs = groups * -(-ctp // chunk)
    counter = np.zeros(1, dtype=np.int64)
    slots = dynamic if dynamic else jobs  # apart from prange's argument, as in _forward
    for slot in prange(slots):
        job = _take(counter) if dynamic else np.int64(slot)
        while job < jobs:
            _grad_weight_chunk(job, xph, gyt, rowoff, steps, block, chunk, wide, out)
            job = _take(counter) if dynamic else jobs


@njit(**_FLAGS)
def _grad_weight_chunk(job, xph, gyt, rowoff, steps, block, chunk, wide, out):  # pragma: no cover - compiled
    """Job ``job`` of :func:`_grad_weight_chunks` (group, chunk of patch rows)."""
    n = xph.shape[0]
    ctp = rowoff.shape[1]
    k_g, ct = out.shape[1], out.shape[2]
    length, kgp = gyt.shape[2], gyt.shape[3]
    mr = WIDE_MR if wide else MR
    nr = (WIDE_NV if wide else NV) * (VECTOR_BYTES // out.itemsize)
    nchunks = -(-ctp // chunk)
    nblocks = -(-length // block)
    ptable = np.arange(block) * kgp
    crow = np.arange(chunk) * kgp
    align = VECTOR_BYTES // out.itemsize
    g = job // nchunks
    r0 = (job % nchunks) * chunk
    r1 = min(ctp, r0 + chunk)
    raw = np.empty(chunk * kgp + align, dtype=out.dtype)
    skip = (-raw.ctypes.data % VECTOR_BYTES) // out.itemsize
    local = raw[skip:skip + chunk * kgp]
    for b in range(n):
        src = xph[b]
        bt = gyt[b, g].reshape(-1)
        for pb in range(nblocks):
            p0 = pb * block
            kc = min(block, length - p0)
            at = steps[p0:p0 + kc]
            first = b == 0 and pb == 0  # the first products are stored, the later ones added
            for rb in range(r0, r1, mr):
                for kb in range(0, kgp, nr):
                    if wide:
                        _mk_wide(src, 0, rowoff[g, rb:rb + mr], at, bt, p0 * kgp + kb, ptable, 0, local, kb,
                                 crow[rb - r0:rb - r0 + mr], kc, not first)
                    else:
                        _mk_steps(src, 0, rowoff[g, rb:rb + mr], at, bt, p0 * kgp + kb, ptable, 0, local, kb,
                                  crow[rb - r0:rb - r0 + mr], kc, not first)
    # out[g, k, r] = local[(r - r0) * kgp + k], the sums transposed block by block
    _transpose_block(local.reshape(chunk, kgp), 0, min(r1, ct) - r0, 0, k_g, ct, out[g].reshape(-1)[r0:])


def _grad_weight_dot(x, gy, rowoff, grow, kgp, length, block, n_threads, size, span, seg_dst, seg_src, seg_len,
                     parts):  # pragma: no cover - compiled
    """``parts (n_threads, groups, CTp * kgp)``: per-thread sums of ``gW^T[r, k] = sum_p row_r[p] gy[k, p]``
    for 1-D layers, as dot products along the ``length`` output positions
    (:func:`make_dot_microkernel`).

    ``gy (n, K * length)``; ``grow (groups, kgp)`` where output channel
    ``k`` of the group starts in ``gy[b]`` (channels past ``K_g`` repeat
    the group's last). With ``span`` (stride 1, :func:`_windowed`):
    ``x (n, C * size)`` the unpadded input and ``rowoff (groups, CTp)``
    where patch row ``r`` starts in a job's window (rows past ``C_g * T``
    repeat row 0); each job copies the window of its block, ``span``
    padded positions from ``p0``, zeros outside the input (:func:`_window`),
    into a buffer of its thread. Without: ``x (n, C * stride)`` the filled
    planes and ``rowoff`` where row ``r`` starts in them (see
    :func:`_job_rows`). Jobs are (image,
    group, ``block`` positions), dealt to the threads in turn; each adds
    its tiles into the thread's own part.
    """
    n = x.shape[0]
    groups, ctp = rowoff.shape
    c_g = x.shape[1] // size // groups
    nblocks = -(-length // block)
    jobs = n * groups * nblocks
    crow = np.arange(ctp) * kgp
    for tid in prange(n_threads):
        local = np.empty(max(1, c_g * span), dtype=parts.dtype)
        for job in range(tid, jobs, n_threads):
            b, g, p0, kc, src, start = _job_rows(x, job, groups, nblocks, block, length, c_g, size, span, seg_dst,
                                                 seg_src, seg_len, local)
            for rb in range(ctp // DOT_MR):
                rows = rowoff[g, rb * DOT_MR:(rb + 1) * DOT_MR]
                for kb in range(0, kgp, DOT_NR):
                    _dk(src, start, rows, gy[b], p0, grow[g, kb:kb + DOT_NR], parts[tid, g], kb,
                        crow[rb * DOT_MR:(rb + 1) * DOT_MR], kc)


def _forward_channels(x, wpack, steps, at, count, kgp, k_g, n_threads, wide, y):  # pragma: no cover - compiled
    """``y (n, K, P)``: the forward with the output channels along the vectors and the input broadcast.

    ``x`` the planes of the whole batch, flat; ``wpack (groups, S * kgp)``
    the weights, step ``s = c * T + t`` by output channel (zeros past
    ``K_g``); ``steps (groups, S)`` where step ``s`` of each group reads,
    relative to a position; ``at`` where output position ``i`` of the
    batch (image ``i // P``, position ``i % P``) lies in ``x``, ``count``
    of them, padded to whole blocks by repeats of the first. The tile is
    ``CHANNELS_MR`` positions by one vector of channels, or with ``wide``
    ``WIDE_MR`` positions by ``WIDE_NV`` vectors (:data:`CHANNELS_WIDE_MIN_COVER`).
    Jobs are (group, block of positions, the tile's channels), dealt to the
    threads in turn: a block is one tile, or with ``wide``
    :data:`CHANNELS_WIDE_POSITIONS` positions whose tiles take the steps
    :data:`CHANNELS_WIDE_STEPS` at a time, each chunk of the weights
    serving all of them. Each block is computed into a buffer of its thread,
    then written to ``y`` one channel at a time, position runs within an
    image contiguous.
    """
    n, _, p_img = y.shape
    groups, s = steps.shape
    width = VECTOR_BYTES // y.itemsize
    mr = WIDE_MR if wide else CHANNELS_MR
    nr = WIDE_NV * width if wide else width
    pb = CHANNELS_WIDE_POSITIONS if wide else CHANNELS_MR
    sb = CHANNELS_WIDE_STEPS
    blocks = -(-count // pb)
    kbs = kgp // nr
    jobs = groups * blocks * kbs
    brow = np.arange(s) * kgp
    crow = np.arange(mr) * nr
    for tid in prange(n_threads):
        local = np.empty(pb * nr, dtype=y.dtype)
        for job in range(tid, jobs, n_threads):
            g = job // (blocks * kbs)
            i0 = (job // kbs) % blocks * pb
            kb = (job % kbs) * nr
            used = min(pb, count - i0)
            srow = steps[g]
            if wide:
                for s0 in range(0, s, sb):
                    kc = min(sb, s - s0)
                    for t in range(0, used, mr):
                        _mk_wide(x, 0, at[i0 + t:i0 + t + mr], srow[s0:s0 + kc], wpack[g], kb, brow, s0, local,
                                 t * nr, crow, kc, s0 > 0)
            else:  # one tile, all the steps: the batch-64 LeNet C3's jobs are short (0.24 vs 0.28 ms for the loops)
                _mk_channels(x, 0, at[i0:i0 + mr], srow, wpack[g], kb, brow, 0, local, 0, crow, s, False)
            i = 0
            while i < used:
                b, p = (i0 + i) // p_img, (i0 + i) % p_img
                run = min(used - i, p_img - p)
                for kk in range(min(nr, k_g - kb)):
                    dst = y[b, g * k_g + kb + kk, p:p + run]
                    for j in range(run):
                        dst[j] = local[(i + j) * nr + kk]
                i += run


def _variants(fn):
    from .direct import _compile

    return _compile(fn, False), _compile(fn, True)


_FILL = _variants(_fill_planes)
_FILL_INTERLEAVED = _variants(_fill_interleaved)
_DEINTERLEAVE = _variants(_deinterleave)
_FORWARD = _variants(_forward)
_FORWARD_GAPPED = _variants(_forward_gapped)
_EMBED = _variants(_embed_rows)
_EMBED_INTERLEAVED = _variants(_embed_interleaved)
_GRAD_INPUT = _variants(_grad_input)
_GRAD_WEIGHT = _variants(_grad_weight)
_GRAD_WEIGHT_CHUNKS = _variants(_grad_weight_chunks)
_TRANSPOSE_ALL = _variants(_transpose_all)
_GRAD_WEIGHT_DOT = _variants(_grad_weight_dot)
_FORWARD_CHANNELS = _variants(_forward_channels)


def _parallel(work: int) -> int:
    """Whether ``work`` multiply-adds run on all threads (see :data:`.direct.KERNEL_PARALLEL_MIN_WORK`)."""
    return int(work >= KERNEL_PARALLEL_MIN_WORK)


def _round_up(a: int, b: int) -> int:
    return -(-a // b) * b


def plane_stride(plan, x_shape, pads) -> int:
    """Elements per filled plane in :func:`forward`'s work array (the plane, then a block of slack)."""
    return fill_arrays(plan, tuple(x_shape[2:]), tuple(pads))[4] + BLOCK_POSITIONS


def forward_bytes(c, k, groups, plan, x_shape, pads, dtype) -> int:
    """Bytes of :func:`forward`'s work array per image: the filled planes, and the output where the images are
    interleaved (:func:`interleaves`); none where it reads windows of the input of a layer of more than one
    dimension (:data:`WINDOWS_ND`), whose jobs' buffers (a block's window of the group's channels each) are their
    own (and with 256-bit vectors, no forward has the channels along the vectors, :data:`CHANNELS`)."""
    windowed = not _windowed(plan) and _forward_windowed(plan, c, c // groups, dtype)
    if windowed and not interleaves(plan, x_shape[0], dtype):
        return 0
    return (c * plane_stride(plan, x_shape, pads) + k * math.prod(plan.out)) * np.dtype(dtype).itemsize


def lattice_stride(plan, dtype) -> int:
    """Elements per output channel and image of :func:`grad_input`'s work array (``gy`` on the lattice), at most."""
    return _round_up(plan.length, NV * lanes(dtype)) + NV * lanes(dtype)


def _grad_weight_tile(k_g: int, dtype):
    """``(rows, vectors, wide)`` of the weight gradient's tile: the wide one where ``K_g`` fills its rows."""
    if k_g % (WIDE_NV * lanes(dtype)) == 0:
        return WIDE_MR, WIDE_NV, True
    return MR, NV, False


def _grad_weight_layout(c_g: int, k_g: int, plan, dtype):
    """``(mr, wide, kgp, ctp, chunked)`` of :func:`grad_weight`: the tile's rows and whether it is the wide one
    (:func:`_grad_weight_tile`), ``K_g`` and the patch rows padded to whole tiles, and whether the jobs go by
    patch rows (:func:`_grad_weight_chunks`, see :data:`CHUNKS_MIN_BYTES`)."""
    mr, nv, wide = _grad_weight_tile(k_g, dtype)
    kgp = _round_up(k_g, nv * lanes(dtype))
    ctp = _round_up(c_g * plan.n_taps, mr)
    chunked = not _windowed(plan) and ctp * kgp * np.dtype(dtype).itemsize > CHUNKS_MIN_BYTES
    return mr, wide, kgp, ctp, chunked


def grad_weight_bytes(c, k, groups, plan, x_shape, pads, dtype) -> int:
    """Bytes of :func:`grad_weight`'s work arrays per image: the filled planes, and ``gy`` with its channels
    along the vectors where the jobs go by patch rows."""
    size = fill_arrays(plan, tuple(x_shape[2:]), tuple(pads))[4]
    kgp, chunked = _grad_weight_layout(c // groups, k // groups, plan, dtype)[2::2]
    return (c * size + chunked * groups * math.prod(plan.out) * kgp) * np.dtype(dtype).itemsize


def _planes(x, plan, pads, stride, out, par):
    """``out (n, C, stride)``: the planes of ``x`` padded and phase-split (:func:`_fill_planes`)."""
    n, c = x.shape[:2]
    seg_dst, seg_src, seg_len, step, size, _ = fill_arrays(plan, tuple(x.shape[2:]), tuple(pads))
    _FILL[par](np.ascontiguousarray(x).reshape(n, c, -1), seg_dst, seg_src, seg_len, step, size, out)
    return out


@lru_cache(maxsize=256)
def _row_offsets(groups, c_g, plan, stride, rows_padded, spread=1):
    """``(groups, rows_padded)``: where patch row ``r = c * T + t`` of each group starts among the planes of one
    image (``stride`` apart; their positions ``spread`` apart); rows past ``c_g * T`` repeat the group's first.
    Cached, so the caller must not write to it; it is left writable (a read-only array is another type to the
    kernels, which would then compile twice where ``np.repeat`` copies it): on LeNet C3 at batch 64, it and
    :func:`_interleaved_positions` took 0.03 of 0.3 ms."""
    n_taps = plan.n_taps
    bases = run_arrays(plan, True)[0] * spread
    r = np.arange(rows_padded)
    r = np.where(r < c_g * n_taps, r, 0)
    off = (np.arange(groups)[:, None] * c_g + r[None, :] // n_taps) * stride + bases[r % n_taps][None, :]
    return np.ascontiguousarray(off, dtype=np.int64)


def _pack_rows(mat, out):  # pragma: no cover - compiled
    """``out (groups, R_padded // mr, S, mr)``: ``mat (groups, R, S)`` in blocks of ``mr`` rows, each stored
    step by step, zero rows past ``R``. One job per group and block."""
    groups, r, s = mat.shape
    rbs, mr = out.shape[1], out.shape[3]
    for job in prange(groups * rbs):
        g = job // rbs
        rb = job % rbs
        block = out[g, rb]
        for i in range(mr):
            row = rb * mr + i
            if row < r:
                src = mat[g, row]
                for t in range(s):
                    block[t, i] = src[t]
            else:
                for t in range(s):
                    block[t, i] = 0


def _pack_columns(mat, out):  # pragma: no cover - compiled
    """``out (groups, R_padded // mr, S, mr)``: the blocks of :func:`_pack_rows` of ``mat``'s transpose, from
    ``mat (groups, S, R)`` as it lies (each step's ``mr`` entries are contiguous there)."""
    groups, s, r = mat.shape
    rbs, mr = out.shape[1], out.shape[3]
    for job in prange(groups * rbs):
        g = job // rbs
        rb = job % rbs
        block = out[g, rb]
        count = min(mr, r - rb * mr)
        for t in range(s):
            src = mat[g, t, rb * mr:rb * mr + count]
            dst = block[t]
            for i in range(count):
                dst[i] = src[i]
            for i in range(count, mr):
                dst[i] = 0


def _sum_transposed(parts, ct, k_g, out):  # pragma: no cover - compiled
    """``out[g, k, r] = sum_t parts[t, g, r, k]`` for ``r < ct``, ``k < k_g``: the weight gradient's per-thread
    parts ``(threads, groups, CTp, kgp)`` summed and transposed in one pass. One job per 16 rows ``r``: their
    parts' rows, read whole and in order, are summed into a local block, whose columns then go out as runs of 16
    entries of ``out``'s rows (a cache line each; written one entry at a time, 16 rows 8 KiB apart share a
    cache set). Two threads, a one-off script: DCGAN's 2048 x 256 0.17-0.21 ms, ResNet 3x3/2's 1152 x 256
    0.10-0.12, against 0.48-0.67 and 0.32-0.36 with jobs by 16 columns ``k``, each reading 64 bytes from every
    row of the parts, and 0.9 ms for DCGAN's through NumPy's sum and transposing copy."""
    threads, groups = parts.shape[:2]
    rbs = -(-ct // 16)
    for job in prange(groups * rbs):
        g = job // rbs
        r0 = (job % rbs) * 16
        r1 = min(ct, r0 + 16)
        block = np.empty((16, k_g), dtype=out.dtype)
        for r in range(r0, r1):
            row = block[r - r0]
            src = parts[0, g, r]
            for k in range(k_g):
                row[k] = src[k]
            for t in range(1, threads):
                src = parts[t, g, r]
                for k in range(k_g):
                    row[k] += src[k]
        for k in range(k_g):
            dst = out[g, k, r0:r1]
            for i in range(r1 - r0):
                dst[i] = block[i, k]


_PACK = _variants(_pack_rows)
_PACK_COLUMNS = _variants(_pack_columns)
_SUM_TRANSPOSED = _variants(_sum_transposed)


def _blocks_of_rows(mat, mr):
    """``mat (groups, R, S)`` as ``(groups, ceil(R / mr), S, mr)`` flattened per group: blocks of ``mr``
    rows (the tile's, :data:`FORWARD_MR` or :data:`MR`), each stored step by step (what the microkernel
    broadcasts), zero rows past ``R``. Compiled and threaded: the weights of a large layer (DCGAN's
    256 x 2048) took 0.7 ms in three NumPy passes."""
    groups, r, s = mat.shape
    out = np.empty((groups, -(-r // mr), s, mr), dtype=mat.dtype)
    _PACK[int(out.size >= COPY_PARALLEL_MIN)](np.ascontiguousarray(mat), out)
    return out.reshape(groups, -1)


def _blocks_of_columns(mat, mr):
    """:func:`_blocks_of_rows` of ``mat (groups, S, R)`` transposed, without transposing it first (NumPy's
    transposing copy of DCGAN's 256 x 2048 weights took 1.5 ms: rows 8 KiB apart)."""
    groups, s, r = mat.shape
    out = np.empty((groups, -(-r // mr), s, mr), dtype=mat.dtype)
    _PACK_COLUMNS[int(out.size >= COPY_PARALLEL_MIN)](np.ascontiguousarray(mat), out)
    return out.reshape(groups, -1)


def _tile_positions(length: int, dtype) -> int:
    """Lattice positions the forward's tiles cover per image: each block's rounded up to the tile's width."""
    full, rest = divmod(length, BLOCK_POSITIONS)
    return full * BLOCK_POSITIONS + _round_up(rest, FORWARD_NV * lanes(dtype))


def grad_input_spread(plan, n: int, dtype, jobs: int) -> int:
    """How many images :func:`grad_input` interleaves per lattice, position by position, as :func:`forward` does
    (see :data:`INTERLEAVE_MIN_OVERHANG`), given its ``jobs`` per lattice (groups times blocks of channels): the
    whole batch where at least :data:`INTERLEAVE_MIN_JOBS_PER_THREAD` jobs per thread remain; else runs of
    :data:`INTERLEAVE_IMAGES` (which divide the batch), where their jobs, of equal work, share out evenly over
    the threads (LeNet C3: one job per lattice, so batches of 32, 64, 96, ... on two threads); else none (1)."""
    from numba import get_num_threads

    threads = get_num_threads()
    covered = _grad_input_covered(plan, 1, dtype)
    if jobs >= INTERLEAVE_MIN_JOBS_PER_THREAD * threads:
        return n if _overhangs(covered, _grad_input_covered(plan, n, dtype), n) else 1
    m = INTERLEAVE_IMAGES
    if n % m == 0 and jobs * (n // m) % threads == 0 and _overhangs(covered, _grad_input_covered(plan, m, dtype), m):
        return m
    return 1


@lru_cache(maxsize=256)
def _grad_input_tiles(plan, spread: int, nr: int) -> np.ndarray:
    """Where :func:`grad_input`'s tiles, ``nr`` positions each, start on the lattice of ``spread`` images
    interleaved, none overlapping (the tiles add into the gradient): ``nr`` apart from the first position, or,
    where that takes fewer tiles and each starts at a whole vector, as :func:`_tile_starts` places them, none at
    a dropped position, so that dropped runs at least a tile wide are skipped (LeNet C3's 4 x 16 positions after
    every 10 x 16 with 16 images interleaved, DCGAN's 16 after 128). Tiles at any position, where they were
    fewer, made the ResNet 7x7/2 stem's input gradient 10-20% slower and the speech layer's 8% (one process,
    alternating; a one-off script): their loads and stores straddle cache lines."""
    _, _, _, rows, width = run_arrays(plan, True)
    starts = _tile_starts(rows * spread, width * spread, 0, plan.length * spread, nr)
    aligned = np.arange(0, plan.length * spread, nr)
    if starts.shape[0] >= aligned.shape[0] or (starts % (nr // NV)).any():
        starts = aligned
    starts.flags.writeable = False
    return starts


def _grad_input_covered(plan, spread: int, dtype) -> int:
    """Lattice positions per image that :func:`grad_input`'s tiles cover with ``spread`` images interleaved."""
    nr = NV * lanes(dtype)
    return _grad_input_tiles(plan, spread, nr).shape[0] * nr // spread


def interleaves(plan, n: int, dtype) -> bool:
    """Whether :func:`forward` interleaves the images' positions (see :data:`INTERLEAVE_MIN_OVERHANG`)."""
    return _overhangs(_tile_positions(plan.length, dtype), _interleaved_positions(plan, n, dtype), n)


@lru_cache(maxsize=256)
def _interleaved_positions(plan, n: int, dtype) -> int:
    """Positions per image that the forward's tiles cover with ``n`` images interleaved: the real ones, and the
    dropped ones between two output rows where, ``n`` times as many, they are fewer than a tile's width (the
    tiles skip the others, see :func:`_tile_starts`)."""
    _, _, _, rows, width = run_arrays(plan, True)
    gaps = np.diff(rows) - width
    return math.prod(plan.out) + int(gaps[gaps * n < FORWARD_NV * lanes(dtype)].sum())


def _forward_span(plan, block: int, dtype) -> int:
    """Positions of the window that a block of ``block`` lattice positions of :func:`forward` reads in each phase
    of the padded planes: the block, the kernel's reach past it there, and the overhang of a tile that starts in
    its last vector."""
    return block + int(_tap_phases(plan)[2].max()) + FORWARD_NV * lanes(dtype)


@lru_cache(maxsize=256)
def _window_rows(plan, groups: int, c_g: int, span: int, rows_padded: int):
    """``(rowoff (groups, rows_padded), phases)`` of :func:`forward` on windows (:func:`_window`): where patch row
    ``r = c * T + t`` starts in a job's window of a group's ``c_g`` channels, each channel's phases that the taps
    read ``span`` positions apart, in the order of their starts ``phases`` in the phase-split plane (stride 1:
    the one phase, at 0); the same for every group. Rows past ``c_g * T`` repeat the first. Cached
    (read-only)."""
    n_taps = plan.n_taps
    phases, which, reach = _tap_phases(plan)
    r = np.arange(rows_padded)
    r = np.where(r < c_g * n_taps, r, 0)
    t = r % n_taps
    row = (r // n_taps * phases.shape[0] + which[t]) * span + reach[t]
    rowoff = np.ascontiguousarray(np.broadcast_to(row, (groups, rows_padded)), np.int64)
    rowoff.flags.writeable = False
    return rowoff, phases


@lru_cache(maxsize=256)
def _tap_phases(plan):
    """``(phases, which, reach)``: where the phases that the taps read start in the phase-split plane, in order
    (a 1x1 layer of stride 2 reads one of four), and per tap its phase among them and its offset within it.
    Cached (read-only)."""
    phase, reach = np.divmod(run_arrays(plan, True)[0], plan.q_size)
    used, which = np.unique(phase, return_inverse=True)
    phases = np.ascontiguousarray(used * plan.q_size, np.int64)
    for a in (phases, which, reach):
        a.flags.writeable = False
    return phases, which, reach


def _forward_windowed(plan, c: int, c_g: int, dtype) -> bool:
    """Whether :func:`forward`, where it does not interleave the images, reads windows of the input
    (:func:`_window`) instead of filled planes: 1-D layers of stride 1 (:func:`_windowed`), and with
    :data:`WINDOWS_ND` the other layers with ``c`` input channels (``c_g`` a group) whose padded planes, per
    image, exceed :data:`WINDOWS_MIN_BYTES` and whose windows span at most :data:`WINDOW_MAX_SPREAD` times their
    block (:func:`_window_block`)."""
    if _windowed(plan):
        return True
    if not (WINDOWS_ND and c * plan.phases * plan.q_size * np.dtype(dtype).itemsize > WINDOWS_MIN_BYTES):
        return False
    block = _window_block(plan, c_g, dtype)
    return _forward_span(plan, block, dtype) <= WINDOW_MAX_SPREAD * block


def _window_block(plan, c_g: int, dtype) -> int:
    """Lattice positions per job of :func:`forward` on windows of layers of more than one dimension:
    :data:`WINDOW_BLOCK`, or the lattice's, rounded up to whole tiles, where it is shorter; fewer, in whole tiles,
    where the window of ``c_g`` channels would exceed :data:`WINDOW_MAX_BYTES` (at least a tile)."""
    tile = FORWARD_NV * lanes(dtype)
    block = min(WINDOW_BLOCK, _round_up(plan.length, tile))
    per_position = c_g * _tap_phases(plan)[0].shape[0] * np.dtype(dtype).itemsize
    fits = (WINDOW_MAX_BYTES // per_position - (_forward_span(plan, 0, dtype))) // tile * tile
    return max(tile, min(block, fits))


def _windowed(plan) -> bool:
    """Whether :func:`forward` and :func:`grad_weight` read the input where it lies, each job copying the
    window it needs (:func:`_window`), instead of a padded copy of the whole input: 1-D layers of stride 1,
    whose lattice is the output itself."""
    return len(plan.out) == 1 and plan.unit_stride


def _overhangs(covered: int, interleaved: int, n: int) -> bool:
    """Whether the tiles, covering ``covered`` positions of an image alone and ``interleaved`` per image with
    the ``n`` images interleaved, cover enough more alone for the images to be interleaved."""
    return n > 1 and covered > INTERLEAVE_MIN_OVERHANG * interleaved


def forward(x, w, groups, plan, pads, y, scratch):
    """``y (n, K, *out)`` = the valid cross-correlation of ``x`` zero-padded by ``pads`` with ``w``.

    ``scratch(shape)`` gives a work array for the filled planes of ``n``
    images (the caller's reusable workspace); the batch is chunked by the
    caller. On small planes (:func:`interleaves`) the images' positions are
    interleaved, the batch becoming one long lattice.
    """
    n, c = x.shape[:2]
    k = w.shape[0]
    c_g, k_g = c // groups, k // groups
    ct = c_g * plan.n_taps
    par = _parallel(n * k * ct * plan.length)
    interleaved = interleaves(plan, n, x.dtype)
    if CHANNELS and interleaved and channels_fit(k_g, x.dtype):
        return forward_channels(x, w, groups, plan, pads, y, scratch, par, wide=False)
    if not interleaved and channels_wide(plan, k_g, x.dtype):
        return forward_channels(x, w, groups, plan, pads, y, scratch, par, wide=True)
    wpack = _blocks_of_rows(w.reshape(groups, k_g, ct), FORWARD_MR)  # (g, kbs * CT * FORWARD_MR)
    _, _, _, rows, width = run_arrays(plan, True)
    if interleaved:
        seg_dst, seg_src, seg_len, step, size, _ = fill_arrays(plan, tuple(x.shape[2:]), tuple(pads))
        cstride = size * n + BLOCK_POSITIONS  # a block reads up to BLOCK_POSITIONS past the lattice
        count = y[0, 0].size
        work = scratch((c * cstride + k * count * n,))
        xt, out = work[:c * cstride].reshape(c, cstride), work[c * cstride:].reshape(1, k, count * n)
        _FILL_INTERLEAVED[par](np.ascontiguousarray(x).reshape(n, c, -1), seg_dst, seg_src, seg_len, step, size, xt)
        rowoff = _row_offsets(groups, c_g, plan, cstride, ct, spread=n)
        _FORWARD[par](xt.reshape(1, -1), wpack, rowoff, rows * n, width * n, plan.length * n, BLOCK_POSITIONS,
                      BLOCK_ROWS, 1, 0, 0, False, *_NO_WINDOW, dynamic_threads(par), out)
        _DEINTERLEAVE[par](out[0], y.reshape(n, k, count))
        return y
    if _forward_windowed(plan, c, c_g, x.dtype):
        block = BLOCK_POSITIONS if _windowed(plan) else _window_block(plan, c_g, x.dtype)
        span = _forward_span(plan, block, x.dtype)
        rowoff, phases = _window_rows(plan, groups, c_g, span, ct)
        # the segments in the plain layout: each job reads its window's columns where they lie, ``step`` apart
        segments = fill_arrays(plan, tuple(x.shape[2:]), tuple(pads), lanes=True)[:4]
        _FORWARD[par](np.ascontiguousarray(x).reshape(n, -1), wpack, rowoff, rows, width,
                      plan.length, block, BLOCK_ROWS, math.prod(x.shape[2:]), span, pads[0][0],
                      WINDOWS_IN_PLACE and _windowed(plan), *segments, phases, dynamic_threads(par),
                      y.reshape(n, k, -1))
        return y
    stride = plane_stride(plan, x.shape, pads)  # a block reads up to BLOCK_POSITIONS past the lattice
    xph = _planes(x, plan, pads, stride, scratch((n, c, stride)), par)
    rowoff = _row_offsets(groups, c_g, plan, stride, ct)
    if _gapped(plan, width, k_g, x.dtype):
        _FORWARD_GAPPED[par](xph.reshape(n, -1), wpack, rowoff, rows, width, BLOCK_POSITIONS, BLOCK_ROWS,
                             dynamic_threads(par), y.reshape(n, k, -1))
        return y
    _FORWARD[par](xph.reshape(n, -1), wpack, rowoff, rows, width, plan.length, BLOCK_POSITIONS, BLOCK_ROWS, 1, 0, 0,
                  False, *_NO_WINDOW, dynamic_threads(par), y.reshape(n, k, -1))
    return y


def _gapped(plan, width: int, k_g: int, dtype) -> bool:
    """Whether :func:`forward` on filled planes tiles the real output positions (:func:`_forward_gapped`), not
    the lattice's: with :data:`GAPPED`, output rows of a whole number of vectors with dropped positions between
    them, and ``K_g`` a multiple of :data:`FORWARD_MR`."""
    return GAPPED and width % lanes(dtype) == 0 and plan.length > math.prod(plan.out) and k_g % FORWARD_MR == 0


def channels_wide(plan, k_g: int, dtype) -> bool:
    """Whether the forward runs with the channels along the vectors on the wide tile
    (:data:`CHANNELS_WIDE_MIN_COVER`): ``K_g`` a multiple of its ``WIDE_NV`` vectors, and the positions-along-vectors
    tiles covering at least that many times the outputs."""
    return (CHANNELS and k_g % (WIDE_NV * lanes(dtype)) == 0
            and _tile_positions(plan.length, dtype) >= CHANNELS_WIDE_MIN_COVER * math.prod(plan.out))


def channels_fit(k_g: int, dtype) -> bool:
    """Whether ``K_g`` output channels fill at most :data:`CHANNELS_MAX_VECTORS` vectors, up to a quarter of them
    padding (:func:`forward_channels`)."""
    padded = _round_up(k_g, lanes(dtype))
    return padded <= CHANNELS_MAX_VECTORS * lanes(dtype) and 4 * padded <= 5 * k_g


@lru_cache(maxsize=256)
def _channel_tables(plan, groups: int, c_g: int, stride: int, n: int, block: int):
    """``(steps, at)`` of :func:`_forward_channels` for planes ``stride`` apart in the layout of
    :func:`channel_layout`, ``at`` padded to whole blocks of ``block`` positions (cached, read-only)."""
    layout = channel_layout(plan)
    bases = run_arrays(layout, True)[0]
    s = np.arange(c_g * plan.n_taps)
    steps = (np.arange(groups)[:, None] * c_g + s[None, :] // plan.n_taps) * stride + bases[s % plan.n_taps][None, :]
    # output o's window starts at o * s in the layout's padded plane (at stride 1, its lattice position)
    positions = sum(np.ix_(*(np.arange(o, dtype=np.int64) * st * q
                             for o, st, q in zip(plan.out, plan.stride, layout.q_strides)))).ravel()
    count = n * positions.size
    i = np.arange(_round_up(count, block))
    i = np.where(i < count, i, 0)
    at = (i // positions.size) * (groups * c_g * stride) + positions[i % positions.size]
    return np.ascontiguousarray(steps, dtype=np.int64), np.ascontiguousarray(at, dtype=np.int64)


@lru_cache(maxsize=256)
def channel_layout(plan):
    """The plan whose filled planes :func:`_forward_channels` reads: ``plan`` itself at stride 1; with a stride,
    the stride-1 plan over the same padded input, whose planes are the input padded but not split into phases.
    The channels-along-vectors tiles broadcast the input one element at a time, so the phases buy them nothing,
    and splitting them made the fill twice as slow: ResNet 3x3/2's planes, two threads, 0.23-0.45 against
    0.17-0.23 ms (one-off script, alternating). A strided input without padding is then read as it lies."""
    if plan.unit_stride:
        return plan
    dense = tuple(f - d * (k - 1) for f, d, k in zip(plan.full, plan.dilation, plan.kernel))
    return make_plan(plan.full, plan.kernel, (1,) * len(plan.full), plan.dilation, dense)


def forward_channels(x, w, groups, plan, pads, y, scratch, par, wide):
    """:func:`forward` with the output channels along the vectors (:func:`_forward_channels`), for small planes.

    The interleaved forward spends a third of LeNet C3's time copying
    the planes into the interleaved layout and the output out of it. Here
    each tile is ``CHANNELS_MR`` output positions (of any images) by a
    vector of output channels, the input broadcast from its planes where
    they lie (unpadded inputs of stride 1 are read as given, others from
    their filled planes), and only the output is moved, once. Zen 4, one
    process, alternating (a one-off script), LeNet C3 at batch 256:
    0.97-1.22 ms against 1.25-1.62 interleaved (one round of six at 1.59
    against 1.84; the machine was noisy), at batch 64 0.24-0.33 against
    0.36-0.41 in a quieter run. On larger planes whose lattices drop many
    positions, or whose outputs the positions-along-vectors tiles overhang
    (:func:`channels_wide`), with ``wide`` a tile of ``WIDE_MR`` positions by
    ``WIDE_NV`` vectors of channels, which broadcasts each input element
    for four vectors: ResNet 3x3/2, the 3-D C64 layer (see
    :data:`CHANNELS_WIDE_MIN_COVER`). :func:`forward` chooses.
    """
    n, c = x.shape[:2]
    k = w.shape[0]
    c_g, k_g = c // groups, k // groups
    ct = c_g * plan.n_taps
    kgp = _round_up(k_g, (WIDE_NV if wide else 1) * lanes(x.dtype))
    wpack = (np.empty if kgp == k_g else np.zeros)((groups, ct, kgp), dtype=x.dtype)
    wpack[:, :, :k_g] = w.reshape(groups, k_g, ct).transpose(0, 2, 1)
    layout = channel_layout(plan)
    size = fill_arrays(layout, tuple(x.shape[2:]), tuple(pads))[4]
    xph = np.ascontiguousarray(x) if _as_given(layout, x.shape, pads) else \
        _planes(x, layout, pads, size, scratch((n, c, size)), par)
    steps, at = _channel_tables(plan, groups, c_g, size, n, CHANNELS_WIDE_POSITIONS if wide else CHANNELS_MR)
    n_threads = blas._threads() if par else 1
    _FORWARD_CHANNELS[par](xph.reshape(-1), wpack.reshape(groups, -1), steps, at, n * math.prod(plan.out), kgp, k_g,
                           n_threads, wide, y.reshape(n, k, -1))
    return y


def _as_given(plan, x_shape, pads) -> bool:
    """Whether the filled planes of an input of shape ``x_shape`` are its planes as they lie: no padding, no
    phases (stride 1), so that the kernels can read the input instead of a filled copy."""
    return _planes_as_given(plan, tuple(x_shape[2:]), tuple(tuple(p) for p in pads))


@lru_cache(maxsize=256)
def _planes_as_given(plan, shape: tuple, pads: tuple) -> bool:
    """:func:`_as_given`, once per geometry (10 us a call, 4% of LeNet C3's forward at batch 64)."""
    seg_dst, seg_src, seg_len, step, size, _ = fill_arrays(plan, shape, pads)
    return (step == 1 and size == math.prod(shape) and np.array_equal(seg_dst, seg_src)
            and int(seg_len.sum()) == size)


def grad_input(gy, w, groups, plan, in_shape, pads, gx, scratch):
    """``gx (n, C, *S)``, the gradient of :func:`forward` with respect to ``x``. ``w`` must be finite."""
    n, k = gy.shape[:2]
    c = in_shape[1]
    c_g, k_g = c // groups, k // groups
    n_taps = plan.n_taps
    ct = c_g * n_taps
    nr = NV * lanes(gy.dtype)
    par = _parallel(n * k * ct * plan.length)
    bases, _, _, rows, width = run_arrays(plan, True)
    chans = MR // math.gcd(n_taps, MR)
    jobs = groups * -(-c_g // chans)
    spread = grad_input_spread(plan, n, gy.dtype, jobs)  # images interleaved per lattice
    starts = _grad_input_tiles(plan, spread, nr)
    lstride = _round_up(plan.length * spread, nr) + nr  # a skipping tile, at a whole vector, may end past it
    gyl = scratch((n // spread, k, lstride))
    if spread > 1:
        _EMBED_INTERLEAVED[par](np.ascontiguousarray(gy).reshape(n, k, -1), rows, width, gyl)
    else:
        _EMBED[par](np.ascontiguousarray(gy).reshape(n, k, -1), rows, width, gyl)
    rows_padded = _round_up(ct, MR)
    wtpack = _blocks_of_columns(w.reshape(groups, k_g, ct), MR)  # w^T (g, CT, K_g) in blocks of MR rows
    seg_dst, seg_src, seg_len, step, size, complete = fill_arrays(plan, tuple(in_shape[2:]), tuple(pads))
    stride = size * spread + nr
    r = np.arange(rows_padded)
    crow = np.ascontiguousarray((r // n_taps) * stride + bases[r % n_taps] * spread, dtype=np.int64)
    ktable = np.arange(k, dtype=np.int64) * lstride
    _GRAD_INPUT[par](gyl.reshape(n // spread, -1), ktable, wtpack, crow, starts, max(1, GRAD_INPUT_POSITIONS // nr),
                     chans, n_taps, seg_dst, seg_src, seg_len, step, size, stride, complete, spread,
                     dynamic_threads(par), gx.reshape(n, c, -1))
    return gx


@lru_cache(maxsize=256)
def _output_steps(plan):
    """``(P,)``: where each output position lies in the lattice, in the order of ``gy``'s flattened positions
    (the identity where the lattice drops none). Cached (read-only)."""
    _, _, _, rows, width = run_arrays(plan, True)
    return np.ascontiguousarray((rows[:, None] + np.arange(width)).ravel())


def _even_blocks(length: int, most: int) -> int:
    """The size of the fewest blocks of at most ``most`` positions, all but the last equal, that cover ``length``,
    as even as can be: the weight gradient deals its jobs to the threads in turn, so that with 838 positions
    (DeepBench's C128) in blocks of 512 and 326, one thread got all the long blocks (23.3 vs 19.1 ms)."""
    return -(-length // -(-length // most))


def _chunk_rows(ctp: int, mr: int, threads: int, row_bytes: int) -> int:
    """Patch rows per job of :func:`_grad_weight_chunks`, a multiple of the tile's rows: at most about CHUNK_ROWS,
    and whose sums, ``row_bytes`` a row, take at most about :data:`CHUNK_MAX_BYTES`, in a number of jobs that is
    a multiple of ``threads``."""
    most = max(1, min(CHUNK_ROWS, CHUNK_MAX_BYTES // row_bytes))
    jobs = threads * -(-ctp // (threads * most))
    return _round_up(-(-ctp // jobs), mr)


def grad_weight(gy, x, groups, plan, pads, scratch):
    """``(groups, K_g, C_g * T)``: the gradient of :func:`forward` with respect to ``w``, summed over the
    batch, inf and NaN in ``x`` and ``gy`` spreading as in the reference. The work arrays are ``scratch``'s
    (:func:`grad_weight_bytes` per image)."""
    if DOT and len(plan.out) == 1:
        return grad_weight_rows(gy, x, groups, plan, pads, scratch)
    n, c = x.shape[:2]
    k = gy.shape[1]
    c_g, k_g = c // groups, k // groups
    ct = c_g * plan.n_taps
    mr, wide, kgp, ctp, chunked = _grad_weight_layout(c_g, k_g, plan, x.dtype)
    par = _parallel(n * k * ct * plan.length)
    positions = math.prod(plan.out)
    block = _even_blocks(positions, GRAD_WEIGHT_POSITIONS)
    gy = np.ascontiguousarray(gy).reshape(n, k, -1)
    n_threads = blas._threads() if par else 1
    gw = np.empty((groups, k_g, ct), dtype=x.dtype)
    if chunked:  # the planes, then gy laid out for the jobs, in one work array
        stride = fill_arrays(plan, tuple(x.shape[2:]), tuple(pads))[4]
        at = _round_up(n * c * stride, VECTOR_BYTES // x.itemsize)
        work = scratch((at + n * groups * positions * kgp,))
        xph = _planes(x, plan, pads, stride, work[:n * c * stride].reshape(n, c, stride), par).reshape(n, -1)
        gyt = work[at:].reshape(n, groups, positions, kgp)
        _TRANSPOSE_ALL[par](gy, groups, kgp, gyt)
        _GRAD_WEIGHT_CHUNKS[par](xph, gyt, _row_offsets(groups, c_g, plan, stride, ctp), _output_steps(plan), block,
                                 _chunk_rows(ctp, mr, n_threads, kgp * x.itemsize), wide, dynamic_threads(par), gw)
        return gw
    segments = _NO_SEGMENTS
    if _windowed(plan):
        span = block + int(run_arrays(plan, True)[0].max())
        xph = np.ascontiguousarray(x).reshape(n, -1)
        rowoff = np.repeat(_row_offsets(1, c_g, plan, span, ctp), groups, axis=0)
        segments = fill_arrays(plan, tuple(x.shape[2:]), tuple(pads))[:3]
    else:
        span = 0
        stride = fill_arrays(plan, tuple(x.shape[2:]), tuple(pads))[4]
        xph = _planes(x, plan, pads, stride, scratch((n, c, stride)), par).reshape(n, -1)
        rowoff = _row_offsets(groups, c_g, plan, stride, ctp)
    parts = np.zeros((n_threads, groups, ctp * kgp), dtype=x.dtype)
    _GRAD_WEIGHT[par](xph, gy, rowoff, _output_steps(plan), kgp, positions,
                      block, n_threads, wide, x.shape[-1], span, *segments, parts)
    _SUM_TRANSPOSED[int(gw.size >= COPY_PARALLEL_MIN)](parts.reshape(n_threads, groups, ctp, kgp), ct, k_g, gw)
    return gw


def grad_weight_rows(gy, x, groups, plan, pads, scratch):
    """:func:`grad_weight` by :func:`_grad_weight_dot`, for layers whose lattice drops no positions: 1-D layers
    (with AVX-512, from :func:`grad_weight`) and 1x1 stride-1 layers without padding (from :mod:`.gemm`). The
    rows come from the input as it lies where no padding or stride makes the filled planes differ from it
    (:func:`_as_given`: the 1x1 layers, unpadded 1-D ones), from a window per job for the other 1-D layers of
    stride 1, otherwise from the filled planes, whose phases make each tap's row contiguous."""
    n, c = x.shape[:2]
    k = gy.shape[1]
    c_g, k_g = c // groups, k // groups
    ct = c_g * plan.n_taps
    ctp, kgp = _round_up(ct, DOT_MR), _round_up(k_g, DOT_NR)
    length = math.prod(plan.out)  # the lattice's first positions, no dropped ones
    par = _parallel(n * k * ct * length)
    block = _even_blocks(length, DOT_POSITIONS)
    seg_dst, seg_src, seg_len, _, stride, _ = fill_arrays(plan, tuple(x.shape[2:]), tuple(pads))
    segments = _NO_SEGMENTS
    span = 0  # the rows from the planes' lattice position 0, the output's first
    if _as_given(plan, x.shape, pads):
        xph = np.ascontiguousarray(x).reshape(n, -1)
    elif _windowed(plan):
        span = block + int(run_arrays(plan, True)[0].max())
        xph = np.ascontiguousarray(x).reshape(n, -1)
        segments = seg_dst, seg_src, seg_len
    else:
        xph = _planes(x, plan, pads, stride, scratch((n, c, stride)), par).reshape(n, -1)
    rowoff = np.repeat(_row_offsets(1, c_g, plan, span, ctp), groups, axis=0) if span else \
        _row_offsets(groups, c_g, plan, stride, ctp)
    grow = (np.arange(groups)[:, None] * k_g + np.minimum(np.arange(kgp), k_g - 1)[None, :]) * length
    n_threads = blas._threads() if par else 1
    parts = np.zeros((n_threads, groups, ctp * kgp), dtype=x.dtype)
    _GRAD_WEIGHT_DOT[par](xph, np.ascontiguousarray(gy).reshape(n, -1), rowoff, np.ascontiguousarray(grow, np.int64),
                          kgp, length, block, n_threads, x.shape[-1], span, *segments, parts)
    gw = np.empty((groups, k_g, ct), dtype=x.dtype)
    _SUM_TRANSPOSED[int(gw.size >= COPY_PARALLEL_MIN)](parts.reshape(n_threads, groups, ctp, kgp), ct, k_g, gw)
    return gw


def _pointwise_block(inner: int, dtype) -> int:
    """Positions per job of :func:`forward_pointwise`: :data:`BLOCK_POSITIONS`, or, with fewer than
    :data:`BLOCK_ROWS` inputs, as many more as keep a job's block of the input (inputs x positions) as large, up
    to :data:`POINTWISE_MAX_BLOCK`; whole tiles."""
    if not POINTWISE_BLOCKS:
        return BLOCK_POSITIONS
    tile = FORWARD_NV * lanes(dtype)
    block = BLOCK_POSITIONS * BLOCK_ROWS // inner // tile * tile
    return min(max(block, BLOCK_POSITIONS), POINTWISE_MAX_BLOCK)


def forward_pointwise(x, w, groups, y, par):
    """``y (n, K, *S)``: the forward of a 1x1 stride-1 layer without padding from ``x`` as it lies, each
    channel's plane one patch row (:func:`_forward`, no filled copy), over the positions that whole tiles
    cover; the few after them (fewer than a tile, which would read past the input's end) by BLAS."""
    n, c = x.shape[:2]
    k = w.shape[0]
    c_g, k_g = c // groups, k // groups
    length = math.prod(x.shape[2:])
    whole = length // (FORWARD_NV * lanes(x.dtype)) * FORWARD_NV * lanes(x.dtype)
    x = np.ascontiguousarray(x)
    if whole:
        rowoff = (np.arange(groups)[:, None] * c_g + np.arange(c_g)[None, :]) * length
        _FORWARD[par](x.reshape(n, -1), _blocks_of_rows(w.reshape(groups, k_g, c_g), FORWARD_MR),
                      np.ascontiguousarray(rowoff, np.int64), np.zeros(1, np.int64), whole, whole,
                      _pointwise_block(c_g, x.dtype),
                      BLOCK_ROWS, 1, 0, 0, False, *_NO_WINDOW, dynamic_threads(par), y.reshape(n, k, -1))
    if whole < length:
        blas.matmul(w.reshape(groups, k_g, c_g), x.reshape(n, groups, c_g, length)[..., whole:],
                    y.reshape(n, groups, k_g, length)[..., whole:])
    return y
