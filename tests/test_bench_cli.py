"""`fastrnn bench` end to end on a tiny grid (in-process), its parity gate, and its cuDNN rule.

The reference backend stands in for a contender: it is always present, and
breaking it on purpose must stop the run before anything is timed.
"""
import csv
import json
import platform
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from fastrnn import backends
from fastrnn.bench import cudnn
from fastrnn.bench.config import Config
from fastrnn.cli import main

TINY = ["--backends", "reference", "--seq-lens", "3,5", "--batch", "2", "--hidden", "4", "--budget", "0.01",
        "--device", "cpu"]


@pytest.fixture(autouse=True)
def one_thread():
    yield
    torch.set_num_threads(1)  # the CLI sets the thread count for the process; put the suite's back


def _run(tmp_path, *extra):
    return main(["bench", *TINY, "--out", str(tmp_path), *extra])


def test_help(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["bench", "--help"])
    assert exit_.value.code == 0
    text = capsys.readouterr().out
    for option in ("--full", "--cells", "--dtype", "--device", "--threads", "--out", "--backends",
                   "--seq-lens", "--batch", "--hidden", "--mode", "--input"):
        assert option in text


def test_module_entry_point_runs():
    done = subprocess.run([sys.executable, "-m", "fastrnn", "bench", "--help"], capture_output=True, text=True)
    assert done.returncode == 0 and "--seq-lens" in done.stdout


def test_tiny_run_writes_json_csv_table_and_plots(tmp_path, capsys):
    assert _run(tmp_path, "--cells", "lstm,gru_cell", "--threads", "2") == 0
    doc = json.loads((tmp_path / "results.json").read_text())
    meta = doc["meta"]
    assert meta["threads"] == 2 and meta["device"] == "cpu" and meta["torch"] == torch.__version__
    for key in ("cpu", "date_utc", "fastrnn", "triton", "machine", "command"):
        assert key in meta
    # The CPU's SIMD features, so that results from two machines can be told apart.
    assert meta["torch_cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    if platform.machine() == "x86_64":
        assert "sse4_2" in meta["cpu_simd"]

    records = doc["results"]
    # lstm: 2 T x 2 modes x 2 input forms; gru_cell: padded only -> 12 shapes, torch + reference each.
    assert len(records) == 24
    assert {(r["cell"], r["input"]) for r in records} == {("lstm", "padded"), ("lstm", "packed"),
                                                          ("gru_cell", "padded")}
    by_key = {(r["cell"], r["mode"], r["input"], r["seq_len"], r["impl"]): r for r in records}
    for (cell, mode, form, steps, impl), r in by_key.items():
        assert r["status"] == "ok" and r["threads"] == 2
        assert r["median_ms"] > 0 and r["rounds"] >= 3 and len(r["samples_ms"]) == r["rounds"]
        assert r["ms_per_step"] == pytest.approx(r["median_ms"] / steps)
        torch_ms = by_key[(cell, mode, form, steps, "torch")]["median_ms"]
        assert r["speedup"] == pytest.approx(torch_ms / r["median_ms"])
        expected_tokens = steps * 2 if form == "padded" else r["tokens"]
        assert r["tokens"] == expected_tokens and 2 <= r["tokens"] <= 2 * steps
        assert r["tokens_per_s"] == pytest.approx(r["tokens"] / (r["median_ms"] / 1e3))

    parity = doc["parity"]
    assert len(parity) == 12 and all(p["ok"] for p in parity)
    training = [p for p in parity if p["mode"] == "training"]
    assert training and all(
        "grad_input" in p["errors"] and any(name.startswith("grad_weight_hh") for name in p["errors"])
        for p in training
    )

    with open(tmp_path / "results.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 24 and {"median_ms", "speedup", "tokens_per_s", "threads"} <= set(rows[0])
    assert all(row["torch"] == torch.__version__ and row["cpu"] == meta["cpu"] for row in rows)

    table = (tmp_path / "table.md").read_text()
    assert "reference speedup" in table and table.count("\n| lstm") == 8
    for cell in ("lstm", "gru_cell"):
        png = (tmp_path / f"plot-{cell}.png").read_bytes()
        assert png.startswith(b"\x89PNG") and len(png) > 10_000
    out = capsys.readouterr().out
    assert "reference speedup" in out
    assert f"CPU: {meta['cpu']}, SIMD {' '.join(meta['cpu_simd'])}" in out


def _scaled(layer, factor_out=1.0, factor_grad=1.0):
    """A backend layer whose output is scaled by factor_out and whose gradients by factor_grad."""

    def wrong(spec, x, batch_sizes, h0, c0, weights, reverse):
        y, h, c = layer(spec, x, batch_sizes, h0, c0, weights, reverse)
        # value: factor_out * y; gradient flowing back: factor_grad times the true one
        y = factor_out * y.detach() + factor_grad * (y - y.detach())
        return y, h, c

    return wrong


def test_wrong_outputs_fail_loudly_before_timing(tmp_path, monkeypatch, capsys):
    reference = backends.get("reference")
    monkeypatch.setattr(reference, "layer", _scaled(reference.layer, factor_out=1.01))
    assert _run(tmp_path, "--cells", "gru", "--mode", "inference") == 1
    err = capsys.readouterr().err
    assert "PARITY FAILURE" in err and "reference on gru inference" in err and "out: error" in err
    doc = json.loads((tmp_path / "results.json").read_text())
    assert doc["results"] == [] and not any(p["ok"] for p in doc["parity"])


def test_wrong_gradients_fail_in_training_mode_only(tmp_path, monkeypatch, capsys):
    reference = backends.get("reference")
    monkeypatch.setattr(reference, "layer", _scaled(reference.layer, factor_grad=1.01))
    assert _run(tmp_path, "--cells", "lstm", "--mode", "inference") == 0
    assert _run(tmp_path, "--cells", "lstm", "--mode", "training", "--input", "packed") == 1
    err = capsys.readouterr().err
    assert "grad_input: error" in err and "grad_weight_ih_l0: error" in err and "out: error" not in err


def test_training_params_mode_asks_no_input_gradient(tmp_path):
    """--mode training_params: a first layer's training step, the parameters'
    gradients checked and the input's neither asked for nor compared."""
    assert _run(tmp_path, "--cells", "gru,lstm_cell", "--mode", "training_params", "--backends",
                "cpu,reference") == 0
    doc = json.loads((tmp_path / "results.json").read_text())
    assert {r["mode"] for r in doc["results"]} == {"training_params"}
    assert doc["parity"] and all(
        p["ok"] and "grad_input" not in p["errors"]
        and any(name.startswith("grad_weight_ih") for name in p["errors"])
        for p in doc["parity"]
    )


def test_declining_backend_is_recorded_not_timed(tmp_path, monkeypatch):
    monkeypatch.setattr(backends.get("reference"), "supports", lambda spec, x: "not today")
    assert _run(tmp_path, "--cells", "rnn_relu", "--mode", "inference", "--input", "padded") == 0
    records = json.loads((tmp_path / "results.json").read_text())["results"]
    ours = [r for r in records if r["impl"] == "reference"]
    assert len(ours) == 2 and all(r["status"] == "declined: not today" and "median_ms" not in r for r in ours)
    assert "not timed on 2 of 2 shapes: declined: not today" in (tmp_path / "table.md").read_text()


def test_default_backends_exclude_the_oracle():
    from fastrnn.bench.runner import default_backends

    chosen, _ = default_backends("cpu")
    assert "reference" not in chosen
    assert set(chosen) <= set(backends.available())


def test_bad_arguments_exit_2(tmp_path, capsys):
    assert _run(tmp_path, "--cells", "lstm_cel") == 2
    assert "unknown cell ['lstm_cel']" in capsys.readouterr().err
    assert main(["bench", "--backends", "nope", "--out", str(tmp_path)]) == 2
    assert _run(tmp_path, "--cells", "lstm_cell", "--input", "packed") == 2


def _shape(cell="lstm", dtype="float16", batch=64, hidden=256, mode="inference", form="padded", steps=100):
    return Config(cell, dtype, batch, hidden, mode, form, steps, "cuda")


@pytest.mark.parametrize(
    "cfg, device, forward, expected",
    [
        (_shape(form="packed"), (8, 0, 108), True, cudnn.STANDARD),  # packed: never persistent
        (_shape(dtype="float32", hidden=128), (8, 0, 108), True, cudnn.SMALL_H),  # LSTM fwd H <= 192
        (_shape(dtype="float32", hidden=192), (8, 0, 108), False, cudnn.STANDARD),  # LSTM bwd needs H <= 128
        (_shape(dtype="float64", hidden=128), (8, 0, 108), True, cudnn.STANDARD),  # no small-H for double
        (_shape(cell="rnn_tanh", dtype="float32", hidden=384), (8, 0, 108), True, cudnn.SMALL_H),
        (_shape(), (8, 0, 108), True, cudnn.PERSIST),  # fp16 LSTM, H % 128 == 0, A100-like
        (_shape(dtype="bfloat16"), (8, 0, 108), True, cudnn.STANDARD),  # persistent needs fp16
        (_shape(cell="gru"), (8, 0, 108), True, cudnn.STANDARD),  # GRU excluded on sm >= 8
        (_shape(), (8, 6, 108), True, cudnn.STANDARD),  # sm_86 excluded
        (_shape(), (9, 0, 132), True, cudnn.PERSIST),  # H100-like
        (_shape(batch=80), (7, 0, 80), True, cudnn.STANDARD),  # V100: batch 80 weeded out
        (_shape(hidden=320), (8, 0, 108), True, cudnn.STANDARD),  # H % 128 != 0
        (Config("lstm", "float16", 64, 256, "inference", "padded", 100, "cuda", 2), (9, 0, 132), True,
         cudnn.STANDARD),  # persistent needs one layer
        (Config("lstm", "float16", 64, 256, "inference", "padded", 100, "cuda", 1, True), (9, 0, 132),
         True, cudnn.STANDARD),  # ... and one direction
    ],
)
def test_cudnn_algorithm_rule(cfg, device, forward, expected):
    assert cudnn.algo(cfg, *device, forward=forward) == expected


def test_timing_repeats_short_calls_within_a_sample(monkeypatch):
    """A call shorter than min_sample_ms runs several times per sample, and
    the sample is the per-call mean; a long call runs once. The steps advance
    a fake clock instead of sleeping: a real sleep(1 ms) took over 5 ms on a
    loaded machine, and the test then saw one call per sample."""
    import types

    from fastrnn.bench import timing

    clock = [0.0]
    monkeypatch.setattr(timing, "time", types.SimpleNamespace(perf_counter=lambda: clock[0]))
    counts = {"short": 0, "long": 0}

    def step(name, seconds):
        def run():
            counts[name] += 1
            clock[0] += seconds
        return run

    result = timing.measure({"short": step("short", 0.001), "long": step("long", 0.006)}, "cpu",
                            budget_s=0.0, min_rounds=3, max_rounds=3, warmup=1, min_sample_ms=5.0)
    assert counts["long"] == 1 + 3
    assert counts["short"] == 1 + 3 * 5  # ceil(5 ms / 1 ms) calls per sample
    assert result["short"].samples_ms == pytest.approx([1.0] * 3)
    assert result["long"].samples_ms == pytest.approx([6.0] * 3)


def test_timing_interleaves_with_rotating_order():
    from fastrnn.bench import timing

    calls = []
    steps = {name: (lambda name=name: calls.append(name)) for name in ("torch", "a", "b")}
    result = timing.measure(steps, "cpu", budget_s=0.0, min_rounds=4, warmup=1, min_sample_ms=0.0)
    assert calls[:3] == ["torch", "a", "b"]  # warm-up round
    rounds = [calls[i : i + 3] for i in range(3, len(calls), 3)]
    assert rounds == [["torch", "a", "b"], ["a", "b", "torch"], ["b", "torch", "a"], ["torch", "a", "b"]]
    assert all(len(t.samples_ms) == 4 and t.median_ms >= 0 for t in result.values())


def _grid_json(path, ratio_by_hidden):
    """A results.json of one row per hidden size: torch 1 ms, cpu 1/ratio ms."""
    rows = []
    for hidden, ratio in ratio_by_hidden.items():
        shape = dict(cell="gru", mode="inference", input="padded", dtype="float32", batch=8,
                     hidden=hidden, seq_len=16, threads=1)
        for impl, ms in (("torch", 1.0), ("cpu", 1.0 / ratio)):
            rows.append(dict(shape, impl=impl, median_ms=ms, q1_ms=0.99 * ms, q3_ms=1.01 * ms))
    path.write_text(json.dumps({"results": rows}))
    return str(path)


GRID_COMPARE = [sys.executable, str(Path(__file__).parents[1] / "benchmarks" / "grid_compare.py")]


def test_grid_compare_reads_its_own_tables(tmp_path):
    """benchmarks/grid_compare.py compares two results.json, and a table it wrote
    (kept in the docs) can stand in for the earlier run: its "after" column is then
    the new table's "before"."""
    first = _grid_json(tmp_path / "a.json", {64: 0.9, 256: 1.5})
    second = _grid_json(tmp_path / "b.json", {64: 1.2, 256: 3.0})
    third = _grid_json(tmp_path / "c.json", {64: 1.1, 256: 2.0})
    table = subprocess.run(GRID_COMPARE + [first, second], capture_output=True, text=True, check=True).stdout
    assert "| gru | inference | 8 | 64 | 16 | 1 | 0.90x | 1.20x | 2% |" in table
    doc = tmp_path / "doc.md"
    doc.write_text("# Grid\n\n## 1 thread\n\n" + table + "\n## 2 threads\n\nnothing\n")
    again = subprocess.run(GRID_COMPARE + [str(doc), third, "--section", "## 1 thread"],
                           capture_output=True, text=True, check=True).stdout
    assert "| gru | inference | 8 | 64 | 16 | 1 | 1.20x | 1.10x | 2% |" in again
    assert "| gru | inference | 8 | 256 | 16 | 1 | 3.00x | 2.00x | 2% |" in again
    one_run = subprocess.run(GRID_COMPARE + [first], capture_output=True, text=True, check=True).stdout
    doc.write_text("# Grid\n\n## 2 threads\n\n" + one_run)
    after_one = subprocess.run(GRID_COMPARE + [str(doc), third, "--section", "## 2 threads"],
                               capture_output=True, text=True, check=True).stdout
    assert "| gru | inference | 8 | 64 | 16 | 1 | 0.90x | 1.10x | 2% |" in after_one


def test_grid_compare_tables_one_run(tmp_path):
    """With one results.json, benchmarks/grid_compare.py tables that run alone:
    each row's speedup (marked below 1.00x) and spread, then the summary."""
    run = _grid_json(tmp_path / "a.json", {64: 0.9, 256: 1.5})
    table = subprocess.run(GRID_COMPARE + [run], capture_output=True, text=True, check=True).stdout
    assert "| gru | inference | 8 | 64 | 16 | 1 | **0.90x** | 2% |" in table
    assert "| gru | inference | 8 | 256 | 16 | 1 | 1.50x | 2% |" in table
    assert "2 shapes. Below 1.00x: 1. Lowest: 0.90x. Median: 1.20x." in table


COMPARE_CHECKOUTS = [sys.executable, str(Path(__file__).parents[1] / "benchmarks" / "compare_checkouts.py")]


def test_compare_checkouts_times_named_shapes():
    """benchmarks/compare_checkouts.py --shape times the named shape in both
    checkouts (here the same one twice) and tables both medians and their ratio;
    a malformed shape stops it with the expected form."""
    root = str(Path(__file__).parents[1])
    table = subprocess.run(COMPARE_CHECKOUTS + [root, root, "--rounds", "1", "--shape",
                                                "RNNCell B2 H8 T0 inference"],
                           capture_output=True, text=True, check=True).stdout
    row = table.splitlines()[2]
    assert row.startswith("| RNNCell B2 H8 T0 inference | ") and row.count(" us |") == 2, table
    bad = subprocess.run(COMPARE_CHECKOUTS + [root, root, "--shape", "GRU 64 256 16 training"],
                         capture_output=True, text=True)
    assert bad.returncode != 0 and "expected 'CLASS B<n> H<n> T<n>" in bad.stderr
