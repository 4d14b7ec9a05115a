"""bfloat16 layers on the native CPU kernels: the bf16 products (blocks,
ATen's bf16 kernels, W_hh read as stored), single steps, the gate pass, the
projection and the backward in chunks, the raced forward plan; against the
float64 oracle on bf16-rounded inputs, and bitwise where a split must not
change a result."""
import pytest
import torch

import fastrnn
from cpu_op_cases import (CONFIGS, PACKED, _ops, assert_bitwise, assert_matches_oracle,
                          make_case, outputs_and_grads)
from fastrnn.backends.reference import run_layer

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
