"""Convolution benchmark suite: convlayer vs PyTorch (and JAX when installed), side by side in one process.

    python -m benchmarks [--filter CATEGORY] [--repeats 5] [--rounds 1] [--threads 2] [--json results.json]

For every problem it times the forward pass, the input gradient and the
weight gradient of each framework (best of ``--repeats`` after one
warm-up, threads set equal; with ``--rounds R`` the whole list is timed
R times over, the frameworks in turn on each problem, and each keeps its
best, so that a stretch of the machine's noise falls on one round of a
problem rather than on all of them, and on both frameworks alike; see
:func:`run`), and prints time, GFLOP/s and the ratio
``PyTorch time / convlayer time`` (above 1: convlayer is faster), then the
geometric mean of the ratios per category and over the suite; with JAX
installed, the same for ``JAX time / convlayer time``. Freed memory stays
in the process (:func:`benchmarks.steady_allocator`; ``--os-allocator``
keeps glibc's defaults), so no timing includes the OS's page faults.
Before the problems and again after them it measures the machine's
float32 GEMM throughput (:func:`gemm_peak`: the ceiling of the
compute-bound layers; the higher of the two figures is the measure of
the 70% target, since a slow moment of a shared machine can only lower
one) and its memory read bandwidth (:func:`memory_bandwidth`: the
memory-bound layers' ceiling, which the machine's other tenants move
during a run). Before each large standard layer, in each round, it times
the same GEMM again: the large passes set against the GEMM of their own
moments, printed for information (not a target; see :func:`targets`).
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import time
from dataclasses import asdict, dataclass

import numpy as np

from convlayer.cli import positive_int

from . import steady_allocator


@dataclass(frozen=True)
class Problem:
    category: str
    name: str
    n: int
    c: int
    k: int
    size: tuple
    kernel: tuple
    stride: int = 1
    padding: object = 0
    dilation: int = 1
    groups: int = 1
    transposed: bool = False

    @property
    def rank(self):
        return len(self.size)

    def weight_shape(self):
        if self.transposed:
            return (self.c, self.k // self.groups, *self.kernel)
        return (self.k, self.c // self.groups, *self.kernel)


SUITE = [
    Problem("deepbench", "speech 161x200 k41x11/2", 4, 1, 32, (161, 200), (41, 11), 2, 0),
    Problem("deepbench", "vision 3x3 C32 112x112", 8, 32, 32, (112, 112), (3, 3), 1, 1),
    Problem("deepbench", "vision 3x3 C128 28x28", 16, 128, 128, (28, 28), (3, 3), 1, 1),
    Problem("lenet", "C1 5x5 1->6 b64", 64, 1, 6, (32, 32), (5, 5)),
    Problem("lenet", "C1 5x5 1->6 b256", 256, 1, 6, (32, 32), (5, 5)),
    Problem("lenet", "C3 5x5 6->16 b64", 64, 6, 16, (14, 14), (5, 5)),
    Problem("lenet", "C3 5x5 6->16 b256", 256, 6, 16, (14, 14), (5, 5)),
    Problem("lenet", "C5 5x5 16->120 b256", 256, 16, 120, (5, 5), (5, 5)),
    Problem("resnet", "stem 7x7/2 3->64 224", 4, 3, 64, (224, 224), (7, 7), 2, 3),
    Problem("resnet", "3x3 64->64 56", 8, 64, 64, (56, 56), (3, 3), 1, 1),
    Problem("resnet", "1x1 256->64 56", 8, 256, 64, (56, 56), (1, 1)),
    Problem("resnet", "3x3/2 128->256 28", 8, 128, 256, (28, 28), (3, 3), 2, 1),
    Problem("mobilenet", "depthwise 3x3 C144 56", 8, 144, 144, (56, 56), (3, 3), 1, 1, 1, 144),
    Problem("mobilenet", "depthwise 3x3/2 C96 112", 8, 96, 96, (112, 112), (3, 3), 2, 1, 1, 96),
    Problem("mobilenet", "pointwise 1x1 144->24 56", 8, 144, 24, (56, 56), (1, 1)),
    Problem("resnext", "grouped 3x3 128 g32 56", 8, 128, 128, (56, 56), (3, 3), 1, 1, 1, 32),
    Problem("dilated", "3x3 d2 64 64x64", 4, 64, 64, (64, 64), (3, 3), 1, 2, 2),
    Problem("dilated", "3x3 d4 64 64x64", 4, 64, 64, (64, 64), (3, 3), 1, 4, 4),
    Problem("dcgan", "transposed 4x4/2 256->128 8", 16, 256, 128, (8, 8), (4, 4), 2, 1, transposed=True),
    Problem("dcgan", "transposed 4x4/2 128->64 16", 16, 128, 64, (16, 16), (4, 4), 2, 1, transposed=True),
    Problem("audio1d", "k9 C64 L16000", 4, 64, 64, (16000,), (9,), 1, 4),
    Problem("audio1d", "stem k10/5 1->64 L16000", 8, 1, 64, (16000,), (10,), 5, 0),
    Problem("audio1d", "wavenet causal k2 d8 C64", 4, 64, 64, (16000,), (2,), 1, (8, 0), 8),
    Problem("video3d", "3x3x3 C64 8x28x28", 2, 64, 64, (8, 28, 28), (3, 3, 3), 1, 1),
    Problem("video3d", "stem 3x3x3 3->64 16x56x56", 2, 3, 64, (16, 56, 56), (3, 3, 3), 1, 1),
]


def _pairs(p: Problem):
    if isinstance(p.padding, tuple):
        return (p.padding,) * p.rank if isinstance(p.padding[0], int) and len(p.padding) == 2 else p.padding
    return ((p.padding, p.padding),) * p.rank


def flops(p: Problem, out_shape) -> float:
    """2 * multiply-adds of the forward pass (equal for each gradient)."""
    spatial = out_shape[2:] if not p.transposed else p.size
    per_output = (p.c // p.groups) * math.prod(p.kernel) if not p.transposed else (p.k // p.groups) * math.prod(p.kernel)
    channels = p.k if not p.transposed else p.c
    return 2.0 * p.n * channels * math.prod(spatial) * per_output


def _best(fn, repeats):
    time.sleep(0.2)  # let the other library's idle worker threads stop spinning before timing
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def problem_data(p: Problem, rng):
    """Random float32 input, weight and output gradient ``(x, w, gy)`` of problem ``p``."""
    import convlayer.functional as F

    x = rng.standard_normal((p.n, p.c, *p.size)).astype(np.float32)
    w = rng.standard_normal(p.weight_shape()).astype(np.float32)
    kw = dict(stride=p.stride, padding=_pairs(p), dilation=p.dilation, groups=p.groups)
    y = F.conv_transpose(x, w, **kw) if p.transposed else F.conv(x, w, **kw)
    return x, w, rng.standard_normal(y.shape).astype(np.float32)


def convlayer_passes(p: Problem, x, w, gy) -> dict:
    """convlayer's forward, input gradient and weight gradient of problem ``p``, as calls to time."""
    import convlayer.functional as F

    kw = dict(stride=p.stride, padding=_pairs(p), dilation=p.dilation, groups=p.groups)
    if p.transposed:
        return {"fwd": lambda: F.conv_transpose(x, w, **kw),
                "dgrad": lambda: F.conv_transpose_backward(gy, x, w, **kw, grads=("input",)),
                "wgrad": lambda: F.conv_transpose_backward(gy, x, w, **kw, grads=("weight",))}
    return {"fwd": lambda: F.conv(x, w, **kw),
            "dgrad": lambda: F.conv_backward(gy, x, w, **kw, grads=("input",)),
            "wgrad": lambda: F.conv_backward(gy, x, w, **kw, grads=("weight",))}


def bench_convlayer(p: Problem, x, w, gy, repeats):
    return [_best(f, repeats) for f in convlayer_passes(p, x, w, gy).values()]


def bench_torch(p: Problem, x, w, gy, repeats):
    import torch
    import torch.nn.functional as TF

    xt, wt, gyt = torch.from_numpy(x), torch.from_numpy(w), torch.from_numpy(gy)
    pads = _pairs(p)
    sym = all(lo == hi for lo, hi in pads)
    if not sym:  # asymmetric (causal) padding: pad explicitly, as a PyTorch user would
        flat = [v for lo, hi in reversed(pads) for v in (lo, hi)]
        xt = TF.pad(xt, flat)
        padding = [0] * p.rank
    else:
        padding = [lo for lo, _ in pads]
    stride = [p.stride] * p.rank
    dilation = [p.dilation] * p.rank
    conv = {1: TF.conv1d, 2: TF.conv2d, 3: TF.conv3d}[p.rank]
    convt = {1: TF.conv_transpose1d, 2: TF.conv_transpose2d, 3: TF.conv_transpose3d}[p.rank]
    with torch.no_grad():
        if p.transposed:
            fwd = lambda: convt(xt, wt, None, stride, padding, 0, p.groups, dilation)  # noqa: E731
        else:
            fwd = lambda: conv(xt, wt, None, stride, padding, dilation, p.groups)  # noqa: E731

        def grad(mask):
            return torch.ops.aten.convolution_backward(gyt, xt, wt, None, stride, padding, dilation, p.transposed,
                                                       [0] * p.rank, p.groups, mask)

        return [_best(f, repeats) for f in (fwd, lambda: grad([True, False, False]),
                                             lambda: grad([False, True, False]))]


def bench_jax(p: Problem, x, w, gy, repeats):
    try:
        import jax
        from jax import lax
    except ImportError:
        return None
    if p.transposed:
        return None
    dims = {1: ("NCH", "OIH", "NCH"), 2: ("NCHW", "OIHW", "NCHW"), 3: ("NCDHW", "OIDHW", "NCDHW")}[p.rank]
    pads = list(_pairs(p))

    def f(xx, ww):
        return lax.conv_general_dilated(xx, ww, (p.stride,) * p.rank, pads, rhs_dilation=(p.dilation,) * p.rank,
                                        dimension_numbers=dims, feature_group_count=p.groups)

    fwd = jax.jit(f)
    gin = jax.jit(lambda g: jax.vjp(f, x, w)[1](g)[0])
    gwt = jax.jit(lambda g: jax.vjp(f, x, w)[1](g)[1])
    return [_best(lambda fn=fn: fn().block_until_ready(), repeats)
            for fn in (lambda: fwd(x, w), lambda: gin(gy), lambda: gwt(gy))]


def _best_of(a, b):
    return b if a is None else a if b is None else [min(x, y) for x, y in zip(a, b)]


def run(problems, repeats, threads, with_jax=True, rounds=1):
    """Time every problem ``rounds`` times over, each framework keeping its best per pass.

    A round times the whole list, the frameworks in turn on each problem, so that a problem's rounds lie
    a whole round apart (about 40 s for the suite) rather than back to back: a stretch of the machine's noise
    shorter than a round (the other tenants' use of the memory and the shared cache, which can double a
    memory-bound pass's time for seconds to minutes) then falls on at most one of them, for either framework.
    Each row is printed once its last round is done. Every problem's data is made once, before the first
    round, and kept until the last (about 0.4 GB for the suite).

    Before each large standard layer (:func:`_is_large`) in each round it also times NumPy's GEMM
    (:func:`bench_gemm`), the row's ``gemm_beside`` its best over the rounds: the machine's GEMM throughput
    at the moments its passes ran, beside the runner's figure from before and after the problems (see
    :func:`targets`). Each row's ``rounds`` keeps every round's times per framework (seconds, one list of
    three per round; ``None`` where a framework did not run) and GEMM figures, so that an entry that misses a
    target shows whether it was slow in one round or in all of them."""
    import torch
    from threadpoolctl import threadpool_limits
    from tqdm.auto import tqdm

    torch.set_num_threads(threads)
    rng = np.random.default_rng(0)
    data = [problem_data(p, rng) for p in problems]
    best = [[None, None, None] for _ in problems]  # convlayer, PyTorch, JAX
    gflops = [flops(p, gy.shape) / 1e9 for p, (_, _, gy) in zip(problems, data)]  # gy has the output's shape
    beside = [None] * len(problems)  # GFLOP/s of the GEMM timed before each large problem, best over the rounds
    # each round's times and GEMM figure, kept in the rows, so that a miss shows whether every round was slow
    seen = [dict(convlayer=[], torch=[], jax=[], gemm_beside=[]) for _ in problems]
    rows = []
    with threadpool_limits(limits=threads), tqdm(total=rounds * len(problems), desc="problems x rounds",
                                                 disable=None, leave=False) as bar:
        for r in range(rounds):
            for i, (p, (x, w, gy)) in enumerate(zip(problems, data)):
                if _is_large(asdict(p), gflops[i]):
                    seen[i]["gemm_beside"].append(bench_gemm(repeats))
                    beside[i] = max(seen[i]["gemm_beside"])
                times = [bench_convlayer(p, x, w, gy, repeats), bench_torch(p, x, w, gy, repeats),  # in this order
                         bench_jax(p, x, w, gy, repeats) if with_jax else None]
                best[i] = [_best_of(b, t) for b, t in zip(best[i], times)]
                for name, t in zip(("convlayer", "torch", "jax"), times):
                    seen[i][name].append(t)
                ours, theirs, jx = best[i]
                bar.update()
                if r < rounds - 1:
                    continue
                row = dict(problem=asdict(p), gflop=gflops[i], convlayer=ours, torch=theirs, jax=jx,
                           ratio=[t / o for t, o in zip(theirs, ours)],
                           jax_ratio=None if jx is None else [j / o for j, o in zip(jx, ours)],
                           gemm_beside=beside[i], rounds=seen[i])
                rows.append(row)
                bar.write(_format_row(p, row))
    return rows


PASSES = ("fwd", "dgrad", "wgrad")


def gemm_peak(threads: int, size: int = 2048) -> float:
    """The machine's float32 GEMM throughput (GFLOP/s) through NumPy's BLAS: the ceiling for convlayer."""
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=threads):
        return bench_gemm(5, size)


def bench_gemm(repeats: int, size: int = 2048) -> float:
    """GFLOP/s of NumPy's float32 ``size``-cubed GEMM, best of ``repeats``, on the threads the caller allows."""
    a = np.random.default_rng(1).standard_normal((size, size)).astype(np.float32)
    b = a.T.copy()
    return 2.0 * size**3 / _best(lambda: a @ b, repeats) / 1e9


def memory_bandwidth(megabytes: int = 128) -> float:
    """The machine's memory read bandwidth (GB/s) at the moment, one thread: NumPy's sum over an array four
    times the development machine's 32 MB of L3 cache. The depthwise and grouped layers do 2-9 flops per byte
    they move (WaveNet's 32), a large GEMM hundreds: their times follow this figure, which the other tenants of
    a shared machine move, more than the GEMM's (see BENCHMARKS.md)."""
    a = np.ones(megabytes * 2**20 // 4, dtype=np.float32)
    return a.nbytes / _best(a.sum, 5) / 1e9


def _format_row(p, row):
    cells = []
    for i, name in enumerate(PASSES):
        o, t = row["convlayer"][i], row["torch"][i]
        jax = f" jax x{row['jax_ratio'][i]:5.2f}" if row.get("jax_ratio") else ""
        cells.append(f"{name} {o * 1e3:7.1f}ms {row['gflop'] / o:6.1f}GF/s x{t / o:5.2f}{jax}")
    gemm = f"  GEMM beside {row['gemm_beside']:.0f}GF/s" if row.get("gemm_beside") else ""
    return f"{p.category:<10}{p.name:<30}" + "  ".join(cells) + gemm


def _geomean(values):
    values = [v for v in values if v > 0]
    return math.exp(sum(math.log(v) for v in values) / len(values)) if values else float("nan")


def summary(rows, key="ratio"):
    """Geometric means per category and over all rows of ``row[key]`` (``"ratio"``: PyTorch time / convlayer
    time; ``"jax_ratio"``: JAX time / convlayer time, over the rows JAX ran)."""
    rows = [r for r in rows if r.get(key)]
    cats = sorted({r["problem"]["category"] for r in rows})
    out = {}
    for cat in cats + (["all"] if rows else []):
        sel = [r for r in rows if cat == "all" or r["problem"]["category"] == cat]
        out[cat] = [_geomean([r[key][i] for r in sel]) for i in range(3)]
    return out


# Issue 4's targets, as the runner checks them (see :func:`targets`).
LOWEST_RATIO = 0.5  # no problem slower than 2x PyTorch
GROUPED_MIN_RATIO = 2.0  # depthwise and grouped layers (groups > 1): at least 2x faster
LARGE_MIN_GEMM_SHARE = 0.7  # large standard layers: at least 70% of the machine's GEMM throughput
# "Large standard layers": one group, at least LARGE_MIN_CHANNELS input and output channels (not a stem or a
# one-channel input) and at least LARGE_MIN_GFLOP per pass.
LARGE_MIN_CHANNELS = 16
LARGE_MIN_GFLOP = 0.5


def _is_large(problem: dict, gflop: float) -> bool:
    return (problem["groups"] == 1 and min(problem["c"], problem["k"]) >= LARGE_MIN_CHANNELS
            and gflop >= LARGE_MIN_GFLOP)


def targets(rows, peak) -> dict:
    """Issue 4's targets on these rows, ``peak`` the machine's GEMM GFLOP/s: the suite's geometric mean of
    the ratios per pass (at least 1.0 each), the entries below :data:`LOWEST_RATIO`, the depthwise and
    grouped entries below :data:`GROUPED_MIN_RATIO`, and the passes of large standard layers
    (:func:`_is_large`) below :data:`LARGE_MIN_GEMM_SHARE` of ``peak``; each list of
    ``[category, name, pass, value]``, and ``met`` when every list is empty and every mean at least 1.

    For information only, not a target: the large passes below that share of the GEMM timed beside their
    problem (``gemm_beside``, see :func:`run`), ``[category, name, pass, rate, share]``. A pass timed in a
    busy stretch of a shared machine is set against a GEMM timed in the same stretch there, which tells the
    machine's load from the engine's shortfall; the target itself is measured against ``peak``. Also for
    information: ``missed_rounds``, each entry that misses a target with its round-by-round times (seconds)
    for convlayer and PyTorch, where the rows keep them (:func:`run`)."""
    means = summary(rows).get("all", [float("nan")] * 3)
    low, grouped, large, beside, counted = [], [], [], [], 0
    for r in rows:
        p = r["problem"]
        for i, name in enumerate(PASSES):
            ratio = r["ratio"][i]
            where = [p["category"], p["name"], name]
            if ratio < LOWEST_RATIO:
                low.append(where + [ratio])
            if p["groups"] > 1 and ratio < GROUPED_MIN_RATIO:
                grouped.append(where + [ratio])
            if _is_large(p, r["gflop"]):
                counted += 1
                rate = r["gflop"] / r["convlayer"][i]
                if rate < LARGE_MIN_GEMM_SHARE * peak:
                    large.append(where + [rate])
                if r.get("gemm_beside") and rate < LARGE_MIN_GEMM_SHARE * r["gemm_beside"]:
                    beside.append(where + [rate, rate / r["gemm_beside"]])
    met = all(m >= 1.0 for m in means) and not (low or grouped or large)
    return dict(means=means, below_half=low, grouped_below_2x=grouped, large_passes=counted,
                large_below_70_percent=large, large_below_70_percent_of_gemm_beside=beside, met=met,
                missed_rounds=_missed_rounds(rows, low + grouped + large))


def _missed_rounds(rows, missed):
    """``[category, name, pass, convlayer's times, PyTorch's times]`` per round for each missed entry once."""
    by_name = {(r["problem"]["category"], r["problem"]["name"]): r for r in rows}
    out = []
    for c, n, p in dict.fromkeys((c, n, p) for c, n, p, _ in missed):
        rounds, i = by_name[c, n].get("rounds"), PASSES.index(p)
        if rounds:
            out.append([c, n, p] + [[t[i] for t in rounds[f]] for f in ("convlayer", "torch")])
    return out


def _targets_text(t, peak) -> str:
    def items(entries, fmt):
        return "; ".join(f"{c} {n} {p} " + fmt.format(v) for c, n, p, v in entries) or "none"

    means = ", ".join(f"{m:.2f}" for m in t["means"])
    return "\n".join([
        "targets of issue 4:",
        f"  geometric means >= 1.0 (fwd, dgrad, wgrad): {means}",
        f"  entries below {LOWEST_RATIO}: {items(t['below_half'], 'x{:.3f}')}",
        f"  depthwise and grouped entries below {GROUPED_MIN_RATIO}x: {items(t['grouped_below_2x'], 'x{:.3f}')}",
        f"  large standard layers' passes below {LARGE_MIN_GEMM_SHARE:.0%} of {peak:.0f} GFLOP/s "
        f"({t['large_passes']} passes): {items(t['large_below_70_percent'], '{:.0f} GFLOP/s')}",
        f"  all met: {'yes' if t['met'] else 'no'}",
        f"  for information, not a target: large passes below {LARGE_MIN_GEMM_SHARE:.0%} of the GEMM timed beside "
        f"their problem: " + ("; ".join(f"{c} {n} {p} {v:.0f} GFLOP/s ({share:.0%})" for c, n, p, v, share in
                                      t.get("large_below_70_percent_of_gemm_beside", [])) or "none"),
    ] + [f"  for information: {c} {n} {p} round by round, convlayer "
         + " ".join(f"{v * 1e3:.2f}" for v in ours) + " ms, PyTorch " + " ".join(f"{v * 1e3:.2f}" for v in theirs)
         + " ms" for c, n, p, ours, theirs in t.get("missed_rounds", [])])


def _summary_table(table) -> str:
    out = "| category | fwd | dgrad | wgrad |\n| --- | ---: | ---: | ---: |\n"
    return out + "\n".join(f"| {cat} | {a:.2f} | {b:.2f} | {c:.2f} |" for cat, (a, b, c) in table.items()) + "\n"


def markdown(rows, table) -> str:
    """The results as a Markdown table: time (ms), GFLOP/s and ratio per pass, then the geometric means."""
    head = "| category | problem | GFLOP | " + " | ".join(
        f"{p} ms | {p} GFLOP/s | {p} ratio" for p in PASSES) + " |\n"
    head += "| --- | --- | ---: | " + " | ".join("---: | ---: | ---:" for _ in PASSES) + " |\n"
    lines = []
    for r in rows:
        p = r["problem"]
        cells = []
        for i in range(3):
            t = r["convlayer"][i]
            cells.append(f"{t * 1e3:.1f} | {r['gflop'] / t:.1f} | {r['ratio'][i]:.2f}")
        lines.append(f"| {p['category']} | {p['name']} | {r['gflop']:.2f} | " + " | ".join(cells) + " |")
    out = head + "\n".join(lines) + "\n\n" + _summary_table(table)
    jax_table = summary(rows, "jax_ratio")
    if jax_table:
        out += "\nJAX time / convlayer time (geometric means; JAX has no transposed convolution here):\n\n"
        out += _summary_table(jax_table)
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--filter", default=None, help="only categories (comma-separated) or names containing this")
    parser.add_argument("--repeats", type=positive_int, default=5)
    parser.add_argument("--rounds", type=positive_int, default=1,
                        help="time the whole list this many times over, each framework keeping its best (default 1)")
    parser.add_argument("--threads", type=positive_int, default=2)
    parser.add_argument("--no-jax", action="store_true")
    parser.add_argument("--json", default=None, help="write all timings here")
    parser.add_argument("--markdown", default=None, help="write the table and geometric means as Markdown here")
    parser.add_argument("--os-allocator", action="store_true",
                        help="keep glibc's default allocator settings (see benchmarks.steady_allocator)")
    args = parser.parse_args(argv)
    problems = SUITE
    if args.filter:
        keys = args.filter.split(",")
        problems = [p for p in SUITE if p.category in keys or any(k in p.name for k in keys)]
    if not problems:
        parser.error(f"--filter {args.filter!r} matches no category or problem name")
    steady = False if args.os_allocator else steady_allocator()
    turns = f" in each of {args.rounds} rounds over the whole list" if args.rounds > 1 else ""
    print(f"ratio = PyTorch time / convlayer time (>1: convlayer faster); {args.threads} threads, "
          f"best of {args.repeats}{turns}; freed memory {'kept in the process' if steady else 'per glibc defaults'}")
    gemm = [gemm_peak(args.threads)]
    print(f"machine float32 GEMM (NumPy/OpenBLAS, 2048^3): {gemm[0]:.1f} GFLOP/s")
    memory = [memory_bandwidth()]
    print(f"machine memory read bandwidth (NumPy sum over 128 MB, 1 thread): {memory[0]:.1f} GB/s")
    rows = run(problems, args.repeats, args.threads, with_jax=not args.no_jax, rounds=args.rounds)
    gemm.append(gemm_peak(args.threads))
    memory.append(memory_bandwidth())
    peak = max(gemm)  # a slow moment only lowers the figure: the higher one is the machine's
    print(f"machine float32 GEMM after the problems: {gemm[1]:.1f} GFLOP/s (the targets use {peak:.1f})")
    print(f"machine memory read bandwidth after the problems: {memory[1]:.1f} GB/s")
    table = summary(rows)
    print("\ngeometric mean of ratios (fwd, dgrad, wgrad):")
    for cat, (a, b, c) in table.items():
        print(f"  {cat:<10} {a:5.2f} {b:5.2f} {c:5.2f}")
    goals = targets(rows, peak)
    print("\n" + _targets_text(goals, peak))
    jax_table = summary(rows, "jax_ratio")
    if jax_table:
        print("\ngeometric mean of JAX time / convlayer time (fwd, dgrad, wgrad):")
        for cat, (a, b, c) in jax_table.items():
            print(f"  {cat:<10} {a:5.2f} {b:5.2f} {c:5.2f}")
    if args.markdown:
        with open(args.markdown, "w") as fh:
            fh.write(f"Machine float32 GEMM throughput: {peak:.1f} GFLOP/s (the higher of {gemm[0]:.1f} before the "
                     f"problems and {gemm[1]:.1f} after); memory read bandwidth {memory[0]:.1f} GB/s before the "
                     f"problems, {memory[1]:.1f} after.\n\n" + markdown(rows, table)
                     + "\n```\n" + _targets_text(goals, peak) + "\n```\n")
    if args.json:
        import torch

        meta = dict(machine=platform.machine(), processor=platform.processor(), python=platform.python_version(),
                    numpy=np.__version__, torch=torch.__version__, threads=args.threads, repeats=args.repeats,
                    rounds=args.rounds, gemm_peak_gflops=peak, gemm_gflops=gemm, memory_read_gbps=memory,
                    steady_allocator=steady)
        with open(args.json, "w") as fh:
            json.dump(dict(meta=meta, rows=rows, summary=table, targets=goals), fh, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
