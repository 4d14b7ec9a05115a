"""Result dtypes under torch.autocast that fastrnn's ops alone cannot tell.

The autocast kernels of fastrnn::layer_fwd (csrc/autocast.cpp) return the
dtypes of torch.nn's CPU cell formulas (which also serve its cells, packed
modules and LSTM with proj_size) and, on CUDA, float16 as torch's _cudnn_rnn.
Two of torch.nn's paths differ, and only the module knows it is on them:

  CPU   a padded LSTM without projection, fed fp32: torch.nn runs it on oneDNN
        (mkldnn_rnn_layer, on CPU autocast's lower-precision list), so every
        result is in the autocast dtype.
  CUDA  the cells return the autocast dtype (LSTMCell, GRUCell and RNNCell are
        on CUDA autocast's lower-precision list), not _cudnn_rnn's float16.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor


def cell_dtype(device_type: str) -> Optional[torch.dtype]:
    """The dtype of a cell's results under autocast, where it is not the op's."""
    return torch.get_autocast_dtype(device_type) if device_type == "cuda" else None


def onednn_lstm_dtype(data: Tensor, proj_size: int) -> Optional[torch.dtype]:
    """The dtype of a padded LSTM's results where torch.nn would run it on
    oneDNN under CPU autocast (its use_mkldnn: CPU, oneDNN enabled, fp32 input,
    no projection); None elsewhere."""
    if (data.device.type != "cpu" or proj_size > 0 or data.dtype != torch.float32
            or not torch.is_autocast_enabled("cpu") or not torch.backends.mkldnn.is_available()
            or not torch._C._get_mkldnn_enabled()):
        return None
    return torch.get_autocast_dtype("cpu")
