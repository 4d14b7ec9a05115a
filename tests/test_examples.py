"""Every example's --smoke run (seconds each), as a user runs it: a subprocess
writing into a temporary folder; its results file must parse and its picture
must be a PNG."""
import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXAMPLES = ("sentiment", "char_lm", "forecast", "gates")


@pytest.mark.parametrize("name", EXAMPLES)
def test_example_smoke(name, tmp_path):
    if name == "forecast":
        pytest.importorskip("statsmodels", reason="forecast.py reads statsmodels' bundled sunspots")
    env = dict(os.environ, PYTHONPATH=ROOT, OMP_NUM_THREADS="1")  # this checkout's fastrnn
    run = subprocess.run(
        [sys.executable, os.path.join(ROOT, "examples", f"{name}.py"), "--smoke", "--compare",
         "--out", str(tmp_path)],
        env=env, capture_output=True, text=True, timeout=300,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    assert "compare: torch.nn" in run.stdout
    with open(tmp_path / f"{name}.json") as f:
        results = json.load(f)
    with open(results["picture"], "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    assert results["compare"]["speedup"] > 0
