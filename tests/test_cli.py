"""``python -m panther demo`` / ``bench``: a tiny demo end to end, the --model door, bad arguments."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from panther.cli import build_parser, main
from panther.cli.bench import BenchError, area_argv, checkout_root

ROOT = Path(__file__).resolve().parents[1]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _rows(results: dict) -> dict:
    return {r["model"].split(" (")[0].split(",")[0]: r for r in results["rows"]}


def test_demo_quick_end_to_end(tmp_path):
    out = tmp_path / "demo"
    proc = subprocess.run([sys.executable, "-m", "panther", "demo", "--quick", "--epochs", "2", "--trials", "4",
                           "--budget", "0.05", "--no-progress", "--out", str(out)],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    text = proc.stdout
    for stage in ("[1/5]", "[2/5]", "[3/5]", "[4/5]", "[5/5]", "linear MACs", "test", "verdict:"):
        assert stage in text
    for name in ("results.json", "plan.json", "pareto.png", "model.pt2"):
        assert (out / name).is_file(), name
    assert (out / "pareto.png").read_bytes()[:8] == PNG_MAGIC
    results = json.loads((out / "results.json").read_text())
    rows = _rows(results)
    assert set(rows) == {"dense", "sketched-trained", "tuned plan"}, list(rows)
    assert len(results["rows"]) == 4  # dense eager, sketched-trained, dense inductor, panther
    dense, sketched, tuned = rows["dense"], rows["sketched-trained"], rows["tuned plan"]
    assert 0.7 < dense["accuracy"] <= 1.0  # two epochs of Adam on digits: well above chance (0.1)
    assert 0.5 < sketched["accuracy"] <= 1.0
    assert sketched["parameters"] < dense["parameters"] and sketched["linear_macs_per_row"] < dense["linear_macs_per_row"]
    assert all(r["latency_ms"] > 0 for r in results["rows"])
    # the tuned plan is measured on the test images, which the tuner never saw
    assert tuned["relative_error"] <= 2 * results["budget"]
    assert abs(tuned["accuracy"] - dense["accuracy"]) <= 0.05
    if tuned["sketched layers"].startswith("0/"):
        assert tuned["linear_macs_per_row"] == dense["linear_macs_per_row"]
    else:
        assert tuned["linear_macs_per_row"] < dense["linear_macs_per_row"]
    assert results["export"]["round_trip_error"] < 1e-4
    assert json.loads((out / "plan.json").read_text())["layers"].keys() == {"fc1", "fc2", "fc3"}


FACTORY = '''
import torch
from torch import nn


def make():
    g = torch.Generator().manual_seed(0)
    model = nn.Sequential(nn.Linear(32, 256), nn.Tanh(), nn.Linear(256, 256), nn.Tanh(), nn.Linear(256, 8))
    with torch.no_grad():  # low-rank hidden weights: a sketch can keep them within the budget
        model[2].weight.copy_(torch.randn(256, 6, generator=g) @ torch.randn(6, 256, generator=g) / 40)
    return model, torch.randn(64, 32, generator=g)


def wrong():
    return nn.Linear(2, 2)
'''


@pytest.fixture
def factory_module(tmp_path, monkeypatch):
    (tmp_path / "tiny_factory.py").write_text(textwrap.dedent(FACTORY))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.chdir(tmp_path)
    return "tiny_factory"


def test_demo_user_callable(factory_module, tmp_path, capsys):
    out = tmp_path / "user_out"
    rc = main(["demo", "--model", f"{factory_module}:make", "--quick", "--trials", "4", "--budget", "0.05",
               "--no-progress", "--out", str(out)])
    text = capsys.readouterr().out
    assert rc == 0, text[-3000:]
    assert "sketched training skipped" in text
    results = json.loads((out / "results.json").read_text())
    assert [r["model"].split(",")[0].split(" (")[0] for r in results["rows"]] == ["dense", "dense", "tuned plan"]
    tuned = results["rows"][-1]
    assert tuned["accuracy"] is None
    assert tuned["sketched layers"] != "0/3", "the rank-6 hidden layer fits the budget"
    assert tuned["relative_error"] <= results["budget"]
    assert tuned["parameters"] < results["rows"][0]["parameters"]
    assert (out / "model.pt2").is_file() and results["export"]["round_trip_error"] < 1e-4


@pytest.mark.parametrize("spec, message", [
    ("no_such_module_xyz:make", "cannot import module 'no_such_module_xyz'"),
    ("tiny_factory:missing", "has no attribute 'missing'"),
    ("tiny_factory:wrong", "must return (model: torch.nn.Module, example_inputs)"),
    ("not_a_directory", "expected 'module:callable' or an existing Hugging Face model directory"),
])
def test_demo_bad_model_spec(factory_module, tmp_path, capsys, spec, message):
    rc = main(["demo", "--model", spec, "--out", str(tmp_path / "o"), "--no-progress"])
    assert rc == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "o").exists()  # nothing is written before the model loads


def test_demo_hf_dir_without_config(tmp_path, capsys):
    assert main(["demo", "--model", str(tmp_path), "--no-progress", "--out", str(tmp_path / "o")]) == 2
    assert "needs a config.json" in capsys.readouterr().err


@pytest.mark.parametrize("argv, message", [
    (["demo", "--budget", "1.5"], "--budget must be a number in (0, 1)"),
    (["demo", "--budget", "abc"], "--budget must be a number in (0, 1)"),
    (["demo", "--device", "tpu"], "invalid choice: 'tpu'"),
    (["demo", "--epochs", "0"], "--epochs must be a positive integer"),
    (["bench", "nosuch"], "invalid choice: 'nosuch'"),
    ([], "the following arguments are required"),
])
def test_bad_arguments(argv, message, capsys):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    assert message in capsys.readouterr().err


def test_bench_quick_one_area(capsys):
    assert main(["bench", "sketch", "--quick", "--device", "cpu"]) == 0
    text = capsys.readouterr().out
    assert "python -m benchmarks.bench_sketch --device cpu --quick" in text
    assert "CountSketch apply" in text and "x floor" in text


def test_bench_mlp_quick_writes_json(tmp_path, capsys):
    """``python -m panther bench mlp --quick`` (benchmarks/bench_mlp.py): one small row, every column."""
    assert main(["bench", "mlp", "--quick", "--device", "cpu", "--out", str(tmp_path)]) == 0
    assert "python -m benchmarks.bench_mlp --device cpu --quick" in capsys.readouterr().out
    record = json.loads((tmp_path / "mlp_cpu.json").read_text())
    assert record["benchmark"] == "mlp" and record["command"].endswith("--out OUT")
    (row,) = record["rows"]
    assert (row["form"], row["M"], row["hidden"], row["r"], row["dtype"]) == ("gelu", 256, 512, 16, "float32")
    for key in ("unfused_ms", "inductor_ms", "fused_ms", "floor_ms"):
        assert row[key] > 0, key
    assert row["speedup"] == pytest.approx(row["unfused_ms"] / row["fused_ms"])
    assert row["vs_inductor"] == pytest.approx(row["inductor_ms"] / row["fused_ms"])
    assert row["x_floor"] == pytest.approx(row["fused_ms"] / row["floor_ms"])
    assert row["rel_err"] < 1e-5  # float32 composite against float64


def test_bench_tuner_quick_writes_harness_json(tmp_path, capsys):
    from benchmarks.bench_tuner import main as bench_tuner

    record = bench_tuner(["--quick", "--device", "cpu", "--models", "mlp", "--trials", "2", "--repeats", "2",
                          "--out", str(tmp_path)])
    saved = json.loads((tmp_path / "tuner_cpu.json").read_text())
    assert saved["rows"] == record["rows"] and saved["torch"] and saved["device_name"]
    row = saved["rows"][0]
    assert row["model"] == "MLP 1024-2048-1024" and row["dense_ms"] > 0 and row["tuned_ms"] > 0
    assert 0 < row["linears_floor_ms"] <= row["dense_linears_floor_ms"] and row["flop_reduction"] > 1
    assert "| model" in capsys.readouterr().out  # the tabulate table


def test_bench_errors(tmp_path, capsys):
    with pytest.raises(BenchError, match="source checkout"):
        checkout_root(tmp_path)
    assert checkout_root() == ROOT
    assert area_argv("linear", "cpu", True, "o") == ["--device", "cpu", "--quick", "--out", "o"]
    assert area_argv("tuner", "cuda", True, "o") == ["--device", "cuda", "--quick", "--out", "o"]  # harness flags
    if not __import__("torch").cuda.is_available():
        assert main(["bench", "linear", "--device", "cuda"]) == 2
        assert "no CUDA device" in capsys.readouterr().err


def test_console_script_declared():
    text = (ROOT / "pyproject.toml").read_text()
    assert 'panther = "panther.cli:main"' in text
    assert build_parser().prog == "panther"


def test_help_lists_commands():
    proc = subprocess.run([sys.executable, "-m", "panther", "--help"], cwd=ROOT, capture_output=True, text=True,
                          timeout=120, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    assert proc.returncode == 0 and "demo" in proc.stdout and "bench" in proc.stdout


def test_hf_dir_loader(tmp_path):
    transformers = pytest.importorskip("transformers")
    from panther.cli.user_model import load_user_model

    config = transformers.BertConfig(vocab_size=50, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                     intermediate_size=64)
    transformers.BertModel(config).save_pretrained(tmp_path)
    model, inputs = load_user_model(str(tmp_path))
    assert isinstance(model, transformers.BertModel) and not model.training
    ids = inputs["input_ids"]
    assert ids.shape == (4, 16) and 0 <= int(ids.min()) and int(ids.max()) < 50  # no tokenizer: random ids
    assert model(**inputs).last_hidden_state.shape == (4, 16, 32)
