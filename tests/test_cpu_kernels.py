"""The native CPU kernels (fastrnn::layer_fwd / layer_bwd) at the op level.

Differential against the pure-PyTorch oracle (backends/reference.py) for
outputs, final states and every gradient; gradcheck in float64; opcheck for
both ops; NaN-poisoned output buffers; bad inputs; torch.compile.
"""
import contextlib
import os
import re
import subprocess
import sys

import pytest
import torch

import fastrnn
from fastrnn.backends import get
from fastrnn.backends.base import GATES, LayerSpec, LayerWeights
from fastrnn.backends.reference import run_layer

_ops = pytest.importorskip("fastrnn._ops", reason="fastrnn._C is not built")

PACKED = [5, 5, 4, 2, 2, 1]  # shrinking batch (packed sequence)
PADDED = [3] * 4  # batch_sizes of a padded batch
CONFIGS = [  # (mode, proj_size)
    ("LSTM", 0),
    ("LSTM", 3),
    ("GRU", 0),
    ("RNN_TANH", 0),
    ("RNN_RELU", 0),
]


def make_case(mode, proj=0, bias=True, sizes=PACKED, input_size=7, hidden=5, dtype=torch.float64,
              seed=0, scale=0.4):
    """Fresh random inputs in float64 (standard deviation `scale`), rounded to
    `dtype`'s precision (so an oracle in float64 sees exactly the values the
    kernel sees), returned in float64."""
    gen = torch.Generator().manual_seed(seed)
    gates, out = GATES[mode], proj or hidden

    def rand(*shape):
        return (torch.randn(*shape, generator=gen, dtype=torch.float64) * scale).to(dtype).double()

    batch = sizes[0]
    weights = LayerWeights(
        rand(gates * hidden, input_size),
        rand(gates * hidden, out),
        rand(gates * hidden) if bias else None,
        rand(gates * hidden) if bias else None,
        rand(out, hidden) if proj else None,
    )
    spec = LayerSpec(mode, input_size, hidden, proj, bias)
    x = rand(sum(sizes), input_size)
    h0 = rand(batch, out)
    c0 = rand(batch, hidden) if mode == "LSTM" else None
    return spec, x, torch.tensor(sizes), h0, c0, weights


def leaves(x, h0, c0, weights, dtype):
    """The inputs as fresh leaves of `dtype` requiring grad; None stays None."""
    def leaf(t):
        return None if t is None else t.detach().to(dtype).requires_grad_()

    return leaf(x), leaf(h0), leaf(c0), LayerWeights(*(leaf(w) for w in weights))


def outputs_and_grads(fn, spec, x, sizes, h0, c0, weights, reverse, dtype, seed=1):
    x, h0, c0, weights = leaves(x, h0, c0, weights, dtype)
    outs = [o for o in fn(spec, x, sizes, h0, c0, weights, reverse) if o is not None]
    gen = torch.Generator().manual_seed(seed)
    cotangents = [torch.randn(o.shape, generator=gen, dtype=torch.float64).to(dtype) for o in outs]
    inputs = [t for t in (x, h0, c0, *weights) if t is not None]
    grads = torch.autograd.grad(outs, inputs, cotangents)
    return [o.detach().double() for o in outs], [g.double() for g in grads]


TOLERANCE = {  # (atol, rtol)
    torch.float64: (1e-12, 1e-10),
    torch.float32: (2e-5, 1e-4),
    torch.bfloat16: (3e-2, 3e-2),
}


def assert_matches_oracle(case, reverse, threads, dtype=torch.float64, tolerance=None):
    """The native op on `threads` threads, run in `dtype`, gives the float64
    oracle's outputs and gradients within `dtype`'s tolerance (or the
    (atol, rtol) given)."""
    want_out, want_grad = outputs_and_grads(run_layer, *case, reverse, torch.float64)
    with num_threads(threads):
        got_out, got_grad = outputs_and_grads(_ops.layer, *case, reverse, dtype)
    atol, rtol = tolerance or TOLERANCE[dtype]
    for got, want in zip(got_out + got_grad, want_out + want_grad, strict=True):
        torch.testing.assert_close(got, want, atol=atol * want.abs().max().item(), rtol=rtol)


@pytest.mark.parametrize("dtype", list(TOLERANCE), ids=str)
@pytest.mark.parametrize("reverse", [False, True], ids=["fwd", "rev"])
@pytest.mark.parametrize("sizes", [PACKED, PADDED], ids=["packed", "padded"])
@pytest.mark.parametrize("mode,proj", CONFIGS)
def test_matches_reference(mode, proj, sizes, reverse, dtype):
    case = make_case(mode, proj, sizes=sizes, hidden=21, input_size=19, dtype=dtype)
    assert_matches_oracle(case, reverse, 1, dtype)


@contextlib.contextmanager
def num_threads(n):
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize("mode,proj", CONFIGS)
def test_no_bias_and_two_threads(mode, proj):
    """bias=False, and a 2-thread run (batch split into tiles) equals the oracle."""
    case = make_case(mode, proj, bias=False, sizes=[9, 9, 7, 3, 3, 1], hidden=34)
    want_out, want_grad = outputs_and_grads(run_layer, *case, False, torch.float64)
    with num_threads(2):
        got_out, got_grad = outputs_and_grads(_ops.layer, *case, False, torch.float64)
    for got, want in zip(got_out + got_grad, want_out + want_grad):
        torch.testing.assert_close(got, want, atol=1e-12, rtol=1e-10)


# Sizes that make 2 threads split the hidden units of one loop (steps.h,
# split_hidden): H >= 256 with B <= 8, or H = 128 with B = 1. Packed sizes in
# both directions cover rows that end (forward) and join (reverse) mid-loop.
SPLIT_CASES = [([5, 5, 4, 2, 2, 1], 256), ([1, 1, 1], 128)]


@pytest.mark.parametrize("reverse", [False, True], ids=["fwd", "rev"])
@pytest.mark.parametrize("sizes,hidden", SPLIT_CASES, ids=["B5H256", "B1H128"])
@pytest.mark.parametrize("mode", ["LSTM", "GRU", "RNN_TANH", "RNN_RELU"])
def test_two_threads_split_hidden(mode, sizes, hidden, reverse, monkeypatch):
    """Threads sharing one loop (hidden slices, a barrier per step) match the
    oracle in float64 and give bitwise the 1-thread result in float32 (with the
    products on fastrnn's blocks: BLAS promises no bitwise equality)."""
    monkeypatch.setenv("FASTRNN_CPU_PRODUCTS", "own")
    case = make_case(mode, sizes=sizes, hidden=hidden, input_size=9)
    want_out, want_grad = outputs_and_grads(run_layer, *case, reverse, torch.float64)
    with num_threads(2):
        got_out, got_grad = outputs_and_grads(_ops.layer, *case, reverse, torch.float64)
        two = outputs_and_grads(_ops.layer, *case, reverse, torch.float32)
    atol, rtol = TOLERANCE[torch.float64]
    for got, want in zip(got_out + got_grad, want_out + want_grad):
        torch.testing.assert_close(got, want, atol=atol * want.abs().max().item(), rtol=rtol)
    with num_threads(1):
        one = outputs_and_grads(_ops.layer, *case, reverse, torch.float32)
    # Bitwise equal: the loops' outputs and every gradient (gemm.cpp gives each
    # element of C to one thread, summing K in the same order; column_sums
    # adds each column in row order).
    assert_bitwise(two, one)


@pytest.mark.skipif(not fastrnn._C.cpu_bf16_rows_kernels,
                    reason="built without AVX-512: no rows_times_wt_f32")
@pytest.mark.parametrize("reverse", [False, True], ids=["fwd", "rev"])
@pytest.mark.parametrize("sizes,hidden,threads", [(*case, 2) for case in SPLIT_CASES] + [
    (PACKED, 21, 1), (PACKED, 21, 2)], ids=["B5H256-split", "B1H128-split", "tiles", "tiles2"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("mode", ["LSTM", "GRU", "RNN_TANH", "RNN_RELU"])
def test_steps_on_stored_w_hh(mode, sizes, hidden, threads, reverse, dtype, monkeypatch):
    """The float32 loop's step product reading W_hh as stored, nothing packed
    (rows_step: rows_times_wt_f32; layer_fwd.cpp, plan_forward), pinned by
    FASTRNN_CPU_PRODUCTS=stored: hidden slices (each gate's rows of a slice)
    and batch tiles (every column; H = 21, a masked tail of 5 after 16), rows
    joining and leaving mid-loop, both directions, outputs and gradients
    against the oracle. bfloat16 with I = 9, which the bf16 dot products
    cannot take: the float32 loop, reading W_hh's bfloat16 as stored
    (rows_times_wt_bf16's fp32-A form)."""
    monkeypatch.setenv("FASTRNN_CPU_PRODUCTS", "stored")
    case = make_case(mode, sizes=sizes, hidden=hidden, input_size=9, dtype=dtype)
    assert_matches_oracle(case, reverse, threads, dtype)


def assert_bitwise(got, want):
    for g, w in zip(got[0] + got[1], want[0] + want[1], strict=True):
        torch.testing.assert_close(g, w, atol=0, rtol=0)


@pytest.mark.parametrize("reverse", [False, True], ids=["fwd", "rev"])
@pytest.mark.parametrize("mode", ["LSTM", "GRU", "RNN_TANH"])
def test_many_rows_wide_weights(mode, reverse):
    """More rows than one register block (8) against weights wider than the
    small GEMM's L2 column chunk (small_gemm.cpp): H = 300 gives several
    chunks, the last one ragged, in both the forward and backward products."""
    assert_matches_oracle(make_case(mode, sizes=[10, 10, 9], hidden=300, input_size=5), reverse, 1)


# The loop's two forms of the input projection and the single-step path
# (steps.h, project_per_step; layer_fwd.cpp): >= 8 rows per thread with T > 1
# project each step inside the loop (with 2 threads: batch tiles of 8, or at
# H = 256 every thread's slice of the hidden units); fewer rows use the
# hoisted GEMM; T = 1 with weights over 16K elements (64K in backward; H = 256
# here) runs its products by BLAS without packing, small ones (H = 21) the
# path of every other length (layer_args.h, blas_single_step).
# Packed sizes let the live rows drop below 8 mid-loop.
FORM_CASES = {  # id: (batch_sizes, threads, hidden)
    "per_step": ([9, 9, 8, 8, 3], 1, 21),
    "per_step_tiles": ([16, 16, 12], 2, 21),
    "per_step_split": ([8, 8, 5], 2, 256),
    "single_step": ([6], 1, 21),
    "single_step_split": ([6], 2, 256),
}


@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("reverse", [False, True], ids=["fwd", "rev"])
@pytest.mark.parametrize("form", list(FORM_CASES))
@pytest.mark.parametrize("mode,proj", CONFIGS)
def test_projection_forms_and_single_step(mode, proj, form, reverse, bias):
    sizes, threads, hidden = FORM_CASES[form]
    case = make_case(mode, proj, bias=bias, sizes=sizes, hidden=hidden, input_size=11)
    assert_matches_oracle(case, reverse, threads)


@pytest.mark.parametrize("pin", ["own", "blas"])
@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("batch", [1, 5])
@pytest.mark.parametrize("mode,proj", CONFIGS)
def test_float32_single_step_products(mode, proj, batch, threads, pin, monkeypatch):
    """A float32 single step with large weights (a cell; blas_single_step in
    layer_fwd.cpp) runs its forward products x @ W_ih^T + b_ih and
    h @ W_hh^T + b_hh on rows_times_wt_f32 (gemv_bf16.h; own pins it where the
    build has AVX-512, prefer_rows_f32_single_step) or on ATen's addmm
    (blas): K = 37 (two 16-lane chunks and a masked tail of 5) and 257 or 3
    (a tail of 1; the projection's P = 3 below one chunk), gate columns 1028
    / 771 / 257 (blocks of 4 weight rows, then 0, 3 or 1 left), rows 1 and 5
    (blocks of 4, then 1), the columns shared by 2 threads; outputs and
    gradients against the float64 oracle."""
    monkeypatch.setenv("FASTRNN_CPU_PRODUCTS", pin)
    case = make_case(mode, proj, sizes=[batch], hidden=257, input_size=37, dtype=torch.float32,
                     scale=0.4 * (37 / 257) ** 0.5)
    assert_matches_oracle(case, False, threads, torch.float32)


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("hidden", [70, 130])
@pytest.mark.parametrize("mode,proj", [("LSTM", 0), ("LSTM", 5), ("GRU", 0)])
def test_large_products(mode, proj, hidden, threads, monkeypatch):
    """The products around the loops (gemm.cpp) past one K slice (256 tokens)
    and a ragged last 8-row block: N = 375 tokens in both projection forms
    (B = 9 per step, and B = 3 for the hoisted one), G*H = 3 or 4 * hidden
    gradient rows split between threads. At hidden = 130 a float64 row of dG
    is over 4 KiB, so the weight gradients read it through transposed slices
    (with a ragged last group of 128 rows); at 70, in place. Weights scale
    with 1/sqrt(hidden), so that W_hh stretches h alike at both sizes. (No
    RNN: with these weights a 125-step tanh recurrence is chaotic and
    amplifies float64 rounding past the tolerance; RNN runs the same
    products.) On fastrnn's blocks, whose bitwise thread independence is
    checked; test_products_on_blas_or_blocks covers the choice."""
    monkeypatch.setenv("FASTRNN_CPU_PRODUCTS", "own")
    for sizes in ([9] * 40 + [7, 5, 3], [3] * 125):
        case = make_case(mode, proj, sizes=sizes, hidden=hidden, input_size=33,
                         scale=0.4 * (70 / hidden) ** 0.5)
        assert_matches_oracle(case, False, threads)
        if threads == 2:  # N x G*H > 64K: the bias column sums split too
            runs = []
            for n in (2, 1):
                with num_threads(n):
                    runs.append(outputs_and_grads(_ops.layer, *case, False, torch.float32))
            assert_bitwise(*runs)


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("reverse", [False, True], ids=["fwd", "rev"])
@pytest.mark.parametrize("mode,proj", CONFIGS)
def test_backward_in_step_ranges(mode, proj, reverse, threads, monkeypatch):
    """The backward loop in ranges of steps, each range's products right after
    it (layer_bwd.cpp, step_ranges): ranges of >= 7 rows cut a packed batch
    (9..1 rows a step) at uneven steps, both directions, 1 and 2 threads (at
    H = 256 the 2 threads split the hidden units), against the oracle; and
    bitwise equal to one range in float32 but for dW (summed by range), with
    the products on fastrnn's blocks."""
    monkeypatch.setenv("FASTRNN_CPU_RANGE_ROWS", "7")
    monkeypatch.setenv("FASTRNN_CPU_PRODUCTS", "own")
    sizes = [9, 9, 8, 8, 6, 5, 5, 3, 2, 2, 1]
    hidden = 256 if threads == 2 and proj == 0 else 13
    case = make_case(mode, proj, sizes=sizes, hidden=hidden, input_size=6)
    assert_matches_oracle(case, reverse, threads)
    with num_threads(threads):
        ranged = outputs_and_grads(_ops.layer, *case, reverse, torch.float32)
        monkeypatch.delenv("FASTRNN_CPU_RANGE_ROWS")
        whole = outputs_and_grads(_ops.layer, *case, reverse, torch.float32)
    # y, h_n, (c_n), dx, dh0, (dc0) do not depend on the ranges.
    states = 2 if mode == "LSTM" else 1
    assert_bitwise((ranged[0], ranged[1][: 1 + states]), (whole[0], whole[1][: 1 + states]))


@pytest.mark.parametrize("mode,proj", [("LSTM", 3), ("GRU", 0), ("RNN_TANH", 0)])
def test_products_on_blas_or_blocks(mode, proj, monkeypatch):
    """The products around the loops run on fastrnn's blocks or on BLAS, as
    measured once per shape (product_choice.h): both pinned forms and the
    measured choice match the oracle, ranges included. (The measured forward
    may mix the two: the step product on one, the input projection on the
    other, so it need not equal either pinned form bitwise.)"""
    case = make_case(mode, proj, sizes=[9] * 30 + [7, 5, 3], hidden=24, input_size=17)
    for pin in ("own", "blas", "auto"):
        monkeypatch.setenv("FASTRNN_CPU_PRODUCTS", pin)
        assert_matches_oracle(case, False, 1)
        monkeypatch.setenv("FASTRNN_CPU_RANGE_ROWS", "40")
        assert_matches_oracle(case, True, 1)
        monkeypatch.delenv("FASTRNN_CPU_RANGE_ROWS")
    monkeypatch.setenv("FASTRNN_CPU_PRODUCTS", "fast")
    with pytest.raises(RuntimeError, match="FASTRNN_CPU_PRODUCTS must be own, blas, stored or auto"):
        outputs_and_grads(_ops.layer, *case, False, torch.float32)


VERBOSE_CHILD = """
import torch, fastrnn
torch.set_num_threads(1)
torch.manual_seed(0)
lstm = fastrnn.LSTM(20, 24)
x = torch.randn(30, 9, 20, requires_grad=True)
lstm(x)[0].sum().backward()
with torch.no_grad():
    for _ in range(140):  # decides the race of the loop and ATen's LSTM (race_calls)
        lstm(x)
"""


@pytest.mark.parametrize("verbose", ["1", "0"])
def test_verbose_reports_each_measurement(verbose):
    """FASTRNN_CPU_VERBOSE=1 prints each measured choice to stderr once, with
    both candidates' times (product_choice.cpp, report); unset or 0, nothing.
    In a fresh process: the measurements are cached per process."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("FASTRNN_")}
    env["FASTRNN_CPU_VERBOSE"] = verbose
    done = subprocess.run([sys.executable, "-c", VERBOSE_CHILD], env=env, capture_output=True,
                          text=True, check=True)
    lines = [line for line in done.stderr.splitlines() if line.startswith("fastrnn:")]
    if verbose == "0":
        assert lines == []
        return
    time = r"[\d.]+ us"
    shape = r"\d-byte, M \d+ n \d+ K \d+(, A\^T)?(, B\^T)?, T \d+, P \d+, 1 thread"
    for line in lines:
        assert re.fullmatch(rf"fastrnn: [\w ',()]+, {shape}: [\w ]+ {time}, [\w ]+ {time}", line), line
    what = [line.split(",")[0] for line in lines]
    assert len(set(lines)) == len(lines)  # once each
    # The backward's products after the loop, each measured; then the race.
    for product in ("input gradient", "input weight gradient", "hidden weight gradient"):
        assert f"fastrnn: {product}" in what
    assert "fastrnn: LSTM layer (race of calls)" in what


@pytest.mark.parametrize("batch", [1, 6, 13, 14, 15, 29, 64])
def test_step_row_blocks(batch, monkeypatch):
    """small_gemm shares a part's rows out evenly among blocks of at most 14
    rows: every block height, one block and several, against the oracle."""
    monkeypatch.setenv("FASTRNN_CPU_PRODUCTS", "own")
    assert_matches_oracle(make_case("LSTM", 0, sizes=[batch] * 3, hidden=21, input_size=11),
                          False, 1)


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
@pytest.mark.parametrize("batch", [9, 20, 29])
@pytest.mark.parametrize("mode", ["LSTM", "GRU", "RNN_TANH"])
def test_rows_packed_into_panels(mode, batch, dtype, threads, monkeypatch):
    """Rows a multiple of 4 KiB apart share one L1 set; where a row block has
    more of them than the set has ways, small_gemm first packs them into
    panels (small_gemm.cpp, pack_a_panels): dG at G*H = 1024 columns (LSTM,
    GRU) in the backward's step product and dx, x at I = 1024 in the forward's
    projection, in blocks of 9, 10 and 14-15 rows; on 2 threads each thread
    packs into its own buffer. float32 sums of 1024 products get 4x the usual
    tolerance."""
    monkeypatch.setenv("FASTRNN_CPU_PRODUCTS", "own")
    case = make_case(mode, sizes=[batch] * 3, hidden=256, input_size=1024)
    atol, rtol = TOLERANCE[dtype]
    assert_matches_oracle(case, False, threads, dtype, (4 * atol, 4 * rtol))


def test_long_sequence_buffers():
    """A workspace of >= 32 MiB (layer_args.cpp, fresh: hinted to huge pages
    before first touch) holds the same numbers, and the backward runs in
    several ranges of steps: an LSTM over 8320 tokens against torch.nn,
    outputs, states and gradients."""
    torch.manual_seed(0)
    T, B, H = 520, 16, 256
    assert T * B * _ops.WORKSPACE_BLOCKS["LSTM"] * H * 4 >= 32 << 20
    ref = torch.nn.LSTM(8, H)
    ours = fastrnn.LSTM(8, H)
    ours.load_state_dict(ref.state_dict())
    x = torch.randn(T, B, 8)
    got, want = [], []
    for m, into in ((ours, got), (ref, want)):
        xm = x.clone().requires_grad_()
        y, (h, c) = m(xm)
        (y.square().mean() + h.sum() + c.sum()).backward()
        into += [y, h, c, xm.grad, *(p.grad for p in m.parameters())]
    assert ours.last_backend == "cpu"
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w, atol=2e-5 * w.abs().max().item(), rtol=1e-4)


def test_large_scratch_blocks_come_back_poisoned():
    """Scratch of >= 32 MiB (block_cache.h) is served from blocks earlier calls
    freed: the second call's workspace is the first's block, which held NaN,
    and every number it returns equals the first call's."""
    sizes = [64] * 160  # 10240 tokens x 5H floats, H = 200: 39 MiB of workspace
    spec, x, bs, h0, c0, w = make_case("LSTM", 0, sizes=sizes, input_size=4, hidden=200)
    args = ["LSTM", x.float(), bs, h0.float(), c0.float(),
            *(None if t is None else t.float() for t in w), False, True]
    first = torch.ops.fastrnn.layer_fwd(*args)
    assert first[3].numel() * 4 >= 32 << 20
    block = first[3].data_ptr()
    expected = [t.clone() for t in first]
    first[3].fill_(float("nan"))
    del first
    second = torch.ops.fastrnn.layer_fwd(*args)
    assert second[3].data_ptr() == block
    for got, want in zip(second, expected, strict=True):
        assert torch.equal(got, want)


# bfloat16 layers with even input and hidden sizes and T > 1 take bf16 dot
# products where the CPU has them (small_gemm_bf16.h): 12 rows per step with
# 1 thread project per step, 2 threads at H = 256 split the hidden units,
# 3 rows keep the hoisted projection. A split at H = 144 cuts each gate at
# unit 64 of 144: on ATen's bf16 ukernel (AMX) its slices start and end
# inside the 64-column panels of the packed W_hh^T.
BF16_CASES = {  # id: (batch_sizes, threads, hidden)
    "per_step": ([12, 12, 9, 9, 4, 2] * 3, 1, 22),
    "split": ([8, 8, 6, 6, 3], 2, 256),
    "split_ragged": ([1] * 7, 2, 144),
    "hoisted": ([3] * 16, 1, 22),
}


@pytest.mark.parametrize("pin", ["own", "blas", "auto"])
@pytest.mark.parametrize("reverse", [False, True], ids=["fwd", "rev"])
@pytest.mark.parametrize("form", list(BF16_CASES))
@pytest.mark.parametrize("mode", ["LSTM", "GRU", "RNN_TANH"])
def test_bfloat16_products(mode, form, reverse, pin, monkeypatch):
    """Outputs and gradients of a bfloat16 layer against the oracle on the same
    bf16-rounded inputs, within the bfloat16 tolerance of this file, with the
    step products on the bf16 blocks (own), on ATen's bfloat16 matmul
    (blas: also the hoisted input projection; product_choice.h) or raced
    between the two (auto: plan_bf16_forward in layer_fwd.cpp). (No
    RNN_RELU: where a pre-activation sits at relu's kink, the kernel's
    bf16-rounded h and the oracle's fp32 h pick different sides, and that
    token's gradient differs by design; RNN_TANH runs the same products.)"""
    monkeypatch.setenv("FASTRNN_CPU_PRODUCTS", pin)
    case, threads = bf16_case(mode, form)
    assert_matches_oracle(case, reverse, threads, torch.bfloat16)


def bf16_case(mode, form):
    """A BF16_CASES case of bf16-rounded inputs, and its thread count."""
    sizes, threads, hidden = BF16_CASES[form]
    sizes = sorted(sizes, reverse=True)
    case = make_case(mode, sizes=sizes, hidden=hidden, input_size=18, dtype=torch.bfloat16)
    if mode.startswith("RNN"):
        # A contractive recurrence (W_hh ~ N(0, 0.25 / H), bf16-exact): with
        # make_case's scale an 18-step RNN is chaotic, and the oracle's fp32 h
        # and the kernel's bf16-rounded h (torch.nn's rounding) drift apart.
        w = case[5]
        w_hh = (w.w_hh * (0.5 / (0.4 * hidden ** 0.5))).to(torch.bfloat16).double()
        case = (*case[:5], w._replace(w_hh=w_hh))
    return case, threads


@pytest.mark.parametrize("pin", ["own", "blas"])
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("mode,proj", [c for c in CONFIGS if c[0] != "RNN_RELU"])
def test_bfloat16_single_step(mode, proj, bias, pin, monkeypatch):
    """A single bfloat16 step with large weights (a cell; blas_single_step in
    layer_args.h, H = 256) multiplies in bfloat16 by ATen's matmul (blas),
    forward and backward, as torch.nn's cells do, or with the weights widened
    to fp32 (own), as measured faster (prefer_bf16_single_step): outputs and
    gradients against the oracle on the same bf16-rounded inputs, within this
    file's bfloat16 tolerance (the gates rounded to bfloat16 in blas). No
    RNN_RELU: a gate rounded across 0 takes the other side of relu's kink
    than the oracle's, and its gradient differs by design
    (test_bfloat16_products)."""
    monkeypatch.setenv("FASTRNN_CPU_PRODUCTS", pin)
    case = make_case(mode, proj, bias=bias, sizes=[6], hidden=256, input_size=18,
                     dtype=torch.bfloat16)
    assert_matches_oracle(case, False, 1, torch.bfloat16)


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("batch", [1, 3, 5])
@pytest.mark.parametrize("mode", ["LSTM", "GRU", "RNN_TANH"])
def test_bfloat16_single_step_on_rows_times_wt(mode, batch, threads, monkeypatch):
    """A single bfloat16 step's forward products on fastrnn's own
    rows_times_wt_bf16 and the backward's dx and dh0 on rows_times_w_bf16
    (gemv_bf16.h; FASTRNN_CPU_PRODUCTS=own picks them where the build has
    AVX512-BF16, else the widened fp32 products): K = 37 (one masked tail of
    5 after 32) and 257 (a tail of 1), gate columns 1028 / 771 / 257 (blocks
    of 4 weight rows, then none, 3 or 1 left; GRU's dh0 accumulates onto its
    direct term), dx's 37 and dh0's 257 columns (masked tails in the last
    64-column panel), rows 1-5 (blocks of 4, then 1), the columns shared by 2
    threads; outputs and gradients against the oracle."""
    monkeypatch.setenv("FASTRNN_CPU_PRODUCTS", "own")
    case = make_case(mode, sizes=[batch], hidden=257, input_size=37, dtype=torch.bfloat16)
    assert_matches_oracle(case, False, threads, torch.bfloat16)


@pytest.mark.skipif(not fastrnn._C.cpu_bf16_rows_kernels,
                    reason="built without AVX-512: no rows_times_wt_bf16")
@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("reverse", [False, True], ids=["fwd", "rev"])
@pytest.mark.parametrize("mode,proj", [("LSTM", 0), ("LSTM", 5), ("GRU", 0), ("RNN_TANH", 0)])
def test_bfloat16_float32_loop_steps_on_rows_times_wt(mode, proj, reverse, threads, monkeypatch):
    """A bfloat16 layer on the float32 loop (here: odd hidden and output sizes,
    which the bf16 dot products cannot take; on a build without AVX512-BF16
    every bf16 layer) runs its step product on rows_times_wt_bf16, W_hh read
    as stored, where FASTRNN_CPU_PRODUCTS=own pins it (prefer_rows_bf16_step):
    packed sequences (rows join and leave between steps), both directions,
    batch tiles on 2 threads, K = 37 or 5 (masked tails). Outputs and
    gradients against the oracle."""
    monkeypatch.setenv("FASTRNN_CPU_PRODUCTS", "own")
    case = make_case(mode, proj, sizes=PACKED, hidden=37, input_size=18, dtype=torch.bfloat16)
    assert_matches_oracle(case, reverse, threads, torch.bfloat16)


# RNN_RELU on bfloat16 products (blas) is not among them: near ReLU's kink the
# products rounded to bfloat16, as torch.nn's cells round them, flip the sign
# of some pre-activations against the float64 oracle, and with it their terms
# of dx (the same on the widened loop before single_step_bf16).
@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("batch", [3, 67])
@pytest.mark.parametrize("mode,proj,products", [
    (mode, proj, products) for mode, proj in [("LSTM", 0), ("LSTM", 5), ("GRU", 0), ("RNN_TANH", 0),
                                              ("RNN_RELU", 0)]
    for products in ("own", "blas") if (mode, products) != ("RNN_RELU", "blas")
])
def test_bfloat16_single_step_gate_pass(mode, proj, products, batch, threads, monkeypatch):
    """A bfloat16 single step's gate pass (single_step_bf16, forward_loop.cpp)
    reads its two products as they come, bfloat16 from ATen's matmul (blas)
    or fp32 sums from rows_times_wt_bf16 (own, where the build has
    AVX512-BF16), widens h0 and c0 itself and writes the bfloat16 outputs and
    the fp32 workspace directly. H = 257 (a masked tail in every gate); at 67
    rows the rows go to threads in chunks of 31 (an LSTM's 1028 gate columns
    against ATen's grain); with a projection the step takes the widened loop.
    Outputs, and gradients through the workspace it saved, against the
    oracle."""
    monkeypatch.setenv("FASTRNN_CPU_PRODUCTS", products)
    case = make_case(mode, proj, sizes=[batch], hidden=257, input_size=37, dtype=torch.bfloat16)
    assert_matches_oracle(case, False, threads, torch.bfloat16)


@pytest.mark.parametrize("reverse", [False, True], ids=["fwd", "rev"])
@pytest.mark.parametrize("mode", ["LSTM", "GRU"])
def test_bfloat16_projection_in_chunks(mode, reverse, monkeypatch):
    """On ATen's bfloat16 matmul (blas) a bfloat16 layer's hoisted input
    projection runs in chunks of rows that fit a per-thread buffer of about
    1 MiB (product_choice.cpp, aten_bf16_rows): 800 rows at H = 256 are a full
    chunk and a partial one (512 + 288 rows of an LSTM's 1024 gate columns,
    682 + 118 of a GRU's 768). Outputs against the oracle, within 10% of the
    largest: at H = 256 bf16 outputs of either plan (own too) differ from it
    by up to 6% of the largest in single elements, beyond this file's
    bfloat16 tolerance, while a misplaced chunk is off by whole values."""
    monkeypatch.setenv("FASTRNN_CPU_PRODUCTS", "blas")
    case = make_case(mode, sizes=[160] * 5, hidden=256, input_size=18, dtype=torch.bfloat16)
    want, _ = outputs_and_grads(run_layer, *case, reverse, torch.float64)
    got, _ = outputs_and_grads(_ops.layer, *case, reverse, torch.bfloat16)
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w, atol=0.1 * w.abs().max().item(), rtol=0.1)


@pytest.mark.skipif(not fastrnn._C.cpu_bf16_products,
                    reason="built without AVX512-BF16: a bfloat16 layer runs the float32 loop, "
                    "whose ranges each add their share of the weight gradients, so one range "
                    "is not bitwise equal to several (1 bf16 ulp in one element, LSTM reverse, "
                    "-march=skylake-avx512)")
@pytest.mark.parametrize("reverse", [False, True], ids=["fwd", "rev"])
@pytest.mark.parametrize("mode", ["LSTM", "GRU", "RNN_TANH"])
def test_bfloat16_backward_in_step_ranges(mode, reverse, monkeypatch):
    """A bfloat16 layer's backward loop runs in ranges of steps too, summing
    each range's dG columns while its rows are in cache, into buffers of every
    row that the bf16 products read after the loop (layer_bwd.cpp): against
    the oracle, and bitwise equal to one range but for the bias gradients
    (their sums grouped by range)."""
    monkeypatch.setenv("FASTRNN_CPU_RANGE_ROWS", "7")
    case, threads = bf16_case(mode, "per_step")
    assert_matches_oracle(case, reverse, threads, torch.bfloat16)
    ranged = outputs_and_grads(_ops.layer, *case, reverse, torch.bfloat16)
    monkeypatch.delenv("FASTRNN_CPU_RANGE_ROWS")
    whole = outputs_and_grads(_ops.layer, *case, reverse, torch.bfloat16)
    assert_bitwise((ranged[0], ranged[1][:-2]), (whole[0], whole[1][:-2]))
    for got, want in zip(ranged[1][-2:], whole[1][-2:], strict=True):
        torch.testing.assert_close(got, want, atol=1e-2 * want.abs().max().item(), rtol=1e-2)


@pytest.mark.skipif(not fastrnn._C.cpu_bf16_products,
                    reason="built without AVX512-BF16: a bfloat16 layer runs the float32 loop, "
                    "with no bf16 plans to race")
@pytest.mark.parametrize("mode", ["LSTM", "GRU", "RNN_TANH"])
def test_bfloat16_forward_runs_one_raced_plan(mode, monkeypatch):
    """Unpinned, a bfloat16 forward races its two plans on its first steps
    and then runs the call on the winner: its outputs equal one pinned plan's
    bitwise, in training mode (the workspace too) and in inference, whose
    race is its own. Where ATen's side runs on the bf16 ukernel (AMX), both
    plans multiply exact bf16 pairs and sum them in fp32, and often compute
    the same bits (an RNN always did here); ATen's matmul elsewhere rounds
    its product to bfloat16 and the plans differ."""
    # Packed (the last step shorter): no ATen LSTM, whose race is another one.
    case = make_case(mode, sizes=[6] * 19 + [4], hidden=32, input_size=18, dtype=torch.bfloat16)
    spec, x, sizes, h0, c0, weights = case
    args = [t.to(torch.bfloat16) if t is not None else None
            for t in (x, h0, c0, weights.w_ih, weights.w_hh, weights.b_ih, weights.b_hh)]
    x, h0, c0, w_ih, w_hh, b_ih, b_hh = args
    for save in (True, False):
        def forward():
            return torch.ops.fastrnn.layer_fwd(mode, x, sizes, h0, c0, w_ih, w_hh, b_ih, b_hh,
                                               None, False, save)
        pinned = []
        for pin in ("own", "blas"):
            monkeypatch.setenv("FASTRNN_CPU_PRODUCTS", pin)
            pinned.append(forward())
        monkeypatch.setenv("FASTRNN_CPU_PRODUCTS", "auto")
        for _ in range(2):  # the racing call and a call on the settled plan
            got = forward()
            assert any(all(torch.equal(g, w) for g, w in zip(got, want)) for want in pinned)


def ran_aten_lstm(fn):
    """Whether fn() ran ATen's LSTM (at::lstm) inside fastrnn::layer_fwd."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        fn()
    names = {e.key for e in prof.key_averages()}
    assert "fastrnn::layer_fwd" in names or "fastrnn::bilayer_fwd" in names
    return "aten::lstm" in names


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"])
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
def test_lstm_inference_on_aten_lstm(dtype, bidirectional, bias, monkeypatch):
    """An inference LSTM runs on ATen's LSTM where that measured faster
    (prefer_aten_lstm; pinned here: blas always, own never): pinned to it,
    outputs and final states equal torch.nn's bitwise (the same oneDNN
    kernel), reverse direction included; pinned off, the loop runs and
    matches within the dtype's tolerance. A bfloat16 LSTM where oneDNN has no bf16 kernel (no AVX-512)
    never runs ATen's LSTM, pinned or not: ATen's per-step bf16 matmul is
    20-100x slower than the loop there."""
    torch.manual_seed(0)
    ref = torch.nn.LSTM(11, 20, num_layers=2, bias=bias, bidirectional=bidirectional,
                        batch_first=True).to(dtype)
    ours = fastrnn.LSTM(11, 20, num_layers=2, bias=bias, bidirectional=bidirectional,
                        batch_first=True).to(dtype)
    ours.load_state_dict(ref.state_dict())
    dirs = 2 if bidirectional else 1
    x = torch.randn(5, 9, 11, dtype=dtype)
    hx = (torch.randn(2 * dirs, 5, 20, dtype=dtype), torch.randn(2 * dirs, 5, 20, dtype=dtype))
    with torch.no_grad():
        y_ref, (h_ref, c_ref) = ref(x, hx)
        onednn = dtype == torch.float32 or torch.ops.mkldnn._is_mkldnn_bf16_supported()
        pins = [("blas", onednn), ("own", False)] + ([] if onednn else [("auto", False)])
        for pin, exact in pins:
            monkeypatch.setenv("FASTRNN_CPU_PRODUCTS", pin)
            got = []
            assert ran_aten_lstm(lambda: got.extend(ours(x, hx))) == exact
            y, (h, c) = got
            for g, w in ((y, y_ref), (h, h_ref), (c, c_ref)):
                if exact:
                    assert torch.equal(g, w)
                else:
                    atol, rtol = TOLERANCE[dtype]
                    torch.testing.assert_close(g, w, atol=atol, rtol=rtol)


def test_aten_lstm_learnt_from_calls(monkeypatch):
    """Unpinned, the first inference calls of a new shape alternate between
    the loop and ATen's LSTM (race_calls: a warm-up each, then timed calls
    until each has three lasting 2 ms in all, 64 at most), and every later
    call runs the one that was faster; either way the outputs match
    torch.nn."""
    monkeypatch.setenv("FASTRNN_CPU_PRODUCTS", "auto")
    torch.manual_seed(0)
    ref = torch.nn.LSTM(13, 17)  # a shape no other test runs
    ours = fastrnn.LSTM(13, 17)
    ours.load_state_dict(ref.state_dict())
    x = torch.randn(6, 3, 13)
    with torch.no_grad():
        want = ref(x)[0]
        on_aten = []
        for _ in range(2 + 2 * 64 + 8):
            got = []
            on_aten.append(ran_aten_lstm(lambda: got.append(ours(x)[0])))
            atol, rtol = TOLERANCE[torch.float32]
            torch.testing.assert_close(got[0], want, atol=atol, rtol=rtol)
    settled = on_aten[-1]
    racing = next(i for i in range(len(on_aten)) if on_aten[i:] == [settled] * (len(on_aten) - i))
    assert racing >= 7  # 2 warm-ups and at least 3 timed calls each (the last may match)
    assert on_aten[:racing] == [i % 2 == 1 for i in range(racing)]


@pytest.mark.parametrize("case", ["training", "float64", "projection", "packed"])
def test_aten_lstm_only_for_plain_inference(case, monkeypatch):
    """ATen's LSTM never runs a call it cannot serve as the loop does, even
    pinned: one that saves a workspace for the backward, float64, a
    projection, batch sizes that shrink."""
    monkeypatch.setenv("FASTRNN_CPU_PRODUCTS", "blas")
    proj = 3 if case == "projection" else 0
    sizes = PACKED if case == "packed" else PADDED
    dtype = torch.float64 if case == "float64" else torch.float32
    spec, x, bs, h0, c0, w = make_case("LSTM", proj, sizes=sizes, dtype=dtype)
    args = ["LSTM", x.to(dtype), bs, h0.to(dtype), c0.to(dtype),
            *(None if t is None else t.to(dtype) for t in w), False, case == "training"]
    assert not ran_aten_lstm(lambda: torch.ops.fastrnn.layer_fwd(*args))
    args[-1] = False
    assert ran_aten_lstm(lambda: torch.ops.fastrnn.layer_fwd(*args)) == (case == "training")


GRADCHECK = [  # (mode, proj, bias, sizes, reverse)
    *((m, p, True, [2, 2, 1], False) for m, p in CONFIGS),
    ("LSTM", 2, False, [3, 1, 1], True),
    ("GRU", 0, False, [2, 2, 2], True),
    ("RNN_TANH", 0, True, [3, 2, 1], True),
]


@pytest.mark.parametrize("mode,proj,bias,sizes,reverse", GRADCHECK)
def test_gradcheck(mode, proj, bias, sizes, reverse):
    spec, x, bs, h0, c0, weights = make_case(mode, proj, bias, sizes, input_size=3, hidden=4)
    if mode == "RNN_RELU":  # keep pre-activations away from relu's kink
        x = x + 1.0
    x, h0, c0, weights = leaves(x, h0, c0, weights, torch.float64)
    given = [t is not None for t in (c0, *weights)]

    def fn(x, h0, *rest):
        it = iter(rest)
        c0, *w = (next(it) if g else None for g in given)
        return tuple(o for o in _ops.layer(spec, x, bs, h0, c0, LayerWeights(*w), reverse)
                     if o is not None)

    inputs = [x, h0, *(t for t in (c0, *weights) if t is not None)]
    assert torch.autograd.gradcheck(fn, inputs)


def op_args(mode, proj, sizes, reverse, save, dtype, bias=True):
    spec, x, bs, h0, c0, w = make_case(mode, proj, bias=bias, sizes=sizes)
    cast = (lambda t: None if t is None else t.to(dtype))
    return (mode, cast(x), bs, cast(h0), cast(c0), *(cast(t) for t in w), reverse, save)


OPCHECK = [  # (mode, proj, sizes, reverse, dtype)
    ("LSTM", 0, PACKED, False, torch.float32),
    ("LSTM", 3, PADDED, True, torch.float64),
    ("GRU", 0, PACKED, True, torch.float32),
    ("GRU", 0, PADDED, False, torch.bfloat16),
    ("RNN_TANH", 0, PADDED, False, torch.float64),
    ("RNN_RELU", 0, PACKED, True, torch.float32),
]


@pytest.mark.parametrize("mode,proj,sizes,reverse,dtype", OPCHECK)
def test_opcheck(mode, proj, sizes, reverse, dtype):
    args = op_args(mode, proj, sizes, reverse, True, dtype)
    differentiable = [a for a in args if isinstance(a, torch.Tensor) and a.is_floating_point()]
    for t in differentiable:
        t.requires_grad_(dtype != torch.bfloat16)
    torch.library.opcheck(torch.ops.fastrnn.layer_fwd, args)
    inference = op_args(mode, proj, sizes, reverse, False, dtype)
    torch.library.opcheck(torch.ops.fastrnn.layer_fwd, inference)

    plain = op_args(mode, proj, sizes, reverse, True, dtype)
    y, h_n, c_n, ws = torch.ops.fastrnn.layer_fwd(*plain)
    mode_, x, bs, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, reverse_, _ = plain
    bwd = (mode, torch.randn_like(y), torch.randn_like(h_n), torch.randn_like(c_n), x, bs, h0, c0,
           w_ih, w_hh, b_ih, b_hh, w_hr, y, ws, reverse, [True, True, True])
    torch.library.opcheck(torch.ops.fastrnn.layer_bwd, bwd)


def bi_op_args(mode, proj, sizes, save, dtype, bias=True):
    """bilayer_fwd's arguments: op_args as [forward, reverse] lists (the reverse
    direction's values scaled, so the directions differ), absent optionals []."""
    mode, x, bs, *per_direction = op_args(mode, proj, sizes, False, save, dtype, bias)[:10]
    lists = [[] if t is None else [t, t * 0.9] for t in per_direction]
    return (mode, x, bs, *lists, save)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("mode,proj", CONFIGS)
def test_opcheck_bidirectional(mode, proj, dtype):
    args = bi_op_args(mode, proj, PACKED, True, dtype)
    for lst in args[3:10]:
        for t in lst:
            t.requires_grad_()
    args[1].requires_grad_()
    torch.library.opcheck(torch.ops.fastrnn.bilayer_fwd, args)
    torch.library.opcheck(torch.ops.fastrnn.bilayer_fwd, bi_op_args(mode, proj, PADDED, False, dtype))

    plain = bi_op_args(mode, proj, PACKED, True, dtype)
    y, h_n, c_n, ws = torch.ops.fastrnn.bilayer_fwd(*plain)
    rand = lambda ts: [torch.randn_like(t) for t in ts]  # noqa: E731
    bwd = (mode, rand(y), rand(h_n), rand(c_n), *plain[1:3], *plain[3:10], y, ws,
           [True, True, True])
    torch.library.opcheck(torch.ops.fastrnn.bilayer_bwd, bwd)


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("mode,proj", CONFIGS)
def test_bidirectional_matches_reference(mode, proj, bias, threads):
    """Both directions in one call (run concurrently on 2 threads) give each
    direction's oracle outputs and gradients; the input gradient is their sum."""
    fwd = make_case(mode, proj, bias=bias, sizes=PACKED, hidden=21, input_size=19, seed=3)
    rev = make_case(mode, proj, bias=bias, sizes=PACKED, hidden=21, input_size=19, seed=4)
    spec, x, sizes = fwd[:3]

    def both(fn, x, h0f, h0r, c0f, c0r, *weights):
        wf, wr = LayerWeights(*weights[:5]), LayerWeights(*weights[5:])
        if fn is None:
            outs = _ops.bidirectional_layer(spec, x, sizes, (h0f, h0r), (c0f, c0r), (wf, wr))
        else:
            outs = [fn(spec, x, sizes, h0, c0, w, d == 1)
                    for d, (h0, c0, w) in enumerate([(h0f, c0f, wf), (h0r, c0r, wr)])]
        return [o for out in outs for o in out if o is not None]

    def run(fn):
        inputs = [None if t is None else t.detach().clone().requires_grad_()
                  for t in (x, fwd[3], rev[3], fwd[4], rev[4], *fwd[5], *rev[5])]
        outs = both(fn, *inputs)
        gen = torch.Generator().manual_seed(5)
        cots = [torch.randn(o.shape, generator=gen, dtype=o.dtype) for o in outs]
        leaves = [t for t in inputs if t is not None]
        return outs + list(torch.autograd.grad(outs, leaves, cots))

    want = run(run_layer)
    with num_threads(threads):
        got = run(None)
    atol, rtol = TOLERANCE[torch.float64]
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w, atol=atol * w.abs().max().item(), rtol=rtol)


def test_bidirectional_bad_lists_raise():
    mode, x, bs, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, save = bi_op_args("LSTM", 0, PACKED, False,
                                                                        torch.float64)
    with pytest.raises(RuntimeError, match="h0 must list 2 tensors"):
        torch.ops.fastrnn.bilayer_fwd(mode, x, bs, h0[:1], c0, w_ih, w_hh, b_ih, b_hh, w_hr, save)
    with pytest.raises(RuntimeError, match="b_ih must list 2 tensors"):
        torch.ops.fastrnn.bilayer_fwd(mode, x, bs, h0, c0, w_ih, w_hh, b_ih[:1], b_hh, w_hr, save)
    with pytest.raises(RuntimeError, match="LSTM needs c0"):
        torch.ops.fastrnn.bilayer_fwd(mode, x, bs, h0, [], w_ih, w_hh, b_ih, b_hh, w_hr, save)


@pytest.mark.parametrize("mode,proj", CONFIGS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_poisoned_outputs(mode, proj, dtype):
    """Every output element is written: with deterministic mode on, torch fills
    each fresh at::empty buffer (outputs, workspace, scratch) with NaN. The
    bfloat16 case has even sizes and 9 rows: per-step bf16 products and the
    loops' bf16 copies of y and dG (small_gemm_bf16.h)."""
    if dtype == torch.bfloat16:
        case = make_case(mode, proj, sizes=[9, 9, 8, 4, 2], hidden=20, input_size=18, dtype=dtype)
    else:
        case = make_case(mode, proj, sizes=PACKED, hidden=19)
    clean = outputs_and_grads(_ops.layer, *case, True, dtype)
    torch.use_deterministic_algorithms(True)
    try:
        assert torch.utils.deterministic.fill_uninitialized_memory
        poisoned = outputs_and_grads(_ops.layer, *case, True, dtype)
    finally:
        torch.use_deterministic_algorithms(False)
    for got, want in zip(poisoned[0] + poisoned[1], clean[0] + clean[1]):
        assert not got.isnan().any()
        torch.testing.assert_close(got, want)


@pytest.mark.parametrize("mode,proj", CONFIGS)
def test_zero_batch(mode, proj):
    case = make_case(mode, proj, sizes=[0, 0, 0])
    outs, grads = outputs_and_grads(_ops.layer, *case, False, torch.float32)
    assert [tuple(o.shape) for o in outs][0] == (0, proj or 5)
    spec, x, bs, h0, c0, w = case
    shapes = [t.shape for t in (x, h0, c0, *w) if t is not None]
    assert [g.shape for g in grads] == shapes
    assert all(g.eq(0).all() for g in grads)


def test_inference_skips_workspace():
    args = op_args("LSTM", 0, PACKED, False, False, torch.float32)
    y, h_n, c_n, ws = torch.ops.fastrnn.layer_fwd(*args)
    assert ws.shape == (0, 5 * 5)
    saved = op_args("LSTM", 0, PACKED, False, True, torch.float32)
    y2, *_, ws2 = torch.ops.fastrnn.layer_fwd(*saved)
    assert ws2.shape == (sum(PACKED), 5 * 5)
    torch.testing.assert_close(y, y2, rtol=0, atol=0)


def _bad_fwd_args():
    """(description, args) pairs; each must raise RuntimeError from the kernel."""
    good = list(op_args("LSTM", 0, PACKED, False, True, torch.float32))
    gru = list(op_args("GRU", 0, PACKED, False, True, torch.float32))
    X, BS, H0, C0, WIH, WHH, BIH, BHH, WHR = range(1, 10)

    def edit(base, **changes):
        args = list(base)
        for index, value in changes.items():
            args[int(index[1:])] = value
        return args

    f32 = good[X]
    return [
        ("unknown mode", edit(good, a0="LSTMX")),
        ("x 3-D", edit(good, **{f"a{X}": f32[None]})),
        ("x float16", edit(good, **{f"a{X}": f32.half()})),
        ("x int", edit(good, **{f"a{X}": f32.long()})),
        ("x dtype differs from weights", edit(good, **{f"a{X}": f32.double()})),
        ("x not contiguous", edit(good, **{f"a{X}": torch.randn(7, f32.shape[0]).t()})),
        ("x rows != sum(batch_sizes)", edit(good, **{f"a{X}": f32[1:]})),
        ("batch_sizes increasing", edit(good, **{f"a{BS}": torch.tensor([1, 2, 4, 5, 5, 2])})),
        ("batch_sizes negative", edit(good, **{f"a{BS}": torch.tensor([20, -1])})),
        ("batch_sizes int32", edit(good, **{f"a{BS}": good[BS].int()})),
        ("batch_sizes empty", edit(good, **{f"a{BS}": torch.tensor([], dtype=torch.long)})),
        ("h0 batch", edit(good, **{f"a{H0}": good[H0][:-1]})),
        ("h0 dtype", edit(good, **{f"a{H0}": good[H0].double()})),
        ("c0 missing for LSTM", edit(good, **{f"a{C0}": None})),
        ("c0 given for GRU", edit(gru, **{f"a{C0}": torch.zeros(5, 5)})),
        ("c0 shape", edit(good, **{f"a{C0}": torch.zeros(5, 4)})),
        ("w_ih rows not gates * H", edit(good, **{f"a{WIH}": good[WIH][:-1]})),
        ("w_ih input size", edit(good, **{f"a{WIH}": good[WIH][:, :-1].contiguous()})),
        ("w_hh shape", edit(good, **{f"a{WHH}": good[WHH][:, :-1].contiguous()})),
        ("w_hh not contiguous", edit(good, **{f"a{WHH}": torch.randn(5, 20).t()})),
        ("b_ih without b_hh", edit(good, **{f"a{BHH}": None})),
        ("b_hh shape", edit(good, **{f"a{BHH}": good[BHH][:-1]})),
        ("w_hr for GRU", edit(gru, **{f"a{WHR}": torch.randn(3, 5)})),
        ("w_hr shape vs w_hh", edit(good, **{f"a{WHR}": torch.randn(3, 5)})),
        ("w_hr as wide as hidden", edit(good, **{f"a{WHR}": torch.randn(5, 5)})),
    ]


@pytest.mark.parametrize("case", range(len(_bad_fwd_args())),
                         ids=[d for d, _ in _bad_fwd_args()])
def test_bad_forward_inputs_raise(case):
    _, args = _bad_fwd_args()[case]
    with pytest.raises(RuntimeError):
        torch.ops.fastrnn.layer_fwd(*args)


def test_bad_backward_inputs_raise():
    args = op_args("GRU", 0, PACKED, False, True, torch.float32)
    y, h_n, c_n, ws = torch.ops.fastrnn.layer_fwd(*args)
    _, x, bs, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, reverse, _ = args
    _, *_, ws_inference = torch.ops.fastrnn.layer_fwd(*args[:-1], False)

    def bwd(grad_y=torch.ones_like(y), grad_c=c_n, workspace=ws, grad_h=torch.ones_like(h_n)):
        return torch.ops.fastrnn.layer_bwd("GRU", grad_y, grad_h, grad_c, x, bs, h0, c0, w_ih,
                                           w_hh, b_ih, b_hh, w_hr, y, workspace, reverse,
                                           [True, True, True])

    bwd()  # the well-formed call works
    bad = [
        dict(workspace=ws_inference),  # forward ran with save=False
        dict(workspace=ws.double()),
        dict(workspace=ws[:, :-1]),
        dict(grad_y=torch.ones(y.shape[1], y.shape[0]).t()),  # not contiguous
        dict(grad_y=torch.ones_like(y)[:-1]),
        dict(grad_h=torch.ones_like(h_n).double()),
        dict(grad_c=torch.ones(5, 5)),  # GRU has no cell state
    ]
    for kwargs in bad:
        with pytest.raises(RuntimeError):
            bwd(**kwargs)


def test_backward_after_inference_forward_raises():
    args = op_args("GRU", 0, PACKED, False, False, torch.float32)
    leaf = args[1].requires_grad_()
    y, *_ = torch.ops.fastrnn.layer_fwd(*args)
    with pytest.raises(RuntimeError, match="save=False"):
        y.sum().backward()
    assert leaf.grad is None


def test_backend_declines_what_it_cannot_serve():
    backend = get("cpu")
    assert backend.available() is None
    spec = LayerSpec("GRU", 3, 4)
    for dtype in (torch.float32, torch.float64, torch.bfloat16):
        assert backend.supports(spec, torch.zeros(2, 3, dtype=dtype)) is None
    assert "float16" in backend.supports(spec, torch.zeros(2, 3, dtype=torch.float16))
    assert "meta" in backend.supports(spec, torch.zeros(2, 3, device="meta"))


@pytest.mark.parametrize("mode,proj", [("LSTM", 3), ("GRU", 0)])
def test_compile_fullgraph(mode, proj):
    """The op traces through torch.compile(fullgraph=True) (fake kernel + autograd
    formula) and gives the eager numbers, forward and backward."""
    torch._dynamo.reset()
    spec, x, bs, h0, c0, w = make_case(mode, proj, sizes=PADDED)
    backend = get("cpu")

    def fn(x, h0, c0, weights):
        y, h_n, c_n = backend.layer(spec, x, bs, h0, c0, weights, False)
        return (y.square().sum() + h_n.sum() + (0 if c_n is None else c_n.sum())).tanh()

    compiled = torch.compile(fn, fullgraph=True, backend="aot_eager")
    results = []
    for f in (fn, compiled):
        xs, h, c, ws = leaves(x, h0, c0, w, torch.float32)
        loss = f(xs, h, c, ws)
        inputs = [t for t in (xs, h, c, *ws) if t is not None]
        results.append([loss.detach(), *torch.autograd.grad(loss, inputs)])
    for got, want in zip(*results):
        torch.testing.assert_close(got, want)


@pytest.mark.parametrize("mode", ["LSTM", "GRU", "RNN_TANH", "RNN_RELU"])
def test_matches_torch_nn(mode):
    """One layer against torch.nn's own module (same weights), padded batch."""
    steps, batch, size, hidden = 6, 3, 5, 11
    if mode in ("LSTM", "GRU"):
        module = getattr(torch.nn, mode)(size, hidden).double()
    else:
        nonlinearity = "tanh" if mode == "RNN_TANH" else "relu"
        module = torch.nn.RNN(size, hidden, nonlinearity=nonlinearity).double()
    x = torch.randn(steps, batch, size, dtype=torch.float64)
    h0 = torch.randn(1, batch, hidden, dtype=torch.float64)
    c0 = torch.randn(1, batch, hidden, dtype=torch.float64)
    want = module(x, (h0, c0) if mode == "LSTM" else h0)
    weights = LayerWeights(module.weight_ih_l0, module.weight_hh_l0, module.bias_ih_l0,
                           module.bias_hh_l0, None)
    y, h_n, c_n = _ops.layer(LayerSpec(mode, size, hidden), x.reshape(-1, size),
                             torch.full((steps,), batch), h0[0],
                             c0[0] if mode == "LSTM" else None, weights, False)
    torch.testing.assert_close(y.reshape(steps, batch, hidden), want[0])
    if mode == "LSTM":
        torch.testing.assert_close(h_n, want[1][0][0])
        torch.testing.assert_close(c_n, want[1][1][0])
    else:
        torch.testing.assert_close(h_n, want[1][0])


def gate_reference(v):
    """The 19 probe outputs (see tests/gates_probe.cpp) from torch autograd, float64."""
    v = [t.clone().requires_grad_() for t in v.t()]
    pi, pf, pg, po, c_prev, dh, dc_next, _ = v
    i, f, g, o = pi.sigmoid(), pf.sigmoid(), pg.tanh(), po.sigmoid()
    c = f * c_prev + i * g
    h = o * c.tanh()
    lstm_grads = torch.autograd.grad((dh * h + dc_next * c).sum(), [pi, pf, pg, po, c_prev])
    x_r, x_z, x_n, h_r, h_z, h_n, h_prev, gdh = v
    r, z = (x_r + h_r).sigmoid(), (x_z + h_z).sigmoid()
    n = (x_n + r * h_n).tanh()
    gh = n + z * (h_prev - n)  # torch.nn's GRU cell
    gru_grads = torch.autograd.grad((gdh * gh).sum(), [x_r, x_z, x_n, h_n, h_prev])
    pre, rdh = v[0], v[1]
    rnn = []
    for act in (torch.tanh, torch.relu):
        out = act(pre)
        rnn += [out, torch.autograd.grad((rdh * out).sum(), pre)[0]]
    cols = [h, c, *lstm_grads, gh, *gru_grads, *rnn, pre.sigmoid(), torch.where(pre <= 0, 0.0, rdh)]
    return torch.stack([t.detach() for t in cols], dim=1)


def run_gate_probe(tmp_path, values):
    """tests/gates_probe.cpp built here and run on `values` (n, 8): its rows,
    double then float for each record. Skips without a C++ compiler."""
    import shutil
    from pathlib import Path

    compiler = shutil.which("g++") or shutil.which("c++")
    if compiler is None:
        pytest.skip(reason="no C++ compiler on PATH to build the scalar gates.h probe")
    root = Path(__file__).resolve().parents[1]
    probe = tmp_path / "gates_probe"
    subprocess.run([compiler, "-std=c++17", "-O1", f"-I{root / 'csrc' / 'include'}",
                    str(root / "tests" / "gates_probe.cpp"), "-o", str(probe)], check=True)
    stdin = f"{len(values)}\n" + "\n".join(" ".join(repr(x) for x in row.tolist())
                                           for row in values)
    out = subprocess.run([str(probe)], input=stdin, capture_output=True, text=True, check=True)
    return torch.tensor([[float(x) for x in line.split()] for line in out.stdout.splitlines()],
                        dtype=torch.float64)


def test_scalar_gate_math(tmp_path):
    """gates.h instantiated with plain float/double (as the CUDA kernels use it),
    compiled without torch, against torch autograd."""
    gen = torch.Generator().manual_seed(3)
    values = torch.randn(64, 8, generator=gen, dtype=torch.float64) * 2
    values = values.to(torch.float32).double()  # exactly representable in float too
    rows = run_gate_probe(tmp_path, values)
    want = gate_reference(values)
    torch.testing.assert_close(rows[0::2], want, atol=1e-12, rtol=1e-12)
    torch.testing.assert_close(rows[1::2], want, atol=2e-6, rtol=2e-5)
