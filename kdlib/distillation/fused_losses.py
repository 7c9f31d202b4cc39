"""Distillation losses fused with the output layer: hidden states in, never the [N, V] logits or their gradient.

`kdlib.distillation.losses.kd_loss` takes logits. Its extra memory is then at least one [N, V] tensor: the gradient with
respect to the student logits, which autograd needs to reach the output layer. At vocabulary 151,936 and
2,048 tokens that gradient alone is 1.16 GiB in fp32, and the logits of both models another 2.3 GiB, more
than everything else a small model's step holds. `kd_loss_from_hidden` takes the last hidden states and the
output layer instead (student: ``h @ W.T + b``; teacher: its logits, or its hidden states and output layer)
and walks the tokens in chunks: per chunk it computes both models' logits, the loss and its analytic
gradient with the kernels of `kdlib.distillation.losses` (same conventions table, same maths), and immediately folds that
gradient into the two small gradients that matter, dL/dh [N, H] and dL/dW [V, H] (an fp32 accumulator).
Extra memory is therefore those gradients, which any implementation produces, plus a few chunk-sized buffers.

The gradients are computed in the forward pass, for unit upstream weights. Backward scales them by the
upstream gradient when it is the same for every counted token (``reduction="mean"`` or ``"sum"``, the
training case); per-token upstream weights (``reduction="none"`` followed by a weighted sum) or a second
backward through the same graph recompute them chunk by chunk with those weights, so the result is always
exact.

Valid for output layers that are a plain linear map (``logits = h @ W.T + b``), which covers GPT-2, Llama,
Qwen, SmolLM and most decoders. Models that post-process their logits (Gemma's final soft-capping, a logit
scale) are refused by `check_plain_output_layer`.

    loss = kd_loss_from_hidden(student_h, student.get_output_embeddings(), teacher_logits=t_logits, kind="fkl")
    loss = kd_loss_from_hidden(student_h, s_head, teacher_hidden=t_h, teacher_head=t_head, kind="jsd")
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from kdlib.distillation.losses import (
    _check_options,
    _count_nonfinite,
    _counted_rows,
    _kernel_for,
    _n_buffers,
    _reduce,
    _Spec,
)

# Tokens (rows) per chunk. Every chunk streams the output layers about five times (student and teacher
# forward, dL/dh = g @ W, and the read-modify-write of the fp32 dL/dW accumulator), so the number of chunks,
# not their width in vocabulary, sets the memory traffic, while each of the ~5 chunk buffers costs rows x V
# floats. Measured here (1 thread, FKL, 2,048 tokens, vocab 151,936, hidden 896; the four GEMMs alone take
# 14 s): 55 rows 25.1 s / 0.67 GiB extra, 128 rows 17.8 s / 0.88 GiB, 256 rows 15.4 s / 1.24 GiB, against
# 27.4 s / 8.13 GiB for logits + naive loss. On CUDA, measured on an H200 (bench/gpu_suite.py, JSD, bf16,
# 8,192 tokens, vocab 151,936, student H 896, teacher H 1536; reports/bench/gpu.json): 256 rows 164 ms /
# 1.20 GiB extra, 512 rows 131 ms / 2.14 GiB, 1024 rows 126 ms / 4.03 GiB, 4096 rows 115 ms / 15.3 GiB,
# against 103 ms / 41.7 GiB naive and 145 ms / 0.33 GiB for Liger's fused linear JSD (bf16 accumulation of
# dL/dW; 172 ms / 0.71 GiB with fp32 accumulation, as here). 512 is the knee.
CPU_CHUNK_ROWS = 128
CUDA_CHUNK_ROWS = 512

# config attributes under which transformers models declare that their logits are not h @ W.T + b
_LOGIT_POSTPROCESSING = ("final_logit_softcapping", "logit_scale", "logits_scaling", "output_multiplier_scale")


@dataclass(frozen=True)
class _Head:
    """An output layer as tensors: weight [V, H] and optional bias [V]."""
    weight: torch.Tensor
    bias: torch.Tensor | None


def _as_head(head, name: str) -> _Head:
    if isinstance(head, torch.Tensor):
        weight, bias = head, None
    elif isinstance(head, (tuple, list)) and len(head) == 2:
        weight, bias = head
    elif hasattr(head, "weight"):
        weight, bias = head.weight, getattr(head, "bias", None)
    else:
        raise TypeError(f"{name} must be an output layer (an nn.Linear-like module with .weight), a weight "
                        f"tensor [V, H] or a (weight, bias) pair, got {type(head).__name__}")
    if not isinstance(weight, torch.Tensor) or weight.dim() != 2:
        raise ValueError(f"{name}'s weight must be a [vocab, hidden] matrix, got "
                         f"{tuple(weight.shape) if isinstance(weight, torch.Tensor) else type(weight).__name__}")
    if bias is not None and tuple(bias.shape) != (weight.shape[0],):
        raise ValueError(f"{name}'s bias has shape {tuple(bias.shape)}, expected ({weight.shape[0]},)")
    return _Head(weight, bias)


def _teacher(t_logits, t_h, t_w, t_b) -> tuple:
    """The teacher as `_run` takes it: ("logits", [N, V]) or ("hidden", [N, Ht], its output layer)."""
    return ("logits", t_logits) if t_logits is not None else ("hidden", t_h, _Head(t_w, t_b))


def check_plain_output_layer(model) -> None:
    """Refuse models whose logits are not ``hidden @ W.T + b`` (the fused loss would silently differ)."""
    config = getattr(model, "config", None)
    text_config = getattr(config, "get_text_config", lambda: config)() if config is not None else None
    for name in _LOGIT_POSTPROCESSING:
        value = getattr(text_config, name, None)
        if value not in (None, 0, 0.0, 1, 1.0):
            raise ValueError(f"{type(model).__name__} post-processes its logits ({name}={value}): "
                             "kd_loss_from_hidden assumes logits = hidden @ W.T + b; use kdlib.distillation.losses.kd_loss "
                             "on the model's logits instead")


# ---------------------------------------------------------------------------------------------------------
# The chunk loop
# ---------------------------------------------------------------------------------------------------------

class _Workspace:
    """Preallocated chunk buffers: kernel buffers in the compute dtype, plus the two models' logits chunks."""

    def __init__(self, spec: _Spec, size: int, vocab: int, cdtype, s_dtype, t_dtype, device):
        self.kernel = torch.empty(_n_buffers(spec), size, vocab, dtype=cdtype, device=device)
        self.s = torch.empty(size, vocab, dtype=cdtype, device=device)
        self.t = torch.empty(size, vocab, dtype=cdtype, device=device)
        # logits of a model whose weights are not in the compute dtype land here first (e.g. bf16), as the
        # model's own output layer would produce them, then are upcast into s / t
        self.s_raw = torch.empty(size, vocab, dtype=s_dtype, device=device) if s_dtype != cdtype else None
        self.t_raw = (torch.empty(size, vocab, dtype=t_dtype, device=device)
                      if t_dtype is not None and t_dtype != cdtype else None)
        # the gradient chunk in the weights' dtype, for dL/dh = g @ W
        self.g_low = torch.empty(size, vocab, dtype=s_dtype, device=device) if s_dtype != cdtype else None


def _linear_into(x, head: _Head, raw, out):
    """out[:C] = x @ W.T + b, computed in the weights' dtype (into `raw` when that is not out's dtype)."""
    rows = x.shape[0]
    dest = (raw if raw is not None else out)[:rows]
    if head.bias is not None:
        torch.addmm(head.bias, x, head.weight.t(), out=dest)
    else:
        torch.mm(x, head.weight.t(), out=dest)
    if raw is not None:
        out[:rows].copy_(dest)
    return out[:rows]


def _run(h, head: _Head, teacher, rows, spec: _Spec, want: tuple[bool, bool, bool], row_weights=None):
    """Per-token losses [N] (zeros at uncounted rows) and, for the wanted inputs (h, W, b), the gradients
    for upstream weights `row_weights` (None: 1 for every token), before the kernels' constant factor.

    teacher: ("logits", t [N, V]) or ("hidden", t_h [N, Ht], _Head)."""
    kernel = _kernel_for(spec)
    w_dtype = head.weight.dtype
    t_dtype = teacher[1].dtype if teacher[0] == "logits" else teacher[2].weight.dtype
    cdtype = torch.promote_types(torch.promote_types(w_dtype, t_dtype), torch.float32)
    inv_t = 1.0 / spec.temperature
    loss_scale = spec.temperature**2 if spec.scale_by_t2 else 1.0
    n_total, vocab = h.shape[0], head.weight.shape[0]
    n_rows = n_total if rows is None else rows.numel()
    size = min(spec.chunk_rows, max(n_rows, 1))
    ws = _Workspace(spec, size, vocab, cdtype, w_dtype, t_dtype if teacher[0] == "hidden" else None, h.device)
    losses = torch.zeros(n_total, dtype=cdtype, device=h.device)
    want_h, want_w, want_b = want
    grad_h = torch.zeros_like(h) if want_h else None
    grad_w = torch.zeros(head.weight.shape, dtype=cdtype, device=h.device) if want_w else None
    grad_b = torch.zeros(vocab, dtype=cdtype, device=h.device) if want_b else None
    factor = 1.0
    for start in range(0, n_rows, size):
        idx = slice(start, min(start + size, n_rows)) if rows is None else rows[start:start + size]
        hc = h[idx]
        c = hc.shape[0]
        sc = _linear_into(hc, head, ws.s_raw, ws.s)
        if teacher[0] == "logits":
            tc = ws.t[:c].copy_(teacher[1][idx])
        else:
            tc = _linear_into(teacher[1][idx], teacher[2], ws.t_raw, ws.t)
        if inv_t != 1.0:
            sc.mul_(inv_t)
            tc.mul_(inv_t)
        loss, g, factor = kernel(sc, tc, ws.kernel[:, :c], None)
        losses[idx] = loss * loss_scale if loss_scale != 1.0 else loss
        if not any(want):
            continue
        if row_weights is not None:
            g.mul_(row_weights[idx].to(g.dtype)[:, None])
        if want_h:  # dL/dh = g @ W, in the weights' dtype as autograd through the layer would do it
            g_for_h = ws.g_low[:c].copy_(g) if ws.g_low is not None else g
            grad_h[idx] = g_for_h @ head.weight
        if want_w:  # dL/dW += g.T @ h, accumulated in fp32
            torch.addmm(grad_w, g.t(), hc.to(cdtype), out=grad_w)
        if want_b:
            grad_b.add_(g.sum(0))
    return losses, (grad_h, grad_w, grad_b), factor * loss_scale * inv_t


class _FusedHeadKD(torch.autograd.Function):
    @staticmethod
    def forward(ctx, h, weight, bias, t_logits, t_h, t_weight, t_bias, rows, spec):
        head = _Head(weight, bias)
        teacher = _teacher(t_logits, t_h, t_weight, t_bias)
        want = (ctx.needs_input_grad[0], ctx.needs_input_grad[1], bias is not None and ctx.needs_input_grad[2])
        losses, grads, factor = _run(h, head, teacher, rows, spec, want)
        ctx.grads, ctx.factor, ctx.spec, ctx.want = grads, factor, spec, want
        ctx.save_for_backward(h, weight, bias, t_logits, t_h, t_weight, t_bias, rows)
        return losses

    @staticmethod
    def backward(ctx, grad_losses):
        h, weight, bias, t_logits, t_h, t_weight, t_bias, rows = ctx.saved_tensors
        counted = grad_losses if rows is None else grad_losses[rows]
        stored, ctx.grads = ctx.grads, None
        uniform = counted.numel() == 0 or bool((counted == counted[0]).all())
        if stored is not None and uniform:
            scale = float(counted[0]) * ctx.factor if counted.numel() else 0.0
            grads = stored
        else:  # per-token upstream weights, or a second backward: recompute with them
            teacher = _teacher(t_logits, t_h, t_weight, t_bias)
            weights = grad_losses.to(torch.float64 if h.dtype == torch.float64 else torch.float32)
            _, grads, _ = _run(h, _Head(weight, bias), teacher, rows, ctx.spec, ctx.want, row_weights=weights)
            scale = ctx.factor
        grad_h, grad_w, grad_b = grads
        out_h = grad_h.mul_(scale) if grad_h is not None else None
        out_w = grad_w.mul_(scale).to(weight.dtype) if grad_w is not None else None
        out_b = grad_b.mul_(scale).to(bias.dtype) if grad_b is not None else None
        return out_h, out_w, out_b, None, None, None, None, None, None


# ---------------------------------------------------------------------------------------------------------
# Public API
# ---------------------------------------------------------------------------------------------------------

def _flat(x: torch.Tensor, name: str) -> torch.Tensor:
    if x.dim() < 2:
        raise ValueError(f"{name} must be [B, T, H] or [N, H], got shape {tuple(x.shape)}")
    return x.reshape(-1, x.shape[-1])


def _check(student_hidden, s_head: _Head, teacher_logits, teacher_hidden, t_head, kind, mask, temperature, beta,
           alpha, reduction):
    _check_options(kind, temperature, beta, alpha, reduction)
    if (teacher_logits is None) == (teacher_hidden is None):
        raise ValueError("give the teacher either as teacher_logits or as teacher_hidden with teacher_head, not both")
    if teacher_hidden is not None and t_head is None:
        raise ValueError("teacher_hidden needs teacher_head (the teacher's output layer)")
    lead = tuple(student_hidden.shape[:-1])
    if student_hidden.shape[-1] != s_head.weight.shape[1]:
        raise ValueError(f"student hidden size {student_hidden.shape[-1]} does not match its output layer "
                         f"{tuple(s_head.weight.shape)} ([vocab, hidden])")
    vocab = s_head.weight.shape[0]
    if teacher_logits is not None:
        if teacher_logits.shape[-1] != vocab:
            raise ValueError(
                f"vocab sizes differ: the student's output layer has V={vocab}, teacher logits V="
                f"{teacher_logits.shape[-1]}. Token-level KD needs one shared vocabulary.")
        if tuple(teacher_logits.shape[:-1]) != lead:
            raise ValueError(f"teacher logits {tuple(teacher_logits.shape)} and student hidden states "
                             f"{tuple(student_hidden.shape)} must cover the same tokens")
    else:
        if t_head.weight.shape[0] != vocab:
            raise ValueError(f"vocab sizes differ: student output layer V={vocab}, teacher output layer "
                             f"V={t_head.weight.shape[0]}. Token-level KD needs one shared vocabulary.")
        if tuple(teacher_hidden.shape[:-1]) != lead or teacher_hidden.shape[-1] != t_head.weight.shape[1]:
            raise ValueError(f"teacher hidden states {tuple(teacher_hidden.shape)} must cover the student's tokens "
                             f"{lead} with the teacher output layer's hidden size {t_head.weight.shape[1]}")
    if mask is not None and tuple(mask.shape) != lead:
        raise ValueError(f"mask shape {tuple(mask.shape)} must equal the hidden states' leading shape {lead}")
    if s_head.weight.dtype != student_hidden.dtype:
        raise TypeError(f"student hidden states ({student_hidden.dtype}) and output layer ({s_head.weight.dtype}) "
                        "must share a dtype, as in the model's own forward")


def kd_loss_from_hidden(student_hidden: torch.Tensor, student_head, teacher_logits: torch.Tensor | None = None, *,
                        teacher_hidden: torch.Tensor | None = None, teacher_head=None, kind: str = "fkl",
                        mask: torch.Tensor | None = None, temperature: float = 1.0, beta: float = 0.5,
                        alpha: float = 0.1, chunk_size: int | None = None, reduction: str = "mean",
                        scale_by_t2: bool = False) -> torch.Tensor:
    """`kdlib.distillation.losses.kd_loss` of ``student_hidden @ W.T + b`` against the teacher, without the logits.

    student_hidden: [B, T, H] or [N, H], the student's final hidden states at the predicting positions.
    student_head: its output layer (``model.get_output_embeddings()``), a weight [V, H] or (weight, bias).
    Teacher: ``teacher_logits`` [B, T, V] (or [N, V]), or ``teacher_hidden`` with ``teacher_head``; it is
    detached either way. Other arguments as in `kd_loss`; chunk_size counts tokens per chunk (None: 128 on
    CPU, see CPU_CHUNK_ROWS). Gradients flow into student_hidden and the head's weight and bias.
    """
    s_head = _as_head(student_head, "student_head")
    t_head = _as_head(teacher_head, "teacher_head") if teacher_head is not None else None
    _check(student_hidden, s_head, teacher_logits, teacher_hidden, t_head, kind, mask, temperature, beta, alpha,
           reduction)
    lead_shape = student_hidden.shape[:-1]
    h = _flat(student_hidden, "student_hidden")
    t_logits = _flat(teacher_logits.detach(), "teacher_logits") if teacher_logits is not None else None
    t_h = _flat(teacher_hidden.detach(), "teacher_hidden") if teacher_hidden is not None else None
    t_w = t_head.weight.detach() if t_head is not None else None
    t_b = t_head.bias.detach() if t_head is not None and t_head.bias is not None else None
    rows, n_valid = _counted_rows(mask, h.shape[0], h.device)
    if chunk_size is None:
        chunk_size = CUDA_CHUNK_ROWS if h.is_cuda else CPU_CHUNK_ROWS
    spec = _Spec(kind, float(beta), float(alpha), float(temperature), bool(scale_by_t2), int(chunk_size))
    args = (h, s_head.weight, s_head.bias, t_logits, t_h, t_w, t_b, rows, spec)
    needs_grad = torch.is_grad_enabled() and any(
        x is not None and x.requires_grad for x in (h, s_head.weight, s_head.bias))
    if needs_grad:
        losses = _FusedHeadKD.apply(*args)
    else:
        with torch.no_grad():
            losses = _run(h, s_head, _teacher(t_logits, t_h, t_w, t_b), rows, spec, (False, False, False))[0]
    if not bool(torch.isfinite(losses.detach()).all()):
        teacher_note = (f"teacher_logits contain {_count_nonfinite(t_logits)}" if t_logits is not None
                        else f"teacher_hidden contains {_count_nonfinite(t_h)}")
        raise FloatingPointError(
            f"kd_loss_from_hidden(kind={kind!r}) is not finite for {int((~torch.isfinite(losses)).sum())} "
            f"token(s): student_hidden contains {_count_nonfinite(h)}; {teacher_note} (temperature="
            f"{temperature}). Check the models for overflow (fp16 activations saturate at 65504).")
    return _reduce(losses, n_valid, reduction, lead_shape)


def naive_kd_loss_from_hidden(student_hidden, student_head, teacher_logits=None, *, teacher_hidden=None,
                              teacher_head=None, **kwargs):
    """The reference: full logits through the output layer(s), then `naive_kd_loss`. Tests and bench."""
    from kdlib.distillation.losses import naive_kd_loss

    s_head = _as_head(student_head, "student_head")
    s_logits = torch.nn.functional.linear(student_hidden, s_head.weight, s_head.bias)
    if teacher_logits is None:
        t_head = _as_head(teacher_head, "teacher_head")
        with torch.no_grad():
            teacher_logits = torch.nn.functional.linear(teacher_hidden, t_head.weight, t_head.bias)
    return naive_kd_loss(s_logits, teacher_logits, **kwargs)
