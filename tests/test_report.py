"""``python -m benchmarks.report``: BENCHMARKS.md generated from benchmark JSON (fixture folders of
tiny JSON), targets, missing fields, bad input; ``python -m panther bench --out`` feeds it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks.report import build, render
from benchmarks.report.__main__ import main as report_main
from benchmarks.report.areas import AREAS
from benchmarks.report.results import ReportError, load
from benchmarks.report.targets import evaluate
from panther.cli import main as panther_main
from panther.cli.bench import AREAS as CLI_AREAS
from panther.cli.bench import kind_from_name, run_bench

ROOT = Path(__file__).resolve().parents[1]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
GPU = {"device": "cuda", "device_name": "NVIDIA H200", "torch": "2.11.0+cu130", "triton": "3.6.0",
       "python": "3.12.3", "bandwidth_GBps": 4200.0, "when": "2026-11-21 10:00"}
CPU = {"device": "cpu", "device_name": "x86_64 (2 CPUs)", "torch": "2.13.0+cpu", "python": "3.11.7",
       "bandwidth_GBps": 9.4, "when": "2026-11-21 11:00"}


def _linear(tokens, d, L, k, mode, speedup, x_floor, dtype="bfloat16", **extra):
    return {"tokens": tokens, "in": d, "out": d, "L": L, "k": k, "dtype": dtype, "mode": mode, "dense_ms": 1.0,
            "4L_products_ms": 0.5 if mode == "fwd" else None, "sk_ms": 1 / speedup, "triton_ms": 1 / speedup,
            "floor_ms": 1 / speedup / x_floor, "sk_x_floor": x_floor, "sk_speedup": speedup,
            "triton_speedup": speedup, **extra}


GPU_RECORDS = {
    "linear": [
        _linear(8192, 8192, 1, 16, "fwd", 14.0, 1.2),  # fwd ≥ 18×: not met; × floor ≤ 1.3: met
        _linear(8192, 8192, 1, 16, "fwd+bwd", 12.0, 2.0),  # fwd+bwd ≥ 10×: met
        _linear(8192, 8192, 1, 64, "fwd", 19.0, 1.5),  # fwd ≥ 18×: met; × floor ≤ 1.3: not met
        _linear(8192, 8192, 1, 64, "fwd+bwd", 9.0, 2.0),  # fwd+bwd ≥ 10×: not met
        {k: v for k, v in _linear(4096, 4096, 1, 16, "fwd", 4.0, 2.7).items() if k != "triton_ms"},
    ],
    "bench_conv": [
        {"shape": "64x1024->1024 14x14", "impl": "nn.Conv2d", "pass": "fwd", "ms": 0.36, "floor_ms": 0.34,
         "x_floor": 1.06, "speedup_vs_dense": 1.0, "dtype": "bfloat16"},
        {"shape": "64x1024->1024 14x14", "impl": "SKConv2d L=1 k=16", "pass": "fwd", "ms": 0.09, "floor_ms": 0.012,
         "x_floor": 7.5, "speedup_vs_dense": 4.0, "dtype": "bfloat16"},
    ],
    "bench_attention": [
        {"N": N, "causal": causal, "pass": "fwd", "impl": impl, "ms": ms, "floor_ms": 0.2, "x_floor": ms / 0.2,
         "speedup_vs_sdpa": sdpa / ms, "dtype": "bfloat16", "B": 4, "H": 16, "D": 64, "m": 256}
        for N, causal, sdpa, impls in [
            (4096, False, 0.6, {"sdpa": 0.6, "panther": 3.0}),
            (16384, False, 9.0, {"sdpa": 9.0, "plain favor": 12.0, "panther": 12.8, "panther triton": 1.8}),
            (16384, True, 4.8, {"sdpa": 4.8, "panther": 23.0})]
        for impl, ms in impls.items()
    ],
    "sketch_apply": [
        {"op": "CountSketch apply", "m": 1 << 21, "n": 128, "d": 512, "ms": 0.8, "x floor": 1.4},
        {"op": "SRHT apply", "m": 1 << 21, "n": 128, "d": 512, "ms": 12.5, "x floor": 24.8},
        {"op": "CountSketch dense materialised @ A", "m": 1 << 18, "n": 128, "d": 512, "ms": 0.7, "x floor": 11.3},
        {"op": "fwht (n=8192, batched rows)", "m": 32768, "n": 8192, "d": 8192, "ms": 0.57, "x floor": 1.13},
    ],
    "cqrrpt": [
        {"op": "cqrrpt", "dtype": "float32", "m": 100000, "n": 256, "ms": 37.0, "cqrrpt speedup": None,
         "rel recon err": 5e-7, "orth err": 1e-5},
        {"op": "torch.linalg.qr", "dtype": "float32", "m": 100000, "n": 256, "ms": 56.0, "cqrrpt speedup": 1.51,
         "rel recon err": 2e-7, "orth err": 2e-6},
    ],
    "compile": [
        {"backend": "inductor", "layers": 2, "d": 256, "tokens": 512, "dtype": "bfloat16", "sketched_linears": 0,
         "compile_s": 10.0, "compile_vs_inductor": 1.0, "ms": 11.0, "tokens/s": 1e5, "speedup": 1.0, "graph_ms": 10.5,
         "graph_speedup": 1.0, "ro_ms": 10.6, "ro_speedup": 1.0, "floor_ms": 7.8, "x_floor": 1.4, "rel_err": 0.0},
        {"backend": "panther", "layers": 2, "d": 256, "tokens": 512, "dtype": "bfloat16", "sketched_linears": 12,
         "compile_s": 13.0, "compile_vs_inductor": 1.3, "ms": 5.0, "tokens/s": 2.2e5, "speedup": 2.2,
         "graph_ms": 4.2, "graph_speedup": 2.5, "ro_ms": 4.4, "ro_speedup": 2.4, "floor_ms": 2.4, "x_floor": 2.1,
         "rel_err": 1.4},
    ],
    "export": [
        {"model": "dense", "layers": 1, "d": 128, "tokens": 128, "dtype": "float32", "sketched_linears": 0,
         "weights": 1000, "package_MB": 1.3, "size_vs_dense": 1.0, "package_s": 38.0, "ms": 0.06, "floor_ms": 0.001,
         "x_floor": 60.0, "speedup": 1.0, "rel_err": 0.0},
        {"model": "panther", "layers": 1, "d": 128, "tokens": 128, "dtype": "float32", "sketched_linears": 6,
         "weights": 400, "package_MB": 0.8, "size_vs_dense": 0.62, "package_s": 4.5, "ms": 0.1, "floor_ms": 0.0005,
         "x_floor": 200.0, "speedup": 0.6, "rel_err": 1.1},
    ],
}
TUNER = {"meta": {"device": "x86_64", "threads": 2, "torch": "2.13.0+cpu", "trials": 10},
         "rows": [{"model": "all-MiniLM-L6-v2", "budget": 0.05, "objective": "flops", "sketched": "2/36",
                   "inits": "asvd", "cal_error": 0.02, "heldout_error": 0.029, "cos_mean": 0.9995, "cos_min": 0.999,
                   "flop_reduction": 1.006, "dense_ms": 21.0, "tuned_ms": 22.0, "speedup": 0.95,
                   "tune_s": 3.0}]}
MLP_CPU = [
    {"M": 2048, "hidden": 1024, "r": 32, "dtype": "float32", "unfused_ms": 3.5, "inductor_ms": 4.3, "fused_ms": 4.2,
     "speedup": 0.83, "vs_inductor": 1.02, "floor_ms": 1.8, "x_floor": 2.3, "rel_err": 3e-7},
    {"M": 512, "hidden": 1024, "r": 32, "dtype": "float32", "unfused_ms": 0.9, "inductor_ms": 1.1, "fused_ms": 1.2,
     "speedup": 0.75, "vs_inductor": 0.92, "floor_ms": 0.44, "x_floor": 2.7, "rel_err": 4e-7},
]
MLP_GPU = [
    {"M": M, "hidden": hidden, "r": 64, "dtype": "bfloat16", "unfused_ms": 0.09, "inductor_ms": 0.08,
     "fused_ms": fused, "speedup": 0.09 / fused, "vs_inductor": 0.08 / fused, "floor_ms": 0.02,
     "x_floor": fused / 0.02, "rel_err": 2e-3}
    for M, hidden, fused in ((8192, 4096, 0.06), (32768, 4096, 0.045))
]
FILES = {"linear": "linear", "bench_conv": "bench_conv", "bench_attention": "bench_attention",
         "sketch_apply": "sketch_apply", "cqrrpt": "cqrrpt", "compile": "compile", "export": "export"}


def _write(folder: Path, name: str, meta: dict, rows: list[dict]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    command = f"python -m benchmarks.bench_{name} --device {meta['device']} --out {folder}"
    record = {"benchmark": name, "command": command, **meta, "rows": rows}
    (folder / f"{name}_{meta['device']}.json").write_text(json.dumps(record))


@pytest.fixture
def results(tmp_path) -> Path:
    """A results folder with a GPU machine (every area but the tuner and mlp; no rsvd record) and a
    CPU machine (linear, mlp and the tuner's own JSON layout, which has no floor, command or date)."""
    root = tmp_path / "results"
    for name, rows in GPU_RECORDS.items():
        _write(root / "h200", name, GPU, rows)
    _write(root / "cpu", "linear", CPU, [_linear(2048, 4096, 1, 64, "fwd", 7.5, 1.9, dtype="float32")])
    _write(root / "cpu", "mlp", CPU, MLP_CPU)
    (root / "cpu" / "tuner.json").write_text(json.dumps(TUNER))
    return root


def _flat(text: str) -> str:
    """Whitespace runs as one space (table padding, line breaks in prose)."""
    return " ".join(text.split())


def _section(page: str, title: str) -> str:
    start = page.index(f"\n## {title}")
    end = page.find("\n## ", start + 1)
    return page[start:] if end < 0 else page[start:end]


def test_every_area_has_a_section_and_plots(results, tmp_path):
    out = tmp_path / "site" / "BENCHMARKS.md"
    page = build(results, out, tmp_path / "site" / "docs" / "img")
    assert out.read_text() == page
    for area in AREAS:
        section = _section(page, area.title)
        assert f"python -m panther bench {area.key}" in section
        assert "**Missing:**" in section
    assert "### NVIDIA H200 (`h200`)" in _section(page, "Convolution")
    assert "### x86_64 (2 threads) (`cpu`)" in _section(page, "Tuner on a pretrained model")
    for png in ("linear_h200.png", "attention_h200.png"):
        assert (tmp_path / "site" / "docs" / "img" / png).read_bytes()[:8] == PNG_MAGIC
        assert f"](docs/img/{png})" in page  # linked relative to the page
    # provenance: device, versions, date, the command without its --out, baseline and floor
    linear = _section(page, "Sketched linear")
    assert ("| h200 | linear | NVIDIA H200 | 2.11.0+cu130 | 3.6.0 | 2026-11-21 10:00 | "
            "`python -m benchmarks.bench_linear --device cuda` | `dense_ms`") in _flat(linear)
    assert "--out" not in linear
    # prose numbers are computed from the JSON
    assert "8192 tokens 1.2–1.5× at L·k < 128; 4096 tokens 2.7× at L·k < 128" in _flat(linear)
    assert "Applies against one read of A: CountSketch 1.4×, SRHT 24.8×" in _flat(page)
    assert ("runs at 2.2× Inductor's tokens/s in the default mode, 2.4× with `mode=\"reduce-overhead\"` for both "
            "(GPU work alone: 2.5×), with 1.3× its compile time") in _flat(page)


def test_targets_met_and_not_met(results):
    outcomes = {(o.target.what, o.machine): o for o in evaluate("linear", load(results))}
    big = "bf16, 8192 tokens, 8192→8192, L=1"
    expect = {  # (target, measured, met): both sides of >= and of <= limits
        f"fwd+bwd speed-up over nn.Linear, {big}, k=16": (12.0, True),
        f"fwd+bwd speed-up over nn.Linear, {big}, k=64": (9.0, False),
        f"fwd speed-up over nn.Linear, {big}, k=16": (14.0, False),
        f"fwd speed-up over nn.Linear, {big}, k=64": (19.0, True),
        f"fwd × floor, {big}, k=16": (1.2, True),
        f"fwd × floor, {big}, k=64": (1.5, False),
    }
    for what, (measured, met) in expect.items():
        o = outcomes[(what, "h200")]
        assert o.measured == pytest.approx(measured) and o.met is met, what
    cpu = outcomes[("fwd speed-up over nn.Linear, float32, 2048 tokens, 4096→4096, L=1, k=64", "cpu")]
    assert cpu.measured == pytest.approx(7.5) and cpu.met is False
    page, _ = render(results, "BENCHMARKS.md")
    compile_section = _flat(_section(page, "Compile end to end"))
    assert "backend='inductor' | h200 | >= 2× | 2.2× | met |" in compile_section
    assert "compile time of backend='panther' / backend='inductor' | h200 | <= 1.2× | 1.3× | **not met** |" \
        in compile_section
    attention = _flat(_section(page, "Attention"))
    assert "N=16384: SDPA time / best panther time | h200 | >= 4× | 5× | met |" in attention  # 9 / 1.8
    assert "causal fwd, N=16384: causal SDPA time / best panther time | h200 | >= 4× | 0.209× | **not met** |" \
        in attention


def test_missing_fields_show_a_dash_and_are_listed(results):
    page, _ = render(results, "BENCHMARKS.md")
    missing = next(line for line in page.splitlines() if line.startswith("**Missing:**"))
    # the tuner's JSON layout has no floor, command or date; the GPU machine has no rsvd record
    assert "tuner (cpu tuner: when, command, linears_floor_ms" in missing
    assert "h200 rsvd: no JSON" in missing
    assert "h200 cqrrpt: floor ms" in missing
    assert "cpu: no conv results" in missing and "h200: no tuner" not in missing  # the tuner runs on CPUs only
    tuner = _section(page, "Tuner on a pretrained model")
    run_row = next(line for line in tuner.splitlines() if line.startswith("| cpu "))
    cells = [c.strip() for c in run_row.strip("|").split("|")]
    assert cells[5:7] == ["—", "—"]  # date, command
    assert cells[-1] == "—" and cells[-2].startswith("`dense_ms`")  # no floor; the baseline is there
    linear = _section(page, "Sketched linear")
    row_4096 = next(line for line in linear.splitlines() if line.startswith("|     4096 |"))
    assert [c.strip() for c in row_4096.strip("|").split("|")][9] == "—"  # triton_ms absent from that row
    linalg = _section(page, "Randomized linear algebra")
    assert "| h200 | rsvd | — | — | — | — | — | — | — |" in _flat(linalg)
    assert "No randomized-SVD results from this machine." in linalg
    svd_target = [line for line in linalg.splitlines() if "8192×8192" in line][0]
    assert "no data" in svd_target


def test_area_without_gpu_results_renders_its_cpu_run_and_says_so(results):
    """mlp has CPU results only: its section shows the CPU table and prose, and a line that the
    GPU run is still to come, without failing on the absent GPU record."""
    page, _ = render(results, "BENCHMARKS.md")
    mlp = _section(page, "Fused low-rank MLP")
    assert "### x86_64 (2 CPUs) (`cpu`)" in mlp and "### NVIDIA H200" not in mlp
    assert "| 2048 | 1024 | 32 | float32 | 3.5 | 4.3 | 4.2 |" in _flat(mlp)
    assert ("_No GPU results yet: run `python -m panther bench mlp --device cuda` on a GPU machine "
            "(`benchmarks/gpu_all.sh` runs every area)._") in _flat(mlp)
    assert "(`vs_inductor` 0.92–1×); against the eager ops, `speedup` is 0.75–0.83×." in _flat(mlp)
    assert "**Missing:** mlp (h200: no mlp results)" in mlp
    assert "No CPU results yet" not in mlp
    assert "_No GPU results yet" not in _section(page, "Sketched linear")  # both machines ran it

    _write(results / "h200", "mlp", GPU, MLP_GPU)
    page, _ = render(results, "BENCHMARKS.md")
    mlp = _flat(_section(page, "Fused low-rank MLP"))
    assert "No GPU results yet" not in mlp and "**Missing:** nothing." in mlp
    assert "### NVIDIA H200 (`h200`)" in mlp
    assert "Fused against the unfused eager ops: 1.5–2×; against Inductor's compilation" in mlp
    assert "where the op takes the kernel eagerly too: gelu 32768×4096 r=64." in mlp  # 256 MiB of bf16


def test_two_records_of_one_benchmark_the_newer_wins(results, capsys):
    rows = [{**TUNER["rows"][0], "speedup": 1.7, "floor_ms": 5.0}]
    _write(results / "cpu", "tuner", {**CPU, "when": "2026-11-22 09:00"}, rows)  # tuner_cpu.json beside tuner.json
    cpu = next(m for m in load(results) if m.name == "cpu")
    assert cpu.records["tuner"]["rows"][0]["speedup"] == 1.7
    assert "two 'tuner' records; using the one measured 2026-11-22 09:00" in capsys.readouterr().err


def test_bad_input_names_the_argument(tmp_path, capsys):
    with pytest.raises(ReportError, match="--results: no such folder"):
        render(tmp_path / "nope", tmp_path / "B.md")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ReportError, match="--results: no benchmark JSON"):
        render(tmp_path / "empty", tmp_path / "B.md")
    with pytest.raises(SystemExit) as exc:
        report_main(["--results", str(tmp_path / "nope"), "--out", str(tmp_path / "B.md")])
    assert exc.value.code == 2 and "--results: no such folder" in capsys.readouterr().err
    assert not (tmp_path / "B.md").exists()
    assert run_bench("nosuch") == 2
    assert "unknown benchmark area 'nosuch'" in capsys.readouterr().err


def test_panther_bench_quick_writes_json_the_report_reads(tmp_path, capsys):
    out = tmp_path / "results" / "cpu"
    assert panther_main(["bench", "linear", "--quick", "--device", "cpu", "--out", str(out)]) == 0
    assert f"JSON in {out}" in capsys.readouterr().out
    record = json.loads((out / "linear_cpu.json").read_text())
    assert record["command"].startswith("python -m benchmarks.bench_linear --device cpu --quick")
    page, figures = render(tmp_path / "results", tmp_path / "BENCHMARKS.md")
    linear = _section(page, "Sketched linear")
    assert "`python -m benchmarks.bench_linear --device cpu --quick`" in linear
    assert "| 256 | 512 | 512 | 1 | 16 | fwd |" in _flat(linear)
    assert figures == []  # CPU results: the plots are of GPU runs


def test_repo_page_is_the_generator_output(monkeypatch):
    monkeypatch.chdir(ROOT)
    page, figures = render("benchmarks/results", "BENCHMARKS.md")
    assert page == (ROOT / "BENCHMARKS.md").read_text(), "rerun `python -m benchmarks.report`"
    assert all(f.path.is_file() for f in figures)


def test_areas_are_the_cli_areas():
    assert sorted(a.key for a in AREAS) == sorted(CLI_AREAS)
    assert load(ROOT / "benchmarks" / "results")  # the committed JSON parses


@pytest.mark.parametrize("name, kind", [("NVIDIA H200", "h200"), ("NVIDIA H100 80GB HBM3", "h100"),
                                        ("NVIDIA A100-SXM4-80GB", "a100"), ("NVIDIA GeForce RTX 4090", "rtx4090"),
                                        ("", "gpu")])
def test_machine_folder_names(name, kind):
    assert kind_from_name(name) == kind
