"""What torch.nn's cells return under torch.autocast, where fastrnn's ops alone
cannot tell: the autocast kernels of fastrnn::layer_fwd (csrc/autocast.cpp)
return what torch.nn's *modules* return, and a cell is one step of such a layer.

  CPU   LSTMCell's h and c keep the state's dtype: torch.nn's CPU cells run
        their products in the autocast dtype, then c' = f c + i g and
        h' = o tanh(c') meet the state (GRUCell, RNNCell: the op's dtypes are
        already torch.nn's).
  CUDA  every cell returns the autocast dtype (LSTMCell, GRUCell and RNNCell
        are on CUDA autocast's lower-precision list), where the layer op
        returns float16 as torch's _cudnn_rnn does.
"""
from __future__ import annotations

import torch
from torch import Tensor


def cell_result_dtype(lstm: bool, device_type: str, state: Tensor, result: Tensor) -> torch.dtype:
    """The dtype torch.nn's cell returns, given the op's `result` and the `state`
    passed in (or made, in the input's dtype)."""
    low = torch.get_autocast_dtype(device_type)
    if device_type == "cuda":
        return low
    if lstm:
        return torch.promote_types(state.dtype, low)
    return result.dtype
