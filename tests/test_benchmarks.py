"""The benchmark runners stay runnable (timings themselves are never asserted)."""

import json
import os
import sys

import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks import __main__ as suite  # noqa: E402
from benchmarks import lenet  # noqa: E402


def test_suite_runner_writes_json_and_markdown(tmp_path, capsys):
    out_json, out_md = tmp_path / "r.json", tmp_path / "r.md"
    assert suite.main(["--filter", "C1 5x5 1->6 b64", "--repeats", "1", "--rounds", "2", "--no-jax", "--threads", "1",
                       "--json", str(out_json), "--markdown", str(out_md)]) == 0
    data = json.loads(out_json.read_text())
    assert len(data["rows"]) == 1 and len(data["rows"][0]["ratio"]) == 3
    assert data["meta"]["rounds"] == 2
    assert len(data["meta"]["memory_read_gbps"]) == 2 and min(data["meta"]["memory_read_gbps"]) > 0
    gemm = data["meta"]["gemm_gflops"]  # before and after the problems; the targets use the higher
    assert len(gemm) == 2 and min(gemm) > 0 and data["meta"]["gemm_peak_gflops"] == max(gemm)
    assert "| lenet | C1 5x5 1->6 b64 |" in out_md.read_text() and "targets of issue 4:" in out_md.read_text()
    assert set(data["targets"]) >= {"means", "below_half", "grouped_below_2x", "large_below_70_percent", "met"}
    assert data["rows"][0]["gemm_beside"] is None  # LeNet's C1 is not a large layer: no GEMM timed beside it
    out = capsys.readouterr().out
    assert "geometric mean" in out and "targets of issue 4:" in out and "memory read bandwidth" in out


def test_strategies_runner_times_every_strategy(capsys):
    from benchmarks import strategies

    from convlayer.engine.gemm import STRATEGIES

    strategies.main(["--filter", "C1 5x5 1->6 b64", "--repeats", "1"])
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[5] for line in lines] == ["fwd", "dgrad", "wgrad"]
    assert all(f" {how} " in line for line in lines for how in STRATEGIES)


def test_suite_runner_keeps_each_frameworks_best_over_the_rounds(monkeypatch):
    """With several rounds the frameworks take turns, and each pass keeps its best time of all rounds."""
    times = iter([[3.0, 2.0, 5.0], [1.0, 4.0, 4.0], [2.0, 3.0, 1.0], [2.0, 2.0, 2.0]])
    calls = []
    monkeypatch.setattr(suite, "bench_convlayer", lambda *a: calls.append("convlayer") or next(times))
    monkeypatch.setattr(suite, "bench_torch", lambda *a: calls.append("torch") or next(times))
    problem = next(p for p in suite.SUITE if p.name == "C1 5x5 1->6 b64")
    row = suite.run([problem], repeats=1, threads=1, with_jax=False, rounds=2)[0]
    assert calls == ["convlayer", "torch", "convlayer", "torch"]
    assert row["convlayer"] == [2.0, 2.0, 1.0] and row["torch"] == [1.0, 2.0, 2.0]
    assert row["ratio"] == [0.5, 1.0, 2.0]
    # every round's times are kept too, so that a miss shows whether each round was slow
    assert row["rounds"] == dict(convlayer=[[3.0, 2.0, 5.0], [2.0, 3.0, 1.0]], torch=[[1.0, 4.0, 4.0], [2.0] * 3],
                                 jax=[None, None], gemm_beside=[])


def test_suite_runner_times_the_whole_list_each_round(monkeypatch, capsys):
    """A round times every problem before the next round starts, so that a problem's rounds lie a whole round
    apart; the rows come out in the list's order, each once, with its best over the rounds."""
    calls = []

    def fake(framework):
        def bench(p, *args):
            calls.append((framework, p.name))
            return [0.001 * (1 + len(calls))] * 3
        return bench

    monkeypatch.setattr(suite, "bench_convlayer", fake("convlayer"))
    monkeypatch.setattr(suite, "bench_torch", fake("torch"))
    problems = [p for p in suite.SUITE if p.name in ("C1 5x5 1->6 b64", "C3 5x5 6->16 b64")]
    rows = suite.run(problems, repeats=1, threads=1, with_jax=False, rounds=3)
    order = [(f, p.name) for p in problems for f in ("convlayer", "torch")]
    assert calls == order * 3
    assert [r["problem"]["name"] for r in rows] == [p.name for p in problems]
    assert [r["convlayer"][0] for r in rows] == [0.002, 0.004]  # each problem's first round: the fastest here
    out = capsys.readouterr().out
    assert all(out.count(p.name) == 1 for p in problems)


def test_suite_runner_times_a_gemm_beside_each_large_problem(monkeypatch, capsys):
    """Before each large standard layer, in each round, a GEMM is timed; the row keeps the best over the rounds,
    and the targets list the large passes under 70% of it, for information only: ``met`` follows the run's
    figure."""
    calls = []
    gemm = iter([100.0, 150.0, 120.0])
    monkeypatch.setattr(suite, "bench_gemm", lambda repeats: calls.append("gemm") or next(gemm))
    monkeypatch.setattr(suite, "bench_convlayer", lambda p, *a: calls.append(("convlayer", p.name)) or [0.01] * 3)
    monkeypatch.setattr(suite, "bench_torch", lambda p, *a: calls.append(("torch", p.name)) or [0.02] * 3)
    problems = [p for p in suite.SUITE if p.name in ("C1 5x5 1->6 b64", "3x3/2 128->256 28")]
    rows = suite.run(problems, repeats=1, threads=1, with_jax=False, rounds=3)
    per_round = [("convlayer", "C1 5x5 1->6 b64"), ("torch", "C1 5x5 1->6 b64"),
                 "gemm", ("convlayer", "3x3/2 128->256 28"), ("torch", "3x3/2 128->256 28")]
    assert calls == per_round * 3
    assert rows[0]["gemm_beside"] is None and rows[1]["gemm_beside"] == 150.0
    assert rows[1]["rounds"]["gemm_beside"] == [100.0, 150.0, 120.0]
    rate = rows[1]["gflop"] / 0.01  # 92.5 GFLOP/s: 62% of 150, 92% of 100
    t = suite.targets(rows, peak=100.0)
    assert t["large_below_70_percent"] == []
    assert t["large_below_70_percent_of_gemm_beside"] == [
        ["resnet", "3x3/2 128->256 28", name, rate, rate / 150.0] for name in suite.PASSES]
    text = suite._targets_text(t, 100.0)
    assert "all met: yes" in text and "resnet 3x3/2 128->256 28 wgrad 92 GFLOP/s (62%)" in text
    assert capsys.readouterr().out.count("GEMM beside 150GF/s") == 1


def _fake_row(name, ratios, convlayer_s, gflop=1.0):
    from dataclasses import asdict

    problem = next(p for p in suite.SUITE if p.name == name)
    return dict(problem=asdict(problem), gflop=gflop, convlayer=list(convlayer_s),
                torch=[r * t for r, t in zip(ratios, convlayer_s)], ratio=list(ratios), jax=None, jax_ratio=None)


def test_targets_report_each_goal_of_issue_4():
    """The runner's check of issue 4's targets: geometric means, entries below 0.5, depthwise and grouped
    entries below 2x, and large standard layers' passes below 70% of the GEMM figure (here 100 GFLOP/s)."""
    fast = 1.0 / 80  # 1 GFLOP in 12.5 ms: 80 GFLOP/s, 80% of 100
    rows = [_fake_row("3x3 64->64 56", [1.2, 1.1, 1.5], [fast, fast, 1.0 / 60]),  # weight gradient at 60%
            _fake_row("depthwise 3x3 C144 56", [2.5, 1.9, 3.0], [1e-3] * 3, gflop=0.1),
            _fake_row("C3 5x5 6->16 b64", [0.49, 1.0, 1.0], [1e-3] * 3, gflop=0.03),
            _fake_row("stem 7x7/2 3->64 224", [1.0, 1.0, 1.0], [1.0] * 3)]  # 1 GFLOP/s, but a stem: not large
    t = suite.targets(rows, peak=100.0)
    assert t["below_half"] == [["lenet", "C3 5x5 6->16 b64", "fwd", 0.49]]
    assert t["grouped_below_2x"] == [["mobilenet", "depthwise 3x3 C144 56", "dgrad", 1.9]]
    assert [e[:3] for e in t["large_below_70_percent"]] == [["resnet", "3x3 64->64 56", "wgrad"]]
    assert t["large_passes"] == 3 and not t["met"]
    text = suite._targets_text(t, 100.0)
    assert "resnet 3x3 64->64 56 wgrad 60 GFLOP/s" in text and "all met: no" in text
    good = [_fake_row("3x3 64->64 56", [1.2, 1.1, 1.5], [fast] * 3),
            _fake_row("depthwise 3x3 C144 56", [2.5, 2.1, 3.0], [1e-3] * 3, gflop=0.1)]
    t = suite.targets(good, peak=100.0)
    assert t["met"] and "all met: yes" in suite._targets_text(t, 100.0)
    slow = [_fake_row("3x3 64->64 56", [1.2, 0.9, 0.9], [fast] * 3)]  # means below 1 in two passes
    assert not suite.targets(slow, peak=100.0)["met"]


def test_targets_show_the_missed_entries_round_by_round():
    """Each entry that misses a target is listed once with its rounds, convlayer's and PyTorch's, for
    information; entries that meet every target and rows without rounds are not."""
    row = _fake_row("depthwise 3x3 C144 56", [1.9, 2.5, 2.5], [1e-3] * 3, gflop=0.1)  # forward under 2x
    row["rounds"] = dict(convlayer=[[2e-3, 1e-3, 1e-3], [1e-3, 2e-3, 1e-3]], torch=[[2e-3, 3e-3, 3e-3]] * 2)
    plain = _fake_row("C3 5x5 6->16 b64", [0.4, 1.0, 1.0], [1e-3] * 3, gflop=0.03)  # missed, but no rounds kept
    t = suite.targets([row, plain], peak=100.0)
    assert t["missed_rounds"] == [["mobilenet", "depthwise 3x3 C144 56", "fwd", [2e-3, 1e-3], [2e-3, 2e-3]]]
    assert ("for information: mobilenet depthwise 3x3 C144 56 fwd round by round, convlayer 2.00 1.00 ms, "
            "PyTorch 2.00 2.00 ms") in suite._targets_text(t, 100.0)
    row["ratio"][0] = 2.0
    assert suite.targets([row], peak=100.0)["missed_rounds"] == []


@pytest.mark.parametrize("args, message", [(["--rounds", "0"], "argument --rounds: must be a positive integer, got 0"),
                                           (["--threads", "0"], "argument --threads: must be a positive integer"),
                                           (["--filter", "zzz"], "--filter 'zzz' matches no category or problem name")])
def test_suite_runner_rejects_bad_arguments_before_timing(args, message, capsys):
    """Usage errors, before the GEMM and memory figures are measured (a zero thread count was PyTorch's
    RuntimeError after them; a filter matching nothing timed nothing and reported NaN means)."""
    with pytest.raises(SystemExit) as exit_info:
        suite.main([*args, "--no-jax"])
    captured = capsys.readouterr()
    assert exit_info.value.code == 2 and message in captured.err and "GEMM" not in captured.out


def test_flop_count_matches_definition():
    p = suite.Problem("t", "t", 2, 4, 6, (8, 8), (3, 3), 1, 1)
    assert suite.flops(p, (2, 6, 8, 8)) == 2 * 2 * 6 * 64 * 4 * 9


def test_lenet_runner(tmp_path):
    out = tmp_path / "l.json"
    assert lenet.main(["--images", "256", "--repeats", "1", "--threads", "1", "--json", str(out)]) == 0
    assert json.loads(out.read_text())["ratio"] > 0


def test_gate_runner(capsys):
    from benchmarks import gate

    assert gate.main(["--rounds", "1", "--threads", "1"]) == 0
    assert "median convlayer/PyTorch time" in capsys.readouterr().out


def test_jax_ratios_are_summarised_where_jax_ran():
    """JAX may be absent (None) for some rows: its geometric means cover only the rows it ran."""
    def row(cat, ours, torch_t, jax_t):
        return dict(problem=dict(category=cat, name=cat), gflop=1.0, convlayer=ours, torch=torch_t, jax=jax_t,
                    ratio=[t / o for t, o in zip(torch_t, ours)],
                    jax_ratio=None if jax_t is None else [j / o for j, o in zip(jax_t, ours)])

    rows = [row("a", [1, 1, 1], [2, 2, 2], [4, 1, 9]), row("a", [1, 1, 1], [1, 1, 1], [1, 4, 1]),
            row("b", [1, 1, 1], [1, 1, 1], None)]
    assert suite.summary(rows)["all"] == pytest.approx([2 ** (1 / 3)] * 3)
    jax = suite.summary(rows, "jax_ratio")
    assert set(jax) == {"a", "all"} and jax["all"] == pytest.approx([2.0, 2.0, 3.0])
    text = suite.markdown(rows, suite.summary(rows))
    assert "JAX time / convlayer time" in text and "| all | 2.00 | 2.00 | 3.00 |" in text
    assert "JAX" not in suite.markdown(rows[2:], suite.summary(rows[2:]))


def test_steady_allocator_keeps_freed_memory_in_the_process():
    """On glibc the runners raise malloc's mmap and trim thresholds: a large block freed and allocated
    again is then served from the heap, without fresh pages (timings without page faults)."""
    import ctypes
    import platform

    import benchmarks
    import numpy as np

    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        pytest.skip("mallopt is glibc's")
    assert benchmarks.steady_allocator() is True
    class Mallinfo2(ctypes.Structure):  # glibc >= 2.33
        _fields_ = [(name, ctypes.c_size_t) for name in (
            "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks",
            "keepcost")]

    libc = ctypes.CDLL("libc.so.6")
    if not hasattr(libc, "mallinfo2"):
        pytest.skip("glibc older than 2.33")
    libc.mallinfo2.restype = Mallinfo2
    before = libc.mallinfo2().hblkhd  # bytes in mmapped blocks
    block = np.ones(64 << 20, dtype=np.uint8)  # 64 MB: above any default mmap threshold
    assert libc.mallinfo2().hblkhd - before < block.nbytes  # served from the heap, not mmapped
    del block


def test_few_rows_runner(capsys):
    from benchmarks import few_rows

    for extra in ([], ["--grad-weight"], ["--grad-input"]):
        assert few_rows.main(["--rounds", "1", "--repeats", "1", *extra], cases=[((2, 1, 40), (8, 1, 5), 2, 1)]) == 0
        (line,) = capsys.readouterr().out.splitlines()
        assert line.startswith("x (2, 1, 40) w (8, 1, 5) stride 2 padding 1: torch ")
        cells = line.split(": ", 1)[1].removesuffix(" ms").split("  ")
        assert [cell.split()[0] for cell in cells] == ["torch", "planner", "cols", "implicit", "direct"]
        assert all(float(cell.split()[1]) > 0 for cell in cells)


def test_microkernel_runner(capsys):
    from benchmarks import microkernel

    # 131 MFLOP per run: enough that the GFLOP/s printed with one decimal is not rounded to zero
    assert microkernel.main(["--steps", "64", "--calls", "2000", "--repeats", "1"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in lines] == ["forward", "gradients"]
    assert all(line.endswith("GFLOP/s") and float(line.split()[-2]) > 0 for line in lines)
    assert microkernel.main(["--steps", "64", "--calls", "2000", "--repeats", "1", "--tile", "3x2:4"]) == 0
    (line,) = capsys.readouterr().out.splitlines()
    lanes = microkernel.implicit.lanes("float32")
    assert line.startswith(f"given tile 3x{2 * lanes} float32") and "prefetch 4" in line
    for bad in ("3", "3x", "0x2", "3x2:-1"):
        with pytest.raises(SystemExit, match="--tile"):
            microkernel.main(["--tile", bad])


def test_gemm_shapes_runner_sets_each_large_pass_beside_its_product(tmp_path, capsys):
    """Each pass's product by the patch matrix has the pass's own flop count (a transposed layer's forward is
    the product of the input gradient of the layer it transposes), and the runner times the large passes only,
    beside that product, and writes them with the square GEMM's two figures."""
    from benchmarks import gemm_shapes

    rng = np.random.default_rng(0)
    expected = {"3x3/2 128->256 28": {"fwd": (256, 1152, 1568), "dgrad": (1152, 256, 1568), "wgrad": (256, 1568, 1152)},
                "transposed 4x4/2 256->128 8": {"fwd": (2048, 256, 1024), "dgrad": (256, 2048, 1024),
                                                "wgrad": (256, 1024, 2048)},
                "C1 5x5 1->6 b64": {"fwd": (6, 25, 64 * 28 * 28), "dgrad": (25, 6, 64 * 28 * 28),
                                    "wgrad": (6, 64 * 28 * 28, 25)}}
    for p in suite.SUITE:
        if p.name in expected:
            gy = suite.problem_data(p, rng)[2]
            got = gemm_shapes.shapes(p, gy.shape)
            assert got == expected[p.name]
            assert all(2 * m * k * n == suite.flops(p, gy.shape) for m, k, n in got.values())
    out = tmp_path / "shapes.json"
    assert gemm_shapes.main(["--filter", "lenet,256->128", "--rounds", "1", "--repeats", "1", "--json", str(out)]) == 0
    data = json.loads(out.read_text())
    assert [(r["problem"], r["pass_"]) for r in data["rows"]] == [("transposed 4x4/2 256->128 8", name)
                                                                   for name in ("fwd", "dgrad", "wgrad")]
    assert all(r["convlayer"] > 0 and r["blas"] > 0 for r in data["rows"]) and len(data["gemm_gflops"]) == 2
    printed = capsys.readouterr().out
    assert all(f"{who}: " in printed and " of 3 passes below 70%" in printed for who in ("convlayer", "blas"))


def test_cores_runner(capsys, monkeypatch):
    """The shared-core probe runs on this machine's CPUs, flags a sample where a CPU slows under the share while
    all run, and rejects CPUs this process may not use."""
    from benchmarks import cores

    assert cores.main(["--samples", "2", "--size", "32", "--repeats", "2"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 3 and lines[0].startswith("sample   1") and lines[-1].endswith("while all ran")
    rates = {(0,): {0: 100.0}, (1,): {1: 90.0}}
    monkeypatch.setattr(cores, "_on", lambda cpus, size, repeats: rates.get(tuple(cpus), together))
    together = {0: 95.0, 1: 64.0}  # cpu1 at 71% of its 90 alone: not shared
    assert not cores.sample([0, 1], 8, 1)["shared"]
    together = {0: 95.0, 1: 62.0}  # 69%
    assert cores.sample([0, 1], 8, 1) == dict(alone={0: 100.0, 1: 90.0}, together=together, shared=True)
    with pytest.raises(SystemExit):
        cores.main(["--cpus", "0,0"])
    assert "must be distinct CPUs" in capsys.readouterr().err
