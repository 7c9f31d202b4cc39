"""Distillation of generative LMs, the pieces every trainer shares.

- `check_same_tokenizer`: token-level KD compares the two models' distributions position by
  position, so teacher and student must share the vocabulary; a mismatch fails at start, naming
  the first difference, instead of producing a meaningless loss.
- `truncated_student`: the teacher's first layers (embeddings, head and norm kept) as a student
  that shares its tokenizer, the offline stand-in for GPT-2-XL -> GPT-2 pairs.
- `train_word_kd`: word-level KD (teacher-forced on the reference responses) with any loss of
  `kdlib.distillation.losses` (FKL = standard KD, RKL, JSD(beta), skew KLs, TVD), optionally mixed with the
  cross-entropy on the references. Built on `kdlib.distillation.sft`'s data encoding.
- on-policy / mixed distillation (GKD, Agarwal et al., 2024): with ``KDConfig.on_policy = lambda``,
  that fraction of batches replaces the references by responses the *student* samples for the same
  prompts, and the loss is computed on those tokens, so the student learns where it actually goes
  (no train/inference mismatch, "exposure bias"); lambda=0 is word-level KD, lambda=1 fully on-policy.
- `seqkd_pairs`: SeqKD (Kim & Rush, 2016) data: the teacher's own greedy answers replace the
  references; `kdlib.distillation.sft.train_sft` then trains on them.
"""

from __future__ import annotations

import copy
import math
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from kdlib.distillation.sft import IGNORE_INDEX, SFTConfig, encode_pairs
from kdlib.distillation.train_state import Runtime, epoch_batches


class TokenizerMismatchError(ValueError):
    """Teacher and student tokenise differently: token-level distillation would compare unrelated tokens."""


def check_same_tokenizer(teacher_tokenizer, student_tokenizer, probe: str = "Distillation needs one vocabulary: ") -> None:
    """Raise `TokenizerMismatchError` naming the first difference (vocabulary size, special tokens,
    a token id, or how a probe sentence is split)."""
    tv, sv = teacher_tokenizer.get_vocab(), student_tokenizer.get_vocab()
    if len(tv) != len(sv):
        raise TokenizerMismatchError(f"vocabulary sizes differ: teacher {len(tv)}, student {len(sv)}")
    for name in ("eos_token", "bos_token", "pad_token", "unk_token"):
        a, b = getattr(teacher_tokenizer, name, None), getattr(student_tokenizer, name, None)
        if a != b:
            raise TokenizerMismatchError(f"{name} differs: teacher {a!r}, student {b!r}")
    for token, idx in tv.items():
        if sv.get(token) != idx:
            raise TokenizerMismatchError(f"token {token!r} has id {idx} for the teacher, {sv.get(token)} for the student")
    text = probe + "Hello, world! 12345 ümlaut 日本"
    a, b = teacher_tokenizer(text)["input_ids"], student_tokenizer(text)["input_ids"]
    if a != b:
        raise TokenizerMismatchError(f"the two tokenizers split {text!r} differently: {a[:12]}... vs {b[:12]}...")


def truncated_student(teacher, n_layers: int):
    """A deep copy of a decoder-only model keeping its first `n_layers` blocks (Llama/Qwen/Mistral
    layout: ``model.model.layers``; GPT-2: ``model.transformer.h``)."""
    student = copy.deepcopy(teacher)
    body = getattr(student, "model", None) or getattr(student, "transformer", None)
    layers_attr = "layers" if hasattr(body, "layers") else "h"
    layers = getattr(body, layers_attr, None)
    if layers is None:
        raise ValueError(f"cannot find the decoder blocks of {type(teacher).__name__} to truncate")
    if not 1 <= n_layers <= len(layers):
        raise ValueError(f"n_layers must be in [1, {len(layers)}], got {n_layers}")
    setattr(body, layers_attr, type(layers)(list(layers)[:n_layers]))
    for name in ("num_hidden_layers", "n_layer"):
        if hasattr(student.config, name):
            setattr(student.config, name, n_layers)
    if hasattr(student.config, "layer_types") and student.config.layer_types is not None:
        student.config.layer_types = list(student.config.layer_types)[:n_layers]
    return student


@dataclass
class KDConfig(SFTConfig):
    loss: str = "fkl"              # a `kdlib.distillation.losses` kind
    temperature: float = 1.0
    beta: float = 0.5              # jsd
    alpha: float = 0.1             # skew_fkl / skew_rkl
    ce_weight: float = 0.0         # weight of the cross-entropy on the references, mixed in
    on_policy: float = 0.0         # GKD's lambda: share of batches whose responses the student samples
    gen_max_new_tokens: int = 64   # length of student samples
    gen_temperature: float = 1.0   # sampling temperature of student samples
    # compute the loss from both models' last hidden states with the output layer fused into it
    # (`kdlib.distillation.fused_losses`): the [batch, tokens, vocab] logits and their gradient never exist. Same maths;
    # at vocab 151,936 that is GiBs per step (reports/bench/losses_fused_head.md). Single process only.
    fused_head: bool = False

    def __post_init__(self):
        super().__post_init__()
        from kdlib.distillation.losses import KINDS

        if self.loss not in KINDS:
            raise ValueError(f"KDConfig.loss must be one of {KINDS}, got {self.loss!r}")
        if self.temperature <= 0 or not 0 <= self.ce_weight <= 1:
            raise ValueError("KDConfig: temperature must be > 0 and ce_weight in [0, 1]")
        if not 0 <= self.on_policy <= 1 or self.gen_max_new_tokens < 1 or self.gen_temperature < 0:
            raise ValueError("KDConfig: on_policy must be in [0, 1], gen_max_new_tokens >= 1, gen_temperature >= 0")
        if self.on_policy and self.ce_weight:
            raise ValueError("KDConfig: ce_weight needs reference tokens; student samples have none (on_policy > 0)")
        if self.fused_head and self.ce_weight:
            raise ValueError("KDConfig: fused_head computes no logits for the cross-entropy; use ce_weight=0 "
                             "or fused_head=False")


@dataclass
class KDHistory:
    loss: list[float] = field(default_factory=list)
    kd: list[float] = field(default_factory=list)
    steps: int = 0
    seconds: float = 0.0
    tokens: int = 0
    on_policy_steps: int = 0


def student_samples(student, rows: Sequence[tuple[list[int], list[int]]], config: KDConfig, pad_id: int,
                    seed: int) -> list[tuple[list[int], list[int]]]:
    """The rows' prompts with responses sampled from the student instead of the references (GKD)."""
    from kdlib.teachers.fastgen import SamplingParams, generate

    prompts = [ids[:next(i for i, y in enumerate(labels) if y != IGNORE_INDEX)] for ids, labels in rows]
    was_training = student.training
    student.eval()
    outs = generate(student, prompts, SamplingParams(max_new_tokens=config.gen_max_new_tokens,
                                                      temperature=config.gen_temperature),
                    seeds=[seed + i for i in range(len(prompts))], batch_size=len(prompts), pad_token_id=pad_id)
    student.train(was_training)
    # an empty sample (EOS at once) still teaches the first step: keep its stop token
    return [(p + o.token_ids, [IGNORE_INDEX] * len(p) + o.token_ids) for p, o in zip(prompts, outs) if o.token_ids]


def response_batch(rows, pad_id: int, device):
    """Left-padded batch of (ids, labels) rows whose labelled tokens are a suffix (a response after its prompt).

    Returns ids, labels, mask, position ids (counting real tokens only, so left padding changes nothing) and
    `keep`: the longest labelled suffix. Responses then all end at the last column, and the logits that
    predict them are the last keep + 1 positions: `response_logits` computes only those, which skips the
    output layer (a large share of a small LM's compute) on every prompt position.
    """
    import torch

    width = max(len(x) for x, _ in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    labels = torch.full((len(rows), width), IGNORE_INDEX, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    keep = 1
    for i, (x, y) in enumerate(rows):
        ids[i, width - len(x):], labels[i, width - len(y):], mask[i, width - len(x):] = \
            torch.tensor(x), torch.tensor(y), 1
        first = next((j for j, t in enumerate(y) if t != IGNORE_INDEX), len(y))
        keep = max(keep, len(y) - max(first, 1))  # the very first token of a row has no prediction
    labels[:, :width - keep] = IGNORE_INDEX
    positions = (mask.cumsum(-1) - 1).clamp_min(0)
    return ids.to(device), labels.to(device), mask.to(device), positions.to(device), keep


def response_logits(model, ids, mask, positions, keep: int):
    """Logits at the keep positions that predict the last `keep` tokens: [batch, keep, vocab]."""
    import inspect

    forward = getattr(model, "module", model).forward  # a DDP wrapper forwards keyword arguments as they are
    if "logits_to_keep" in inspect.signature(forward).parameters:
        return model(input_ids=ids, attention_mask=mask, position_ids=positions, logits_to_keep=keep + 1).logits[:, :-1]
    return model(input_ids=ids, attention_mask=mask, position_ids=positions).logits[:, -keep - 1:-1]


def response_hidden(model, ids, mask, positions, keep: int):
    """Final hidden states (after the last norm) at the positions `response_logits` would score: [B, keep, H].
    Runs the model body only; `kdlib.distillation.fused_losses.kd_loss_from_hidden` applies the output layer chunk by chunk."""
    body = model.get_decoder()
    return body(input_ids=ids, attention_mask=mask, position_ids=positions).last_hidden_state[:, -keep - 1:-1]


def check_same_vocab(student, teacher) -> None:
    """Token-level distillation compares distributions position by position: the output layers must agree."""
    vs, vt = student.get_output_embeddings().weight.shape[0], teacher.get_output_embeddings().weight.shape[0]
    if vs != vt:
        raise TokenizerMismatchError(
            f"student and teacher output layers differ ({vs} vs {vt} tokens): token-level distillation needs one "
            "shared tokenizer and vocabulary (use check_same_tokenizer on their tokenizers to see where they differ)")


def train_word_kd(student, teacher, tokenizer, pairs: Sequence[dict], config: KDConfig | None = None,
                  accelerator=None) -> KDHistory:
    """Word-level KD on the reference responses: per response token, `config.loss` between teacher and
    student next-token distributions (+ `ce_weight` x cross-entropy on the reference token). With
    ``config.on_policy > 0`` that share of batches is scored on student samples instead (GKD).
    `accelerator` (an `accelerate.Accelerator`) spreads each global batch over its processes."""
    import torch

    from kdlib.distillation.fused_losses import check_plain_output_layer, kd_loss_from_hidden
    from kdlib.distillation.losses import kd_loss

    check_same_vocab(student, teacher)
    config = config or KDConfig()
    if config.fused_head:
        if accelerator is not None and accelerator.num_processes > 1:
            raise ValueError("KDConfig.fused_head calls the model body directly, which bypasses the DDP/FSDP "
                             "wrapper; run it in a single process or set fused_head=False")
        check_plain_output_layer(student)
        check_plain_output_layer(teacher)
    rows = encode_pairs(tokenizer, pairs, config.max_length)
    if not rows:
        raise ValueError("no training pair left after encoding (empty data, or prompts longer than max_length)")
    total = min(config.epochs * math.ceil(len(rows) / config.batch_size), config.max_steps or 10**12)
    params = [p for p in student.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    warmup = int(config.warmup_ratio * total)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: (s + 1) / max(warmup, 1) if s < warmup else max(0.0, (total - s) / max(total - warmup, 1)))
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    rt = Runtime(accelerator)
    history, start = KDHistory(), time.monotonic()
    ckpt = rt.checkpoint(config, rows, f"word_kd/{config.loss}")
    first_step, saved = ckpt.restore(student, optimizer, scheduler) if ckpt else (0, {})
    history = KDHistory(**saved) if saved else history
    plain = student  # the unwrapped module: generation goes through it, never through a DDP wrapper
    student, optimizer = rt.prepare(student, optimizer)
    params = [p for p in student.parameters() if p.requires_grad]
    device = next(student.parameters()).device
    if accelerator:
        teacher.to(device)
    coin = random.Random(config.seed)
    for _ in range(first_step if config.on_policy else 0):  # replay the on-policy coin up to the resumed step
        coin.random()
    teacher.eval()
    student.train()
    for step, idx in epoch_batches(len(rows), config.batch_size, total, config.seed, start=first_step):
        batch = [rows[i] for i in rt.shard(idx)]
        if config.on_policy and coin.random() < config.on_policy:
            batch = student_samples(plain, batch, config, pad_id, seed=config.seed * 100_003 + step)
            history.on_policy_steps += 1
        ids, labels, mask, positions, keep = response_batch(batch, pad_id, device)
        target = labels[:, -keep:]
        counted = target != IGNORE_INDEX
        options = dict(mask=counted, temperature=config.temperature, beta=config.beta, alpha=config.alpha)
        if config.fused_head:
            with torch.no_grad():
                t_hidden = response_hidden(teacher, ids, mask, positions, keep)
            kd = kd_loss_from_hidden(response_hidden(plain, ids, mask, positions, keep), plain.get_output_embeddings(),
                                     teacher_hidden=t_hidden, teacher_head=teacher.get_output_embeddings(),
                                     kind=config.loss, **options)
        else:
            with torch.no_grad():
                t_logits = response_logits(teacher, ids, mask, positions, keep)
            s_logits = response_logits(student, ids, mask, positions, keep)
            kd = kd_loss(s_logits, t_logits, config.loss, **options)
        loss = kd
        if config.ce_weight:
            ce = torch.nn.functional.cross_entropy(s_logits.reshape(-1, s_logits.shape[-1]).float(),
                                                   target.reshape(-1), ignore_index=IGNORE_INDEX)
            loss = (1 - config.ce_weight) * kd + config.ce_weight * ce
        rt.update(loss, params, optimizer, scheduler, config.max_grad_norm, "KD", step)
        history.loss.append(float(loss.detach()))
        history.kd.append(float(kd.detach()))
        history.tokens += int(counted.sum())
        rt.save(ckpt, step + 1, total, student, optimizer, scheduler, history)
    step = total
    if ckpt and rt.is_main:
        ckpt.finish()
    student.eval()
    history.steps, history.seconds = step, history.seconds + time.monotonic() - start
    return history


def seqkd_pairs(teacher, tokenizer, instructions: Sequence[str], max_new_tokens: int = 128,
                batch_size: int = 16) -> list[dict]:
    """SeqKD data: the teacher's greedy answer to each instruction, as (instruction, response) pairs."""
    from kdlib.distillation.sft import generate_responses

    answers = generate_responses(teacher, tokenizer, instructions, max_new_tokens=max_new_tokens, batch_size=batch_size)
    return [{"instruction": x, "response": a} for x, a in zip(instructions, answers) if a.strip()]


def nucleus_mass(inside_of, mass_of, mask, top_p: float = 0.9):
    """Mean over masked tokens of the probability `mass_of` puts inside `inside_of`'s top-p nucleus.

    With the student as `mass_of` and the teacher as `inside_of`: how much of the student's mass falls where
    the teacher is confident (1 - that is mass the teacher deems implausible, "hallucinated"); swapped, how
    much of the teacher's mass the student covers. Both are [B, T, V] logits; mask is [B, T] bool.
    """
    import torch

    p_in = torch.softmax(inside_of[mask].float(), dim=-1)
    sorted_p, order = p_in.sort(dim=-1, descending=True)
    in_nucleus = (sorted_p.cumsum(-1) - sorted_p) < top_p  # the top token always; then until top_p is reached
    member = torch.zeros_like(p_in, dtype=torch.bool).scatter(-1, order, in_nucleus)
    q = torch.softmax(mass_of[mask].float(), dim=-1)
    return float((q * member).sum(-1).mean()) if q.numel() else float("nan")


def teacher_forced_diagnostics(student, teacher, tokenizer, pairs: Sequence[dict], max_length: int = 256,
                               batch_size: int = 8, top_p: float = 0.9) -> dict:
    """On reference responses (teacher forcing): token-mean forward and reverse KL between teacher and
    student, and the nucleus masses of `nucleus_mass` (student mass inside the teacher's top-p, teacher
    mass inside the student's). Explains *why* a method scores as it does, beside ROUGE-L."""
    import torch

    from kdlib.distillation.losses import kd_loss

    rows = encode_pairs(tokenizer, pairs, max_length)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    device = next(student.parameters()).device
    sums = {"fkl": 0.0, "rkl": 0.0, "student_mass_in_teacher_nucleus": 0.0, "teacher_mass_in_student_nucleus": 0.0}
    n = 0
    was_training = student.training
    student.eval()
    with torch.no_grad():
        for first in range(0, len(rows), batch_size):
            ids, labels, mask, positions, keep = response_batch(rows[first:first + batch_size], pad_id, device)
            counted = labels[:, -keep:] != IGNORE_INDEX
            t = response_logits(teacher, ids, mask, positions, keep)
            s = response_logits(student, ids, mask, positions, keep)
            k = int(counted.sum())
            sums["fkl"] += float(kd_loss(s, t, "fkl", mask=counted, reduction="sum"))
            sums["rkl"] += float(kd_loss(s, t, "rkl", mask=counted, reduction="sum"))
            sums["student_mass_in_teacher_nucleus"] += nucleus_mass(t, s, counted, top_p) * k
            sums["teacher_mass_in_student_nucleus"] += nucleus_mass(s, t, counted, top_p) * k
            n += k
    student.train(was_training)
    return {key: value / max(n, 1) for key, value in sums.items()}


def distilled_draft(target, tokenizer, instructions: Sequence[str], n_layers: int, steps: int, *,
                    max_new_tokens: int = 48, lr: float = 1e-4, seed: int = 0):
    """A speculative draft: the target's first `n_layers` blocks after word-level reverse-KL distillation on the
    target's own greedy answers to `instructions`. Returns (draft in eval mode, {pairs, steps, seconds, rkl_first,
    rkl_last})."""
    import time

    import numpy as np

    start = time.monotonic()
    pairs = seqkd_pairs(target, tokenizer, instructions, max_new_tokens=max_new_tokens)
    draft = truncated_student(target, n_layers)
    hist = train_word_kd(draft, target, tokenizer, pairs, KDConfig(loss="rkl", lr=lr, batch_size=8, max_steps=steps,
                                                                 epochs=1000, max_length=320, seed=seed))
    return draft.eval(), {"pairs": len(pairs), "steps": hist.steps, "seconds": time.monotonic() - start,
                          "rkl_first": hist.kd[0], "rkl_last": float(np.mean(hist.kd[-5:]))}
