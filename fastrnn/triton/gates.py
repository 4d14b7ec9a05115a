"""Elementwise gate math, forward and backward, as @triton.jit helpers.

Every value here is an fp32 register tile (rows x hidden columns); the helpers
never touch memory, so the step and persistent kernels share them unchanged.
Modes are compile-time ints (see MODE_IDS) so dead branches vanish.

Derivatives are written in terms of the saved activations (y = sigmoid(a):
dy/da = y (1 - y); y = tanh(a): dy/da = 1 - y^2), which is why the forward pass
saves post-activation gates rather than pre-activations.

NaN and inf behave as in torch.nn and as in the C++ kernels' math
(csrc/include/fastrnn/gates.h, where the reasons are spelled out): NaN in, NaN
out; relu and its backward are selects, not max / products with a mask; the GRU
runs in torch's order h = n + z (h - n).
"""
import triton
import triton.language as tl

# Plain RNNs are numbered last so that `MODE >= RNN_TANH` means "no gates".
LSTM = tl.constexpr(0)
GRU = tl.constexpr(1)
RNN_TANH = tl.constexpr(2)
RNN_RELU = tl.constexpr(3)
MODE_IDS = {"LSTM": 0, "GRU": 1, "RNN_TANH": 2, "RNN_RELU": 3}


@triton.jit
def sigmoid(x):
    # 1 / (1 + e^-x): e^-x overflows to inf for very negative x, giving exactly 0.
    return 1.0 / (1.0 + tl.exp(-x))


@triton.jit
def tanh(x):
    # Accurate relative to its value (libdevice.tanh is not usable under the
    # interpreter), the same two pieces as the CPU kernels' tanh_f32
    # (csrc/include/fastrnn/cpu/vec_math.h), same coefficients:
    #   |x| < 0.625: x + x^3 P(x^2), P a degree-4 minimax fit (< 1 ulp)
    #   else:        sign(x) (1 - e) / (1 + e), e = exp(-2|x|) <= 0.29, which
    #                cancels at most one bit, saturates to +-1 and never overflows.
    # A NaN fails |x| >= 0.625, takes the polynomial and stays NaN.
    s = x * x
    p = -0.005704963114112616 * s + 0.02063906379044056
    p = p * s - 0.05373970791697502
    p = p * s + 0.13331441581249237
    p = p * s - 0.3333328068256378
    near_zero = x + x * s * p
    e = tl.exp(-2.0 * tl.abs(x))
    t = (1.0 - e) / (1.0 + e)
    far = tl.where(x < 0, -t, t)
    return tl.where(tl.abs(x) >= 0.625, far, near_zero)


@triton.jit
def lstm_forward(ai, af, ag, ao, c_prev):
    """Pre-activations -> (i, f, g, o, c_new, h_new)."""
    i = sigmoid(ai)
    f = sigmoid(af)
    g = tanh(ag)
    o = sigmoid(ao)
    c_new = f * c_prev + i * g
    h_new = o * tanh(c_new)
    return i, f, g, o, c_new, h_new


@triton.jit
def lstm_backward(dh, dc_next, i, f, g, o, c_prev, c_new):
    """dh, dc_next: grads w.r.t. h_new, c_new -> pre-activation grads and dc_prev."""
    tc = tanh(c_new)
    dc = dc_next + dh * o * (1.0 - tc * tc)
    dai = dc * g * i * (1.0 - i)
    daf = dc * c_prev * f * (1.0 - f)
    dag = dc * i * (1.0 - g * g)
    dao = dh * tc * o * (1.0 - o)
    return dai, daf, dag, dao, dc * f


@triton.jit
def gru_forward(ar, az, xn, hn, h_prev):
    """ar, az: full r/z pre-activations; the n gate's input part xn and recurrent
    part hn (b_hn included) stay apart because r scales only hn."""
    r = sigmoid(ar)
    z = sigmoid(az)
    n = tanh(xn + r * hn)
    return r, z, n, n + z * (h_prev - n)


@triton.jit
def gru_backward(dh, r, z, n, hn, h_prev):
    """-> (dar, daz, dan, dhn, dh_direct).

    dan is the grad of the n pre-activation w.r.t. its input part (x_n), dhn the
    grad w.r.t. the recurrent part hn (= dan * r), dh_direct = dh * z the path
    h' = ... + z * h that bypasses W_hh. dn = dh - dh z as torch's autograd forms
    it (an infinite dh gives NaN where torch.nn's does).
    """
    dn = dh - dh * z
    dz = dh * (h_prev - n)
    dan = dn * (1.0 - n * n)
    dar = dan * hn * r * (1.0 - r)
    daz = dz * z * (1.0 - z)
    return dar, daz, dan, dan * r, dh * z


@triton.jit
def rnn_forward(a, MODE: tl.constexpr):
    if MODE == RNN_TANH:
        return tanh(a)
    else:
        return tl.where(a < 0.0, 0.0, a)  # NaN stays NaN (tl.maximum may drop it)


@triton.jit
def rnn_backward(dh, h_new, MODE: tl.constexpr):
    if MODE == RNN_TANH:
        return dh * (1.0 - h_new * h_new)
    else:
        return tl.where(h_new <= 0.0, 0.0, dh)  # torch's threshold_backward
