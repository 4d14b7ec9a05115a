"""Results on disk: JSON (everything, with the metadata) and CSV (one row per config x implementation).

A record is a flat dict (a CSV row, plus the run's date, machine, CPU, GPU and
versions in each CSV row): the Config's fields, then
    impl          "torch" or a fastrnn backend name
    status        "ok", or why the backend did not serve this shape (nothing timed)
    tokens        non-padding time steps in the batch (T * B padded, sum of lengths packed)
    median_ms, q1_ms, q3_ms, rounds, samples_ms (JSON only)
    ms_per_step   median_ms / T
    tokens_per_s  tokens / median
    speedup       torch's median / this median (torch: 1.0)
    threads, cudnn_algo (CUDA only)

`load` reads these files back, and also pytest-benchmark's JSON from the
benchmarks/ suite (whose extra_info carries the same config fields), so the
plotter serves both.
"""
from __future__ import annotations

import csv
import json
import os
from typing import Iterable

from .workload import TORCH

CONFIG_KEYS = ("cell", "dtype", "batch", "hidden", "mode", "input", "seq_len", "device", "layers",
               "bidirectional")
# Fields that older result files and the benchmarks/ suite do not carry.
CONFIG_DEFAULTS = {"layers": 1, "bidirectional": False}
CSV_KEYS = CONFIG_KEYS + (
    "impl", "status", "tokens", "median_ms", "q1_ms", "q3_ms", "rounds",
    "ms_per_step", "tokens_per_s", "speedup", "threads", "cudnn_algo",
)
# Every CSV row also carries the run's metadata, so a CSV file stands on its own.
META_CSV_KEYS = ("date_utc", "machine", "cpu", "gpu", "torch", "triton", "fastrnn")
JSON_NAME, CSV_NAME = "results.json", "results.csv"


def derive(records: list[dict]) -> list[dict]:
    """Fills ms_per_step, tokens_per_s and speedup (against torch on the same config) in place."""
    torch_ms = {_key(r): r["median_ms"] for r in records if r["impl"] == TORCH and r.get("median_ms")}
    for r in records:
        ms = r.get("median_ms")
        if not ms:
            continue
        r["ms_per_step"] = ms / r["seq_len"]
        r["tokens_per_s"] = r["tokens"] / (ms / 1e3)
        base = torch_ms.get(_key(r))
        r["speedup"] = base / ms if base else None
    return records


def _key(record: dict) -> tuple:
    return tuple(record[k] for k in CONFIG_KEYS)


def write(out_dir: str, meta: dict, records: list[dict], parity: list[dict]) -> tuple[str, str]:
    os.makedirs(out_dir, exist_ok=True)
    json_path, csv_path = os.path.join(out_dir, JSON_NAME), os.path.join(out_dir, CSV_NAME)
    with open(json_path, "w") as f:
        json.dump({"meta": meta, "results": records, "parity": parity}, f, indent=1)
    with open(csv_path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=CSV_KEYS + META_CSV_KEYS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows({**r, **{k: meta.get(k) for k in META_CSV_KEYS}} for r in records)
    return json_path, csv_path


def load(paths: Iterable[str]) -> tuple[list[dict], list[dict]]:
    """(metadata of each file, records of all files) from CLI or pytest-benchmark JSON."""
    metas, records = [], []
    for path in paths:
        with open(path) as f:
            doc = json.load(f)
        if "results" in doc:
            metas.append(doc["meta"])
            records.extend({**CONFIG_DEFAULTS, **r} for r in doc["results"])
        elif "benchmarks" in doc:
            metas.append({"source": "pytest-benchmark", **doc.get("machine_info", {}), **doc.get("commit_info", {})})
            records.extend(derive([_from_pytest_benchmark(b) for b in doc["benchmarks"]]))
        else:
            raise ValueError(f"{path}: neither `fastrnn bench` nor pytest-benchmark JSON")
    return metas, records


def _from_pytest_benchmark(bench: dict) -> dict:
    info, stats = bench["extra_info"], bench["stats"]
    return {
        **{k: info[k] if k in info else CONFIG_DEFAULTS[k] for k in CONFIG_KEYS},
        "impl": info["impl"],
        "status": "ok",
        "tokens": info["tokens"],
        "median_ms": stats["median"] * 1e3,
        "q1_ms": stats["q1"] * 1e3,
        "q3_ms": stats["q3"] * 1e3,
        "rounds": stats["rounds"],
        "threads": info.get("threads"),
    }
