"""Token-level distillation losses over logits: pure functions, chunked, with analytic gradients.

Teacher distribution p = softmax(teacher_logits / T), student distribution q = softmax(student_logits / T),
both over the same vocabulary, one pair per token. Gradients flow into the student only; the teacher is
always detached. Every divergence below is in nats per token, before the reduction over tokens.

Conventions (``kind`` -> per-token loss; p is always the teacher, q the student):

============  =======================================  ===================================================
kind          per-token loss                           parameter endpoints and remarks
============  =======================================  ===================================================
``fkl``       KL(p || q) = sum_v p log(p/q)            forward KL: mode-covering, standard KD
``rkl``       KL(q || p) = sum_v q log(q/p)            reverse KL: mode-seeking (MiniLLM)
``jsd``       beta KL(p || m) + (1-beta) KL(q || m),   generalised JSD of GKD / TRL's generalized_jsd_loss
              m = beta p + (1-beta) q                  (beta weighs the teacher); beta=0.5 is the usual JSD.
                                                       The formula is continuous and *vanishes* at both
                                                       ends (m -> q, m -> p): JSD ~ beta FKL as beta -> 0
                                                       and ~ (1-beta) RKL as beta -> 1. Like TRL, the
                                                       endpoints are special-cased: beta=0 gives ``fkl``,
                                                       beta=1 gives ``rkl``.
``skew_fkl``  KL(p || alpha p + (1-alpha) q)           DistiLLM's alpha-skew KL: alpha=0 is exactly
                                                       ``fkl`` (continuously); it vanishes as alpha -> 1.
``skew_rkl``  KL(q || alpha q + (1-alpha) p)           DistiLLM's alpha-skew reverse KL: alpha=0 is
                                                       exactly ``rkl``; it vanishes as alpha -> 1.
``tvd``       1/2 sum_v |p - q|                        total variation distance, in [0, 1]
``sym_kl``    KL(p || q) + KL(q || p)                  Jeffreys divergence: the *sum* of ``fkl`` and
                                                       ``rkl``, not their mean
============  =======================================  ===================================================

Temperature T divides both models' logits. ``scale_by_t2=True`` multiplies the loss (and so the gradient)
by T**2, Hinton et al.'s correction that keeps gradient magnitudes comparable across temperatures; the
default (False) matches TRL's GKD, which divides by T and does not rescale.

Reductions: ``"mean"`` averages over unmasked tokens (a batch whose tokens are all masked gives 0 and zero
gradients, not NaN), ``"sum"`` adds them, ``"none"`` returns the per-token losses with zeros at masked
positions. ``mask`` is True/1 where a token counts (completion tokens), False/0 for prompt and padding.

Memory: ``kd_loss`` never builds full [N, V] fp32 probability tensors. A custom autograd Function walks the
N = batch x seq tokens in chunks of rows, computes each chunk's loss and its analytic gradient with respect
to the student logits in fp32 (fp64 stays fp64; bf16/fp16 inputs are upcast chunk by chunk) inside a
preallocated workspace of 2-3 chunk-sized buffers (2 more when inputs must be gathered by the mask, upcast
or divided by T), and keeps only that gradient, in the student logits' dtype, for backward. Backward scales
it in place and hands it over, so the extra memory is one gradient-sized tensor, which any implementation
must produce, plus the workspace. If backward runs a second time on the same graph (``retain_graph=True``,
gradcheck) the gradient is recomputed chunk by chunk from the saved inputs. ``naive_kd_loss`` is the plain
full-softmax autograd version, kept as the reference for tests and the benchmark (bench/bench_losses.py).
That gradient is the floor of any loss over logits (0.13-0.23x of the naive extra memory at 2,048 tokens);
`kdlib.distillation.fused_losses.kd_loss_from_hidden` goes below it by taking hidden states and the output layer instead.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch

KINDS = ("fkl", "rkl", "jsd", "skew_fkl", "skew_rkl", "tvd", "sym_kl")
REDUCTIONS = ("mean", "sum", "none")

# Elements per chunk (rows x vocab), chosen by measurement on the shared 2-core CPU here (bench/bench_losses.py
# --tune; the sweep is in reports/bench/losses.md): with other jobs on the cores every parallel op pays a
# scheduling wait, so chunks below ~2^21 elements are several times slower, while each doubling above costs
# memory (2-3 fp32 buffers of this size) for little time. 2^22 = 16 MiB per buffer, 27 rows at vocab 151,936.
# On CUDA bigger chunks amortise kernel launches; that value is not swept (on an H200 it gives 120 ms and
# 7.3 GiB extra for output layer + loss at 8,192 tokens x vocab 151,936 in bf16: reports/bench/gpu.json).
CPU_CHUNK_ELEMS = 2**22
CUDA_CHUNK_ELEMS = 2**25


@dataclass(frozen=True)
class _Spec:
    kind: str
    beta: float
    alpha: float
    temperature: float
    scale_by_t2: bool
    chunk_rows: int


# ---------------------------------------------------------------------------------------------------------
# Per-chunk kernels. Each takes tempered fp32 logits s (student) and t (teacher) of shape [C, V], a workspace
# w of [C, V] buffers and `out`, where the gradient goes (a slice of the gradient tensor, or None: then a
# workspace buffer). It returns (loss [C], g, c) with dL/ds = c * g; the constant c is applied by the one
# multiply that backward does anyway. Every [C, V] result is written into the workspace or `out` (out= or
# in place), so memory is exactly: gradient + 2-3 chunk buffers (+2 for converted inputs, see `_run`); and
# every op is one pass, since with two cores shared by other jobs each parallel op costs a scheduling wait.
# Softmax Jacobian: for L(q) with q = softmax(s), dL/ds_j = q_j (g_j - sum_k q_k g_k), g = dL/dq.
# ---------------------------------------------------------------------------------------------------------

def _rowdot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """sum_v a[:, v] b[:, v] as a batched matrix product: no [C, V] temporary (unlike (a * b).sum(-1))."""
    return torch.bmm(a.unsqueeze(1), b.unsqueeze(2)).view(-1)


def _tiny(x: torch.Tensor) -> float:
    return torch.finfo(x.dtype).tiny


def _mixture(a, b, w, out):
    """w a + (1-w) b for 0 < w < 1 in probability space (cheaper than a logaddexp of log-probabilities),
    clamped to the smallest normal float so that where both probabilities underflow its log stays finite
    (the terms it enters are then multiplied by ~0)."""
    return torch.lerp(b, a, w, out=out).clamp_min_(_tiny(a))


def _fkl(s, t, w, out):
    # L = sum p (log p - log q); dL/ds = q - p
    logp = torch.log_softmax(t, -1, out=w[0])
    p = torch.exp(logp, out=w[1])
    logq = torch.log_softmax(s, -1, out=w[2])
    loss = _rowdot(p, logp.sub_(logq))
    q = logq.exp_()
    return loss, torch.sub(q, p, out=q if out is None else out), 1.0


def _rkl(s, t, w, out):
    # L = sum q (log q - log p); dL/dq = log q - log p + 1, so dL/ds = q (log q - log p - L)
    logq, logp = torch.log_softmax(s, -1, out=w[0]), torch.log_softmax(t, -1, out=w[1])
    d = torch.sub(logq, logp, out=logp)
    q = logq.exp_()
    loss = _rowdot(q, d)
    return loss, torch.mul(d.sub_(loss[:, None]), q, out=d if out is None else out), 1.0


def _sym_kl(s, t, w, out):
    # L = sum (q - p)(log q - log p); dL/ds = (q - p) + q (log q - log p - RKL) = q (d - RKL + 1) - p
    logq, logp = torch.log_softmax(s, -1, out=w[0]), torch.log_softmax(t, -1, out=w[1])
    d = torch.sub(logq, logp, out=w[2])
    q, p = logq.exp_(), logp.exp_()
    rkl = _rowdot(q, d)
    loss = rkl - _rowdot(p, d)
    return loss, torch.sub(d.sub_((rkl - 1)[:, None]).mul_(q), p, out=d if out is None else out), 1.0


def _jsd(s, t, w, out, beta):
    # L = beta KL(p||m) + (1-beta) KL(q||m), m = beta p + (1-beta) q.
    # dL/dq = (1-beta)(log q - log m) (the m-terms cancel because sum m = 1), so
    # dL/ds = (1-beta) q (log q - log m - KL(q||m)).
    logp = torch.log_softmax(t, -1, out=w[0])
    p = torch.exp(logp, out=w[1])
    p_logp = _rowdot(p, logp)
    q = torch.softmax(s, -1, out=w[0])  # log p is not needed any more
    logm = _mixture(p, q, beta, out=w[2]).log_()
    kl_pm = p_logp - _rowdot(p, logm)
    # log q - log m into p's buffer; q is clamped where it underflows so that its log stays finite
    a = torch.clamp(q, min=_tiny(q), out=p).log_().sub_(logm)
    kl_qm = _rowdot(q, a)
    loss = beta * kl_pm + (1 - beta) * kl_qm
    return loss, torch.mul(a.sub_(kl_qm[:, None]), q, out=a if out is None else out), 1 - beta


def _skew_fkl(s, t, w, out, alpha):
    # L = sum p log(p / r), r = alpha p + (1-alpha) q. With u = p / r: dL/dq = -(1-alpha) u, so
    # dL/ds = (1-alpha) q (sum_k q_k u_k - u).  u <= 1/alpha stays finite even where r is clamped.
    p, q = torch.softmax(t, -1, out=w[0]), torch.softmax(s, -1, out=w[1])
    u = torch.div(p, _mixture(p, q, alpha, out=w[2]), out=w[2])
    loss = torch.xlogy(p, u, out=p).sum(-1)  # p log u, and 0 where p underflows to 0
    return loss, torch.mul(u.sub_(_rowdot(q, u)[:, None]), q, out=u if out is None else out), -(1 - alpha)


def _skew_rkl(s, t, w, out, alpha):
    # L = sum q log(q / r), r = alpha q + (1-alpha) p. With v = q / r and d = log v:
    # dL/dq = d + 1 - alpha v, so dL/ds = q (d - alpha v - L + alpha sum_k q_k v_k).
    p, q = torch.softmax(t, -1, out=w[0]), torch.softmax(s, -1, out=w[1])
    r = _mixture(q, p, alpha, out=p)
    v = torch.div(q, r, out=r).clamp_min_(_tiny(q))  # clamped so that log v is finite where q underflows
    d = torch.log(v, out=w[2])
    loss = _rowdot(q, d)
    shift = alpha * _rowdot(q, v) - loss
    g = d.sub_(v, alpha=alpha).add_(shift[:, None])
    return loss, torch.mul(g, q, out=g if out is None else out), 1.0


def _tvd(s, t, w, out):
    # L = 1/2 sum |q - p|; subgradient dL/dq = 1/2 sign(q - p), so dL/ds = 1/2 q (sigma - sum_k q_k sigma_k)
    q, p = torch.softmax(s, -1, out=w[0]), torch.softmax(t, -1, out=w[1])
    diff = torch.sub(q, p, out=p)
    loss = 0.5 * torch.linalg.vector_norm(diff, 1, -1)  # a reduction: no |diff| buffer
    sigma = diff.sign_()
    return loss, torch.mul(sigma.sub_(_rowdot(q, sigma)[:, None]), q, out=sigma if out is None else out), 0.5


_KERNELS = {"fkl": _fkl, "rkl": _rkl, "jsd": _jsd, "skew_fkl": _skew_fkl, "skew_rkl": _skew_rkl,
            "tvd": _tvd, "sym_kl": _sym_kl}


def _kernel_for(spec: _Spec):
    """The chunk kernel with its parameter bound; parameter values whose formula is exactly FKL/RKL go there."""
    if spec.kind == "jsd" and spec.beta in (0.0, 1.0):
        return _fkl if spec.beta == 0.0 else _rkl
    if spec.kind in ("skew_fkl", "skew_rkl") and spec.alpha == 0.0:
        return _fkl if spec.kind == "skew_fkl" else _rkl
    kernel = _KERNELS[spec.kind]
    if spec.kind == "jsd":
        return functools.partial(kernel, beta=spec.beta)
    if spec.kind.startswith("skew"):
        return functools.partial(kernel, alpha=spec.alpha)
    return kernel


def _n_buffers(spec: _Spec) -> int:
    return 2 if _kernel_for(spec) in (_rkl, _tvd) else 3


# ---------------------------------------------------------------------------------------------------------
# The chunk loop and the autograd Function
# ---------------------------------------------------------------------------------------------------------

def _chunks(n_rows: int, rows: torch.Tensor | None, size: int):
    for start in range(0, n_rows, size):
        yield slice(start, min(start + size, n_rows)) if rows is None else rows[start:start + size]


def _run(s: torch.Tensor, t: torch.Tensor, rows: torch.Tensor | None, spec: _Spec, want_grad: bool = True):
    """Per-token losses [N] (compute dtype, zeros at masked rows) and, if wanted, the gradient dL_i/ds_i
    [N, V] in s's dtype (zero rows where masked) as (g, c) with gradient = c * g."""
    kernel = _kernel_for(spec)
    cdtype = torch.promote_types(torch.promote_types(s.dtype, t.dtype), torch.float32)
    inv_t = 1.0 / spec.temperature
    # d(loss)/d(raw logits) = dL/ds / T; with Hinton's scaling both loss and gradient gain T^2.
    loss_scale = spec.temperature**2 if spec.scale_by_t2 else 1.0
    n_rows = s.shape[0] if rows is None else rows.numel()
    size = min(spec.chunk_rows, max(n_rows, 1))
    # inputs are used in place (views) unless they must be gathered, upcast or divided by T
    convert = rows is not None or s.dtype != cdtype or t.dtype != cdtype or inv_t != 1.0
    work = torch.empty(_n_buffers(spec) + 2 * convert, size, s.shape[1], dtype=cdtype, device=s.device)
    losses = torch.zeros(s.shape[0], dtype=cdtype, device=s.device)
    grad, factor = None, 1.0
    if want_grad:
        grad = torch.empty_like(s) if rows is None else torch.zeros_like(s)
    for idx in _chunks(n_rows, rows, size):
        sc, tc = s[idx], t[idx]
        w = work[:, : sc.shape[0]]
        if convert:  # copy first, then scale in fp32: a bf16 multiply would round the scaled logits
            sc, tc = w[-2].copy_(sc), w[-1].copy_(tc)
            if inv_t != 1.0:
                sc.mul_(inv_t)
                tc.mul_(inv_t)
        # contiguous rows: the gradient is written straight into its place (cast to s's dtype on the way)
        out = grad[idx] if want_grad and isinstance(idx, slice) else None
        loss, g, factor = kernel(sc, tc, w, out)
        losses[idx] = loss * loss_scale if loss_scale != 1.0 else loss
        if want_grad and out is None:  # gathered rows: scatter back, cast to s's dtype (index_put will not)
            grad[idx] = g.to(grad.dtype)
    return losses, (grad, factor * loss_scale * inv_t)


class _ChunkedKD(torch.autograd.Function):
    @staticmethod
    def forward(ctx, s, t, rows, spec):
        losses, ctx.grad = _run(s, t, rows, spec)
        ctx.spec = spec
        ctx.save_for_backward(s, t, rows)
        return losses

    @staticmethod
    def backward(ctx, grad_losses):
        stored, ctx.grad = ctx.grad, None  # hand the stored gradient over: no [N, V] copy
        if stored is None:  # a second backward through the same graph: recompute
            s, t, rows = ctx.saved_tensors
            stored = _run(s, t, rows, ctx.spec)[1]
        grad, factor = stored
        # the one pass over the gradient: upstream per-token weights times the kernel's constant factor
        grad.mul_((grad_losses.to(torch.float64) * factor).to(grad.dtype)[:, None])
        return grad, None, None, None


# ---------------------------------------------------------------------------------------------------------
# Public API
# ---------------------------------------------------------------------------------------------------------

def _check_options(kind, temperature, beta, alpha, reduction):
    """The loss options, shared by every entry point (logits here, hidden states in `kdlib.distillation.fused_losses`)."""
    if kind not in KINDS:
        raise ValueError(f"unknown loss kind {kind!r}: expected one of {KINDS}")
    if reduction not in REDUCTIONS:
        raise ValueError(f"unknown reduction {reduction!r}: expected one of {REDUCTIONS}")
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if not 0.0 <= beta <= 1.0:
        raise ValueError(f"beta must be in [0, 1], got {beta}")
    if not 0.0 <= alpha < 1.0:
        raise ValueError(f"alpha must be in [0, 1) (alpha=1 makes the skew KLs identically 0), got {alpha}")


def _counted_rows(mask, n_rows: int, device) -> tuple[torch.Tensor | None, int]:
    """(indices of the counted rows, or None when every row counts; number of counted rows)."""
    if mask is None:
        return None, n_rows
    keep = mask.reshape(-1).to(device=device) != 0
    n_valid = int(keep.sum())
    return (keep.nonzero().view(-1) if n_valid < n_rows else None), n_valid


def _check(student_logits, teacher_logits, kind, mask, temperature, beta, alpha, reduction):
    _check_options(kind, temperature, beta, alpha, reduction)
    s_shape, t_shape = tuple(student_logits.shape), tuple(teacher_logits.shape)
    if student_logits.dim() < 2:
        raise ValueError(f"logits must be [B, T, V] or [N, V], got student shape {s_shape}")
    if s_shape[-1] != t_shape[-1]:
        raise ValueError(
            f"vocab sizes differ: student logits have V={s_shape[-1]}, teacher logits V={t_shape[-1]}. "
            "Token-level KD needs one shared vocabulary; if the tokenizers are the same and only the "
            "embedding matrices are padded, slice both to the tokenizer's length; otherwise the models "
            "need a vocabulary mapping or sequence-level KD.")
    if s_shape != t_shape:
        raise ValueError(f"student logits {s_shape} and teacher logits {t_shape} must have the same shape")
    if mask is not None and tuple(mask.shape) != s_shape[:-1]:
        raise ValueError(f"mask shape {tuple(mask.shape)} must equal the logits' leading shape {s_shape[:-1]}")
    if not student_logits.is_floating_point() or not teacher_logits.is_floating_point():
        raise TypeError("logits must be floating point tensors")


def _reduce(losses: torch.Tensor, n_valid: int, reduction: str, lead_shape):
    if reduction == "none":
        return losses.view(lead_shape)
    total = losses.sum()
    return total / max(n_valid, 1) if reduction == "mean" else total


def _count_nonfinite(x: torch.Tensor, rows: int = 256) -> str:
    """'3 NaN, 1 +inf' for a tensor, counted chunk by chunk so that the error path allocates little."""
    counts = {"NaN": 0, "+inf": 0, "-inf": 0}
    flat = x.detach().reshape(-1, x.shape[-1])
    for start in range(0, flat.shape[0], rows):
        part = flat[start:start + rows]
        counts["NaN"] += int(torch.isnan(part).sum())
        counts["+inf"] += int(torch.isposinf(part).sum())
        counts["-inf"] += int(torch.isneginf(part).sum())
    return ", ".join(f"{n} {name}" for name, n in counts.items() if n) or "no NaN/inf"


def _raise_if_nonfinite(losses, student_logits, teacher_logits, kind, temperature):
    if bool(torch.isfinite(losses).all()):
        return
    raise FloatingPointError(
        f"kd_loss(kind={kind!r}) is not finite for {int((~torch.isfinite(losses)).sum())} token(s): "
        f"student_logits contain {_count_nonfinite(student_logits)}; teacher_logits contain "
        f"{_count_nonfinite(teacher_logits)} (temperature={temperature}). Logits must be finite: mask "
        "vocabulary entries with a large negative finite value (e.g. -1e4), not -inf, and check the models "
        "for overflow (fp16 logits saturate at 65504).")


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, kind: str = "fkl",
            mask: torch.Tensor | None = None, temperature: float = 1.0, beta: float = 0.5,
            alpha: float = 0.1, chunk_size: int | None = None, reduction: str = "mean",
            scale_by_t2: bool = False) -> torch.Tensor:
    """Token-level distillation loss between student and teacher logits (see the module's table).

    student_logits, teacher_logits: [B, T, V] or [N, V], same shape and vocabulary; the teacher is detached.
    mask: [B, T] (or [N]) bool/0-1, True where the token counts. temperature: T > 0 divides both logits.
    beta: JSD mixture weight of the teacher. alpha: skew of the skew KLs. chunk_size: rows (tokens) per
    chunk; None picks about 2^22 elements per chunk on CPU. reduction: "mean" over unmasked tokens,
    "sum", or "none" (per-token losses, shape of the leading dims). Returns an fp32 (or fp64) tensor.
    Raises FloatingPointError naming NaN/inf in the inputs if any counted token's loss is not finite.
    """
    _check(student_logits, teacher_logits, kind, mask, temperature, beta, alpha, reduction)
    lead_shape, vocab = student_logits.shape[:-1], student_logits.shape[-1]
    s = student_logits.reshape(-1, vocab)
    t = teacher_logits.detach().reshape(-1, vocab)
    rows, n_valid = _counted_rows(mask, s.shape[0], s.device)
    if chunk_size is None:
        elems = CUDA_CHUNK_ELEMS if s.is_cuda else CPU_CHUNK_ELEMS
        chunk_size = max(1, elems // max(vocab, 1))
    spec = _Spec(kind, float(beta), float(alpha), float(temperature), bool(scale_by_t2), int(chunk_size))
    if s.requires_grad and torch.is_grad_enabled():
        losses = _ChunkedKD.apply(s, t, rows, spec)
    else:  # evaluation: same kernels, and no gradient buffer is kept
        with torch.no_grad():
            losses = _run(s, t, rows, spec, want_grad=False)[0]
    _raise_if_nonfinite(losses.detach(), student_logits, teacher_logits, kind, temperature)
    return _reduce(losses, n_valid, reduction, lead_shape)


# ---------------------------------------------------------------------------------------------------------
# Naive reference: full [N, V] softmaxes and autograd, the way one writes it first. Used by tests and bench.
# ---------------------------------------------------------------------------------------------------------

def naive_kd_loss(student_logits, teacher_logits, kind="fkl", mask=None, temperature=1.0, beta=0.5,
                  alpha=0.1, reduction="mean", scale_by_t2=False):
    """Same contract as `kd_loss`, computed with whole-vocabulary fp32 tensors and autograd."""
    _check(student_logits, teacher_logits, kind, mask, temperature, beta, alpha, reduction)
    cdtype = torch.promote_types(torch.promote_types(student_logits.dtype, teacher_logits.dtype), torch.float32)
    s, t = student_logits.to(cdtype), teacher_logits.detach().to(cdtype)
    if temperature != 1.0:
        s, t = s / temperature, t / temperature
    logq, logp = torch.log_softmax(s, -1), torch.log_softmax(t, -1)
    del s, t
    if kind == "jsd" and beta in (0.0, 1.0):
        kind = "fkl" if beta == 0.0 else "rkl"
    # each branch builds only the tensors its formula needs, as a first implementation would
    if kind == "fkl":
        per_token = (logp.exp() * (logp - logq)).sum(-1)
    elif kind == "rkl":
        per_token = (logq.exp() * (logq - logp)).sum(-1)
    elif kind == "sym_kl":
        per_token = ((logp.exp() - logq.exp()) * (logp - logq)).sum(-1)
    elif kind == "tvd":
        per_token = 0.5 * (logp.exp() - logq.exp()).abs().sum(-1)
    else:
        p, q = logp.exp(), logq.exp()
        if kind == "jsd":
            logm = torch.log(beta * p + (1 - beta) * q)
            per_token = beta * (p * (logp - logm)).sum(-1) + (1 - beta) * (q * (logq - logm)).sum(-1)
        elif kind == "skew_fkl":
            per_token = (p * (logp - torch.log(alpha * p + (1 - alpha) * q))).sum(-1)
        else:  # skew_rkl
            per_token = (q * (logq - torch.log(alpha * q + (1 - alpha) * p))).sum(-1)
    if scale_by_t2:
        per_token = per_token * temperature**2
    n_valid = per_token.numel()
    if mask is not None:
        keep = mask.to(per_token.device) != 0
        per_token = torch.where(keep, per_token, torch.zeros_like(per_token))
        n_valid = int(keep.sum())
    return _reduce(per_token, n_valid, reduction, per_token.shape)
