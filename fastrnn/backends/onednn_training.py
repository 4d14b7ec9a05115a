"""A CPU LSTM layer trained on torch's own oneDNN LSTM where this machine runs it faster.

torch.nn trains a padded LSTM without projection on the CPU through oneDNN
(aten::mkldnn_rnn_layer and its backward), whose kernels fuse the gate math
into their products' register tiles. Where a layer's time goes into large
products (B = 64, H >= 256) oneDNN can lead fastrnn's loop: on an Intel Xeon
(Skylake-SP, 1 thread) torch.nn trained B = 64, H = 1024, T = 16 at 0.83x of
its time, and on an AMD EPYC Zen 4 B = 64, H = 256 at 0.90x (the backward's
products). At small batches fastrnn's loop wins by 1.5-26x. Which is faster
depends on the CPU, the shape and the thread count, so no threshold decides:
the first training calls of each shape race the two (`race`), and every later
call runs the faster.

Inference makes the same choice inside the op (layer_fwd.cpp, race_calls).
Training cannot: oneDNN's backward needs oneDNN's workspace, which
fastrnn::layer_fwd's contract (its workspace layout and fake kernel) does not
hold. So the choice is made here, before the op, and the oneDNN route is
ATen's differentiable op itself: its results and gradients are torch.nn's,
bit for bit.

Only eager calls race. Under torch.compile, torch.export, torch.jit.trace,
torch.func transforms, a dispatch mode (FakeTensor, make_fx) or CPU autocast
the layer runs fastrnn's op as before, so the traced graph and the autocast
dtypes do not depend on a race. FASTRNN_CPU_PRODUCTS pins the choice as it
pins inference's: `own` (and `stored`) never run oneDNN, `blas` always does;
unset, torch.use_deterministic_algorithms(True) pins the loop.
FASTRNN_CPU_VERBOSE=1 prints each decision to stderr.
"""
from __future__ import annotations

import functools
import os
import sys
import time
from typing import Callable, Optional

import torch
from torch import Tensor

_MODE_LSTM = 2  # mkldnn_rnn_layer's mode for LSTM (ATen's rnn mode enum)

# A race ends when each route has had WARMUPS untimed calls (oneDNN creating
# its kernels, fastrnn measuring its products) and then MIN_TIMED timed
# training calls (forward and backward) lasting MIN_SECONDS in all, or
# CLEAR_TIMED timed calls each of LONG_CALL seconds or more with a winner by
# 10%, or MAX_TIMED forward calls each (a layer whose backward never runs is
# decided on what was timed). race_calls' rule (product_choice.cpp): a long
# call is timed twice, as at B = 64, H = 1024 single training steps of either
# route scattered by 15% on a 2-core VM (550-650 ms), and one such pair had
# oneDNN 16% behind where the two ran equal (560 ms) afterwards. Every call
# of a race is a real training step, so a longer race costs only the slower
# route's excess on half its calls.
WARMUPS, MIN_TIMED, CLEAR_TIMED, MAX_TIMED = 1, 3, 2, 64
MIN_SECONDS, LONG_CALL = 2e-3, 2e-2
OWN, ONEDNN = 0, 1
ROUTE_NAMES = ("fastrnn loop", "ATen LSTM (oneDNN)")


class Race:
    """The timed training calls of one shape on each route, and the decision."""

    def __init__(self, key: tuple) -> None:
        self.key, self.calls = key, 0
        self.decided: Optional[int] = None
        self.forward: tuple[list[float], list[float]] = ([], [])
        self.backward: tuple[list[float], list[float]] = ([], [])

    def pick(self) -> tuple[int, bool]:
        """(route, timed) for the next call."""
        if self.decided is not None:
            return self.decided, False
        call, self.calls = self.calls, self.calls + 1
        return call % 2, call >= 2 * WARMUPS

    def add(self, route: int, forward: Optional[float] = None,
            backward: Optional[float] = None) -> None:
        if self.decided is not None:
            return
        if forward is not None:
            self.forward[route].append(forward)
        if backward is not None:
            self.backward[route].append(backward)
        self._decide()

    def best(self, route: int) -> float:
        """Fastest forward plus fastest backward, or the fastest forward alone
        where some route has no timed backward (a race decided on forwards)."""
        timed_both = bool(self.backward[OWN]) and bool(self.backward[ONEDNN])
        return min(self.forward[route]) + (min(self.backward[route]) if timed_both else 0.0)

    def _decide(self) -> None:
        done = [min(len(self.forward[r]), len(self.backward[r])) for r in (OWN, ONEDNN)]
        n = min(done)
        forwards = min(len(self.forward[OWN]), len(self.forward[ONEDNN]))
        if n == 0 and forwards < MAX_TIMED:
            return
        own, onednn = self.best(OWN), self.best(ONEDNN)
        fast, slow = min(own, onednn), max(own, onednn)
        total = min(sum(self.forward[r]) + sum(self.backward[r]) for r in (OWN, ONEDNN))
        enough = n >= MIN_TIMED and total >= MIN_SECONDS
        clear = n >= CLEAR_TIMED and fast >= LONG_CALL and fast < 0.9 * slow
        if enough or clear or forwards >= MAX_TIMED:
            self.decided = ONEDNN if onednn < own else OWN
            _report(self)


_RACES: dict[tuple, Race] = {}


def loop_won(key: tuple) -> bool:
    """Whether calls of this shape run the loop without further checks (a call
    oneDNN could not serve runs the loop too): its race chose the loop and
    FASTRNN_CPU_PRODUCTS does not pin oneDNN. What such a call still pays
    (the shape's key, the pin) is ~2.6 us of Python a layer call, about 1% of
    a B = 1, H = 64, T = 16 training step (~220 us)."""
    entry = _RACES.get(key)
    return entry is not None and entry.decided == OWN and _pinned() != ONEDNN


_PINS = {"": None, "auto": None, "own": OWN, "stored": OWN, "blas": ONEDNN}


def _pinned() -> Optional[int]:
    """FASTRNN_CPU_PRODUCTS's route, read each call and checked as the C++
    side checks it (product_choice.cpp, pinned()); unset, the loop under
    torch.use_deterministic_algorithms(True), where no race may decide."""
    pin = os.environ.get("FASTRNN_CPU_PRODUCTS", "")
    if pin not in _PINS:
        raise RuntimeError(
            f"fastrnn: FASTRNN_CPU_PRODUCTS must be own, blas, stored or auto, got '{pin}'")
    route = _PINS[pin]
    return OWN if route is None and _deterministic() else route


@functools.cache
def _bf16_on_onednn() -> bool:
    """Whether torch.nn runs a bfloat16 LSTM on oneDNN on this CPU (AVX-512 and
    newer); elsewhere its per-step path, which fastrnn's loop beats. The same
    op layer_fwd.cpp's onednn_bf16() asks."""
    check = getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", None)
    return bool(check()) if check is not None else False


# Bound once: each attribute walk (torch.jit.is_tracing, ...) costs ~0.1 us a
# call, and eligible() runs on every LSTM training call of a shape not yet
# decided for the loop.
_is_tracing = torch.jit.is_tracing
_deterministic = torch.are_deterministic_algorithms_enabled
_autocast_on = torch.is_autocast_enabled
_transforms_active = torch._C._are_functorch_transforms_active
_dispatch_modes = torch._C._len_torch_dispatch_stack
_mkldnn_enabled = torch._C._get_mkldnn_enabled
_HAS_MKLDNN = bool(torch._C._has_mkldnn)
_FLOAT32, _BFLOAT16 = torch.float32, torch.bfloat16


def eligible(spec, x: Tensor, batch_sizes: Tensor, h0: Tensor) -> bool:
    """Whether an LSTM training call outside torch.compile (the caller checks
    those three) may run on oneDNN: no projection, float32 (bfloat16 where
    oneDNN runs it), every step of B rows (packed sequences of different
    lengths take ATen's per-step path, which the loop beats), more than one
    step, no tracing, transform, dispatch mode or CPU autocast."""
    if spec.proj_size != 0 or type(x) is not Tensor or not _HAS_MKLDNN:
        return False
    steps, rows = batch_sizes.shape[0], x.shape[0]
    dtype = x.dtype
    return (steps > 1 and rows == steps * h0.shape[0] and rows > 0 and x.shape[1] > 0
            and (dtype == _FLOAT32 or (dtype == _BFLOAT16 and _bf16_on_onednn()))
            and _mkldnn_enabled() and not _transforms_active() and not _is_tracing()
            and _dispatch_modes() == 0 and not _autocast_on("cpu"))


def onednn_direction(x: Tensor, steps: int, h0: Tensor, c0: Tensor, weights,
                     reverse: bool) -> tuple[tuple[Tensor, Tensor, Tensor], object]:
    """One direction on ATen's oneDNN LSTM layer, as torch.nn trains it:
    ((y (N, H), h_n, c_n), the autograd node of its backward)."""
    w_ih, w_hh, b_ih, b_hh, _ = weights
    bias = b_ih is not None
    if not bias:  # oneDNN takes bias tensors either way; torch.nn passes zeros
        b_ih = b_hh = w_ih.new_zeros(w_ih.shape[0])
    seq = x.view(steps, h0.shape[0], x.shape[1])
    y, h_n, c_n, _ = torch.ops.aten.mkldnn_rnn_layer(
        seq, w_ih.contiguous(), w_hh.contiguous(), b_ih.contiguous(), b_hh.contiguous(),
        h0.contiguous(), c0.contiguous(), reverse, [], _MODE_LSTM, w_hh.shape[1], 1, bias,
        False, False, True)
    return (y.view(x.shape[0], y.shape[2]), h_n, c_n), y.grad_fn


def _report(race: Race) -> None:
    if os.environ.get("FASTRNN_CPU_VERBOSE", "") in ("", "0"):
        return
    dtype, B, I, H, bucket, kind, bias, threads = race.key
    print(f"fastrnn: LSTM layer training (race of calls), {dtype}, B {B} I {I} H {H}, "
          f"T <= {bucket}, {kind}{'' if bias else ', no bias'}, {threads} thread"
          f"{'' if threads == 1 else 's'}: {ROUTE_NAMES[OWN]} {race.best(OWN) * 1e6:.1f} us, "
          f"{ROUTE_NAMES[ONEDNN]} {race.best(ONEDNN) * 1e6:.1f} us -> "
          f"{ROUTE_NAMES[race.decided]}", file=sys.stderr)


def _time_backward(race: Race, route: int, nodes: list) -> None:
    """Adds the backward's time (every node of the call, summed) to the race
    once all of them have run."""
    state = {"left": len(nodes), "seconds": 0.0}

    def pre(_grad_outputs):
        state["start"] = time.perf_counter()

    def post(_grad_inputs, _grad_outputs):
        state["seconds"] += time.perf_counter() - state["start"]
        state["left"] -= 1
        if state["left"] == 0:
            race.add(route, backward=state["seconds"])

    for node in nodes:
        node.register_prehook(pre)
        node.register_hook(post)


def _nodes(results) -> list:
    """The distinct autograd nodes that made the tensors of (nested tuples of) results."""
    found: dict[int, object] = {}
    for r in results:
        for t in (r if isinstance(r, tuple) else (r,)):
            if t is not None and t.grad_fn is not None:
                found[id(t.grad_fn)] = t.grad_fn
    return list(found.values())


def race(key: tuple, own: Callable[[], tuple], onednn: Callable[[], tuple[tuple, list]]):
    """Runs one training call of the shape `key` on fastrnn's op (own() ->
    results) or on oneDNN (onednn() -> (results, its autograd nodes)), learning
    which is faster from this shape's first calls, and returns the results."""
    pin = _pinned()
    if pin is not None:
        return own() if pin == OWN else onednn()[0]
    entry = _RACES.get(key)
    if entry is None:
        entry = _RACES[key] = Race(key)
    route, timed = entry.pick()
    if not timed:
        return own() if route == OWN else onednn()[0]
    start = time.perf_counter()
    if route == OWN:
        results = own()
        nodes = _nodes(results)
    else:
        results, nodes = onednn()
    seconds = time.perf_counter() - start
    _time_backward(entry, route, nodes)
    entry.add(route, forward=seconds)
    return results


def race_key(x: Tensor, h0: Tensor, hidden: int, steps: int, kind: str, bias: bool) -> tuple:
    """(dtype, B, I, H, T rounded up to a power of two, direction(s), bias, threads)."""
    return (x.dtype, h0.shape[0], x.shape[1], hidden, 1 << (steps - 1).bit_length(), kind, bias,
            torch.get_num_threads())
