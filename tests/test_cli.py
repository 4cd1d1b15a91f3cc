import json
import subprocess
import sys

import numpy as np
import pytest

from convlayer import cli
from convlayer.data import load_raw


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    code = cli.main(["train", "--model", "lenet5", "--limit", "2048", "--epochs", "1", "--out", str(out),
                     "--quiet", "--seed", "1", "--threads", "1"])
    assert code == 0
    return out


def test_train_writes_model_figure_and_metrics(trained, capsys):
    assert (trained / "lenet5.safetensors").is_file()
    assert (trained / "lenet5.png").stat().st_size > 10_000
    metrics = json.loads((trained / "metrics.json").read_text())
    assert metrics["train_images"] == 2048 and 0.5 < metrics["test_accuracy"] <= 1.0


def test_evaluate_reproduces_the_saved_accuracy(trained, capsys):
    metrics = json.loads((trained / "metrics.json").read_text())
    assert cli.main(["evaluate", str(trained / "lenet5.safetensors"), "--quiet"]) == 0
    out = capsys.readouterr().out
    assert f"test accuracy {100 * metrics['test_accuracy']:.2f}%" in out


def test_predict_png_and_npy(trained, tmp_path, capsys):
    from PIL import Image

    images, labels = load_raw("test")
    Image.fromarray(images[0]).save(tmp_path / "digit.png")
    np.save(tmp_path / "digits.npy", images[1:4])
    assert cli.main(["predict", str(trained / "lenet5.safetensors"), str(tmp_path / "digit.png"),
                     str(tmp_path / "digits.npy")]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 4 and lines[0].startswith(str(tmp_path / "digit.png") + ": ")
    assert "digits.npy[2]: " in lines[3]


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_predict_rejects_non_finite_pixels(trained, tmp_path, capsys, bad):
    """A NaN (or infinite) pixel is an error naming the file, not a prediction of NaN probabilities."""
    images = np.zeros((2, 28, 28))
    images[1, 3, 4] = bad
    np.save(tmp_path / "bad.npy", images)
    assert cli.main(["predict", str(trained / "lenet5.safetensors"), str(tmp_path / "bad.npy")]) == 2
    captured = capsys.readouterr()
    assert "bad.npy: pixel values must be finite, got 1 NaN or infinite" in captured.err and not captured.out


def test_info(trained, capsys):
    assert cli.main(["info", str(trained / "lenet5.safetensors")]) == 0
    out = capsys.readouterr().out
    assert "60,850 parameters" in out and "ConnectionTableConv" in out
    assert "receptive field (first spatial axis): 32 inputs, effective stride 4" in out
    for shape in (["1", "3", "32", "32"], ["1", "1", "32"], ["2", "1", "32", "32", "5"]):  # not LeNet-5's input
        assert cli.main(["info", str(trained / "lenet5.safetensors"), "--input-shape", *shape]) == 2
        assert "input shape must be (N, 1, S1, S2)" in capsys.readouterr().err


@pytest.mark.parametrize("args, message", [
    (["train", "--batch-size", "0"], "argument --batch-size: must be a positive integer, got 0"),
    (["train", "--limit", "-5"], "argument --limit: must be a positive integer, got -5"),
    (["demo", "--epochs", "two"], "argument --epochs: must be a positive integer, got 'two'"),
    (["train", "--lr", "nan"], "argument --lr: must be a positive finite number, got nan"),
    (["evaluate", "m.safetensors", "--threads", "0"], "argument --threads: must be a positive integer, got 0"),
])
def test_bad_numbers_are_usage_errors(args, message, capsys):
    """Counts and the learning rate are checked as the arguments are parsed, before any data is read: a zero
    batch size was a ZeroDivisionError after loading MNIST, a negative ``--limit`` silently dropped the last
    images, and ``--limit 0`` trained on all of them."""
    with pytest.raises(SystemExit) as exit_info:
        cli.main(args)
    assert exit_info.value.code == 2 and message in capsys.readouterr().err


def test_clear_errors(tmp_path, capsys):
    assert cli.main(["evaluate", str(tmp_path / "nope.safetensors")]) == 2
    assert "model file not found" in capsys.readouterr().err
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x00" * 100)
    assert cli.main(["info", str(bad)]) == 2
    assert "error:" in capsys.readouterr().err
    assert cli.main(["train", "--data-dir", str(tmp_path / "missing"), "--out", str(tmp_path)]) == 2
    assert "data directory not found" in capsys.readouterr().err


@pytest.mark.parametrize("command", ["demo", "train", "evaluate", "predict", "info"])
def test_help(command):
    result = subprocess.run([sys.executable, "-m", "convlayer.cli", command, "--help"], capture_output=True,
                            text=True, check=True)
    assert "usage: convlayer" in result.stdout
