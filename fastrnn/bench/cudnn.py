"""The cuDNN algorithm class torch.nn's call gets on a CUDA shape.

A transcription of PyTorch's own selection rule, `get_algo` with its helpers
`use_rnn_persist_small_h`, `use_persist_common_heuristics` and
`use_persist_device_heuristics` in aten/src/ATen/native/cudnn/RNN.cpp (read at
pytorch/pytorch commit 00fc08aa616fbdec70496aebee034ac90b083ff4). Forward and
backward are chosen separately (`forward` flag), so a training step may get two
classes. In order:

  1. proj_size != 0, or packed input                          -> standard
  2. not float64 and H small enough for the direction         -> persist_static_small_h
       (sm >= 6.0; forward: RNN H <= 384, LSTM/GRU H <= 192;
                   backward: RNN H <= 256, LSTM/GRU H <= 128)
  3. float16, 1 layer, unidirectional, H <= 1024, H % 128 == 0,
     I % 128 == 0, and the device rule below                   -> persist_static
  4. otherwise                                                 -> standard

Device rule: sm 7.5 never; other sm 7.x for batch multiples of 16 (not 80, 112)
or 8, with longer sequences for larger batches; sm >= 8 with >= 98 SMs and minor
version != 6: never for GRU, LSTM for B % 8 == 0 and B <= 128, RNN likewise but
not B >= 96 with H >= 896; every other device never.

The benchmark shapes have no projection and I = H. This says what torch would pick if it sends the call to cuDNN; single-step cells are
not cuDNN RNN calls and get "n/a".
"""
from __future__ import annotations

import torch

from .config import Config

STANDARD = "standard"
SMALL_H = "persist_static_small_h"
PERSIST = "persist_static"


def algo(cfg: Config, major: int, minor: int, sm_count: int, forward: bool) -> str:
    if cfg.packed:
        return STANDARD
    rnn = cfg.kind.startswith("RNN")
    if cfg.dtype != "float64" and major >= 6:
        limit = (384 if rnn else 192) if forward else (256 if rnn else 128)
        if cfg.hidden <= limit:
            return SMALL_H
    # use_persist_common_heuristics (I = H by construction)
    common = (cfg.layers == 1 and not cfg.bidirectional and cfg.hidden <= 1024
              and cfg.hidden % 128 == 0)
    if cfg.dtype == "float16" and common and _device_allows(cfg, major, minor, sm_count):
        return PERSIST
    return STANDARD


def _device_allows(cfg: Config, major: int, minor: int, sm_count: int) -> bool:
    b, t = cfg.batch, cfg.seq_len
    if major == 7:
        if minor == 5:
            return False
        return ((b % 16 == 0 and b not in (80, 112)) or b == 8) and (
            (t >= 40 and b <= 128) or (t >= 20 and b <= 96) or (t >= 10 and b <= 32)
        )
    if major >= 8 and sm_count >= 98 and minor != 6:
        if cfg.kind == "GRU":
            return False
        if cfg.kind == "LSTM":
            return b % 8 == 0 and b <= 128
        return b % 8 == 0 and b <= 128 and (b < 96 or cfg.hidden < 896)
    return False


def algo_class(cfg: Config) -> str:
    """'fwd' or 'fwd/bwd' class names for this shape on its CUDA device."""
    if cfg.is_cell:
        return "n/a"
    if not (torch.backends.cudnn.is_available() and torch.backends.cudnn.enabled):
        return "cuDNN disabled"
    props = torch.cuda.get_device_properties(torch.device(cfg.device))
    args = (props.major, props.minor, props.multi_processor_count)
    fwd = algo(cfg, *args, forward=True)
    if not cfg.training:
        return fwd
    return f"{fwd}/{algo(cfg, *args, forward=False)}"
