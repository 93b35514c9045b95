"""The Triton kernel behind :class:`robobrain.world_model.FusedImagine`: a whole imagined rollout
(RSSM steps in the most-likely latent, reward and success heads) for a block of BM rows in one program.

Imported only through :func:`robobrain.world_model.fused.load_kernel` (Triton is optional). Each
program keeps its rows' GRU state in registers for all T steps; nothing but the rewards and success
logits of each step and the last state goes back to memory. Weights are packed ``[K, N]`` row-major
by ``FusedImagine.sync`` and read from L2 at every step, BK rows at a time; a matmul's input goes
through a small per-program scratch buffer (slots X for the one-hot latent, Y for the input layer's,
the prior's and the heads' hidden layers, H for the GRU state), because a register tensor cannot be
sliced along K. Matmuls accumulate in float32; LayerNorms and gates run in float32.
"""

import triton
import triton.language as tl


@triton.jit
def _row(ptr, col0, N: tl.constexpr):
    """Row vector [1, N] of float32 from ``ptr[col0 : col0 + N]``."""
    return tl.load(ptr + col0 + tl.arange(0, N)).to(tl.float32)[None, :]


@triton.jit
def _stage(x, srow, col0, K: tl.constexpr):
    """Write x [BM, K] to this program's scratch columns [col0, col0 + K), the input of the next matmuls."""
    tl.debug_barrier()  # every thread is done reading what was there
    tl.store(srow[:, None] + col0 + tl.arange(0, K)[None, :], x.to(srow.dtype.element_ty))
    tl.debug_barrier()  # and every thread sees all of x


@triton.jit
def _mm(srow, col0, w_ptr, o, ld, wcol0,
        K: tl.constexpr, N: tl.constexpr, BM: tl.constexpr, BK: tl.constexpr):  # fmt: skip
    """scratch[:, col0 : col0 + K] @ w[:, wcol0 : wcol0 + N] for w row-major [K, ld]: float32 [BM, N].
    ``o`` is 0 at run time (see the step loop)."""
    kk = tl.arange(0, BK) + o
    rn = tl.arange(0, N)
    acc = tl.zeros((BM, N), tl.float32)
    for k0 in range(0, K, BK):
        a = tl.load(srow[:, None] + col0 + k0 + kk[None, :])
        w = tl.load(w_ptr + (k0 + kk)[:, None] * ld + wcol0 + rn[None, :])
        acc = tl.dot(a, w, acc)
    return acc


@triton.jit
def _layer_norm(x, w_ptr, b_ptr, o, eps, N: tl.constexpr):
    mean = tl.sum(x, 1) / N
    xc = x - mean[:, None]
    var = tl.sum(xc * xc, 1) / N
    return xc * tl.rsqrt(var + eps)[:, None] * _row(w_ptr, o, N) + _row(b_ptr, o, N)


@triton.jit
def _silu(x):
    return x * tl.sigmoid(x)


@triton.jit
def _head(pre, srow, y, o, ln1_w, ln1_b, w2, b2, ln2_w, ln2_b, w3, b3, eps,
          HD: tl.constexpr, NO: tl.constexpr, BM: tl.constexpr, BK: tl.constexpr):  # fmt: skip
    """The rest of a two-hidden-layer head from its first layer's pre-activation [BM, HD]:
    LN, SiLU, Linear, LN, SiLU, Linear -> [BM, NO] (through scratch slot Y at column y)."""
    _stage(_silu(_layer_norm(pre, ln1_w, ln1_b, o, eps, HD)), srow, y, HD)
    x = _mm(srow, y, w2, o, HD, 0, HD, HD, BM, BK) + _row(b2, o, HD)
    _stage(_silu(_layer_norm(x, ln2_w, ln2_b, o, eps, HD)), srow, y, HD)
    return _mm(srow, y, w3, o, NO, 0, HD, NO, BM, BK) + _row(b3, o, NO)


@triton.jit(do_not_specialize=["zero"])
def rollout_kernel(
    # inputs: [M, D] GRU state, [M, S * C] one-hot latent, [M, T, HD] the input layer's action term
    # (its bias included), [M, 2 HD] the heads' first-layer goal term (their biases included)
    deter_ptr, stoch_ptr, act_ptr, goal_ptr,
    # outputs: [M, T] rewards and success logits, [M, D] and [M, S * C] the last state
    reward_ptr, success_ptr, deter_out_ptr, stoch_out_ptr,
    # [>= programs x BM, S * C + HD + D] in the weights' dtype: each program's slots X, Y and H
    scratch_ptr,
    # GRU: [HD, 3D], [3D], [D, 3D], [3D]; the input layer's LayerNorm [HD] x 2
    w_ih, b_ih, w_hh, b_hh, ln_in_w, ln_in_b,
    # prior: [D, HD], [HD], LayerNorm [HD] x 2, [HD, S * C], [S * C]
    w_p1, b_p1, ln_p_w, ln_p_b, w_p2, b_p2,
    # [S * C, 3 HD]: the stochastic state's columns of the input layer | reward head | success head;
    # [D, 2 HD]: the GRU state's columns of the reward head | success head
    w_z, w_hd,
    # reward head after its first layer: LN, [HD, HD], [HD], LN, [HD, NB], [NB] (padded bins: bias -inf)
    r_ln1_w, r_ln1_b, r_w2, r_b2, r_ln2_w, r_ln2_b, r_w3, r_b3,
    # success head likewise, output padded to NS columns (the logit is column 0)
    s_ln1_w, s_ln1_b, s_w2, s_b2, s_ln2_w, s_ln2_b, s_w3, s_b3,
    M, eps, bin_low, bin_step, zero,
    T: tl.constexpr, D: tl.constexpr, HD: tl.constexpr, S: tl.constexpr, C: tl.constexpr,
    NB: tl.constexpr, BINS: tl.constexpr, NS: tl.constexpr,
    BM: tl.constexpr, BK: tl.constexpr,
):  # fmt: skip
    SC: tl.constexpr = S * C
    tl.static_assert(BK <= D and BK <= HD and BK <= SC, "BK must not exceed a matmul's inner size")
    local = tl.program_id(0) * BM + tl.arange(0, BM)
    live = local < M
    rows = tl.where(live, local, 0)  # out-of-range rows compute row 0's values and store nothing
    Y: tl.constexpr = SC  # scratch: slot X (the one-hot latent) at column 0, Y at SC, H at SC + HD
    H: tl.constexpr = SC + HD
    srow = scratch_ptr + local * (SC + HD + D)
    dc = tl.arange(0, D)
    hc = tl.arange(0, HD)
    sc = tl.arange(0, SC)
    h = tl.load(deter_ptr + rows[:, None] * D + dc[None, :]).to(tl.float32)
    _stage(h, srow, H, D)
    _stage(tl.load(stoch_ptr + rows[:, None] * SC + sc[None, :]), srow, 0, SC)
    classes = tl.arange(0, C)
    idx = tl.zeros((BM, S), tl.int32)
    for t in range(T):
        # ``zero`` is 0 at run time. Every load of a weight, bias or goal below is offset by
        # o = t * zero, which keeps the compiler from hoisting it (its values or address tensor) out
        # of this loop: held in registers for all steps, they spilled.
        o = t * zero * 16  # (a multiple of 16 elements: vector loads stay aligned)
        a = tl.load(act_ptr + (rows[:, None] * T + t) * HD + (hc + o)[None, :]).to(tl.float32)
        x = _mm(srow, 0, w_z, o, 3 * HD, 0, SC, HD, BM, BK) + a
        _stage(_silu(_layer_norm(x, ln_in_w, ln_in_b, o, eps, HD)), srow, Y, HD)
        # GRUCell, PyTorch's equations: r, z gates; n = tanh(W_in x + b_in + r * (W_hn h + b_hn))
        gi = _mm(srow, Y, w_ih, o, 3 * D, 0, HD, D, BM, BK) + _row(b_ih, o, D)
        r = tl.sigmoid(gi + _mm(srow, H, w_hh, o, 3 * D, 0, D, D, BM, BK) + _row(b_hh, o, D))
        gi = _mm(srow, Y, w_ih, o, 3 * D, D, HD, D, BM, BK) + _row(b_ih, D + o, D)
        u = tl.sigmoid(gi + _mm(srow, H, w_hh, o, 3 * D, D, D, D, BM, BK) + _row(b_hh, D + o, D))
        gi = _mm(srow, Y, w_ih, o, 3 * D, 2 * D, HD, D, BM, BK) + _row(b_ih, 2 * D + o, D)
        hn = _mm(srow, H, w_hh, o, 3 * D, 2 * D, D, D, BM, BK) + _row(b_hh, 2 * D + o, D)
        n = 2.0 * tl.sigmoid(2.0 * (gi + r * hn)) - 1.0
        h = (1.0 - u) * n + u * h
        _stage(h, srow, H, D)
        # prior -> the most likely class of each of the S variables (the first maximum, as torch.max)
        p = _mm(srow, H, w_p1, o, HD, 0, D, HD, BM, BK) + _row(b_p1, o, HD)
        _stage(_silu(_layer_norm(p, ln_p_w, ln_p_b, o, eps, HD)), srow, Y, HD)
        logits = _mm(srow, Y, w_p2, o, SC, 0, HD, SC, BM, BK) + _row(b_p2, o, SC)
        idx = tl.argmax(tl.reshape(logits, (BM, S, C)), 2)
        _stage(tl.reshape(classes[None, None, :] == idx[:, :, None], (BM, SC)), srow, 0, SC)
        # the heads' first layers on [h, one-hot, goal], then their other layers
        g = goal_ptr + rows[:, None] * (2 * HD) + (hc + o)[None, :]
        pre = _mm(srow, 0, w_z, o, 3 * HD, HD, SC, HD, BM, BK) + tl.load(g)
        pre += _mm(srow, H, w_hd, o, 2 * HD, 0, D, HD, BM, BK)
        out_r = _head(pre, srow, Y, o, r_ln1_w, r_ln1_b, r_w2, r_b2, r_ln2_w, r_ln2_b, r_w3, r_b3,
                      eps, HD, NB, BM, BK)  # fmt: skip
        pre = _mm(srow, 0, w_z, o, 3 * HD, 2 * HD, SC, HD, BM, BK) + tl.load(g + HD)
        pre += _mm(srow, H, w_hd, o, 2 * HD, HD, D, HD, BM, BK)
        out_s = _head(pre, srow, Y, o, s_ln1_w, s_ln1_b, s_w2, s_b2, s_ln2_w, s_ln2_b, s_w3, s_b3,
                      eps, HD, NS, BM, BK)  # fmt: skip
        if BINS > 0:  # two-hot head: symexp of the expected bin under the softmax
            bins = bin_low + bin_step * (tl.arange(0, NB) + o).to(tl.float32)
            e = tl.exp(out_r - tl.max(out_r, 1)[:, None])
            y = tl.sum(e * bins[None, :], 1) / tl.sum(e, 1)
            reward = tl.where(y < 0, -1.0, 1.0) * (tl.exp(tl.abs(y)) - 1.0)
        else:  # regression head: column 0
            reward = tl.sum(tl.where(tl.arange(0, NB)[None, :] == 0, out_r, 0.0), 1)
        success = tl.sum(tl.where(tl.arange(0, NS)[None, :] == 0, out_s, 0.0), 1)
        tl.store(reward_ptr + rows * T + t, reward, mask=live)
        tl.store(success_ptr + rows * T + t, success, mask=live)
    tl.store(deter_out_ptr + rows[:, None] * D + dc[None, :], h, mask=live[:, None])
    onehot = tl.reshape(classes[None, None, :] == idx[:, :, None], (BM, SC)).to(tl.float32)
    tl.store(stoch_out_ptr + rows[:, None] * SC + sc[None, :], onehot, mask=live[:, None])
