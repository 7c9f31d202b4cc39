"""The students' training loop: a plain PyTorch loop rather than the HF Trainer, because every notebook
trains many small students (seeds x methods x rounds) on a few to a few thousand examples on CPU — AdamW with
linear warm-up and decay, per-example weights, a seeded schedule, early stopping on the validation metric with
the best weights kept in memory, and the history of every run. On CPU the same config and seed give
bit-identical weights.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

from kdlib.students.encoder import IGNORE_INDEX, StudentConfig, _pad

MAX_AUTO_EVALS = 10          # eval_every=None: once per epoch, but no more than this per run
LONG_RUN_STEPS = 500         # runs at least this long show epoch progress


@dataclass
class History:
    """What happened during training: one loss per step, one record per evaluation."""

    loss: list[float] = field(default_factory=list)
    evals: list[dict] = field(default_factory=list)   # {"step", "epoch", "score", **metrics}
    total_steps: int = 0
    steps_per_epoch: int = 0
    best_step: int | None = None
    best_score: float | None = None
    stopped_early: bool = False
    seconds: float = 0.0
    dynamics: list[dict] = field(default_factory=list)  # per finished epoch, when tracked: {"epoch", **observed}

    def frame(self):
        """Evaluations as a DataFrame (one row each), for plotting learning curves."""
        import pandas as pd

        return pd.DataFrame(self.evals)


def _plan(n_train: int, config: StudentConfig) -> tuple[int, int, int]:
    """(steps_per_epoch, total_steps, eval_every) from the data size and config."""
    steps_per_epoch = math.ceil(n_train / config.batch_size)
    total = max(config.epochs * steps_per_epoch, config.min_steps)
    if config.max_steps is not None:
        total = min(total, config.max_steps)
    every = config.eval_every or max(steps_per_epoch, math.ceil(total / MAX_AUTO_EVALS))
    return steps_per_epoch, total, every


def _optimizer(net, config: StudentConfig, total_steps: int):
    """AdamW (no decay on biases and LayerNorm) with linear warmup then linear decay to 0."""
    import torch

    groups = {"decay": [], "no_decay": [], "head": []}
    for name, param in net.named_parameters():
        if name.startswith("head."):
            groups["head"].append(param)
        elif name.endswith("bias") or "LayerNorm" in name or "layer_norm" in name:
            groups["no_decay"].append(param)
        else:
            groups["decay"].append(param)
    optimizer = torch.optim.AdamW([
        {"params": groups["decay"], "lr": config.lr, "weight_decay": config.weight_decay},
        {"params": groups["no_decay"], "lr": config.lr, "weight_decay": 0.0},
        {"params": groups["head"], "lr": config.head_lr, "weight_decay": config.weight_decay},
    ])
    warmup = round(config.warmup_ratio * total_steps)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / (warmup + 1)
        return max(0.0, (total_steps - step) / max(1, total_steps - warmup))

    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def _weighted_loss(logits, labels, weights):
    """Cross-entropy where each example's terms are scaled by its weight.

    Classification: mean over the batch of w_i * CE_i. Tagging: sum of w_s * CE over
    labelled wordpieces divided by their count. A weight-0 example thus contributes
    nothing, and weights are comparable across batches (no per-batch renormalisation).
    """
    import torch.nn.functional as F

    if logits.dim() == 3:  # tagging: broadcast the sentence weight to its wordpieces
        weights = weights.unsqueeze(1).expand_as(labels)
        logits, labels, weights = logits.flatten(0, 1), labels.flatten(), weights.flatten()
    per_item = F.cross_entropy(logits, labels, reduction="none", ignore_index=IGNORE_INDEX)
    counted = (labels != IGNORE_INDEX).sum().clamp(min=1)
    return (per_item * weights).sum() / counted


def _schedule(n_examples: int, config: StudentConfig, total: int, generator):
    """Yield (fractional epoch after the batch, example indices) for `total` steps of seeded shuffled epochs."""
    import torch

    step = 0
    for epoch in range(math.ceil(total / math.ceil(n_examples / config.batch_size))):
        order = torch.randperm(n_examples, generator=generator).tolist()
        for first in range(0, n_examples, config.batch_size):
            if step == total:
                return
            step += 1
            last = min(first + config.batch_size, n_examples)
            yield epoch + last / n_examples, order[first:last]


class _BestState:
    """Keeps the best-scoring weights in memory and counts evaluations without improvement."""

    def __init__(self):
        self.state, self.score, self.step, self.stale = None, None, None, 0

    def update(self, net, step: int, score: float) -> None:
        if self.score is None or score > self.score:  # ties keep the earlier (shorter-trained) weights
            self.score, self.step, self.stale = score, step, 0
            self.state = {k: v.detach().clone() for k, v in net.state_dict().items()}
        else:
            self.stale += 1

    def restore(self, net) -> None:
        if self.state is not None:
            net.load_state_dict(self.state)


def _train_step(net, batch, optimizer, scheduler, max_grad_norm: float | None) -> float:
    import torch

    loss = _weighted_loss(net(batch["input_ids"], batch["attention_mask"]), batch["labels"], batch["weights"])
    loss.backward()
    if max_grad_norm is not None:
        torch.nn.utils.clip_grad_norm_(net.parameters(), max_grad_norm)
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    return float(loss.detach())


def _validation_score(validate, metric: str) -> tuple[float, dict]:
    scores = validate()
    if metric not in scores:
        raise ValueError(f"StudentConfig.metric {metric!r} is not among the validation metrics {sorted(scores)}")
    return float(scores[metric]), scores


def _fit(net, examples: list[tuple], collate, config: StudentConfig, validate, observe=None) -> History:
    """Train `net` in place on `examples`, evaluating with `validate` (a `_Validator`) if enabled.

    Shuffling uses its own seeded generator and dropout runs under a forked, seeded
    torch RNG, so results neither depend on nor disturb the caller's random state.
    `observe` (optional, no arguments, returns a dict) is called in eval mode after every full epoch and its
    results are kept in ``history.dynamics`` (training dynamics for dataset cartography); it consumes no
    random numbers, so observing changes no weight.
    """
    import torch

    from kdlib.lab.progress import track

    steps_per_epoch, total, every = _plan(len(examples), config)
    history = History(total_steps=total, steps_per_epoch=steps_per_epoch)
    metric = config.metric or validate.metric
    optimizer, scheduler = _optimizer(net, config, total)
    best, start = _BestState(), time.monotonic()
    steps = _schedule(len(examples), config, total, torch.Generator().manual_seed(config.seed))
    if total >= LONG_RUN_STEPS:
        steps = track(steps, desc="student steps", total=total)
    device = next(net.parameters()).device
    with torch.random.fork_rng(devices=[device.index or 0] if device.type == "cuda" else []):
        torch.manual_seed(config.seed + 1)  # dropout stream, distinct from the head-init stream
        net.train()
        for step, (epoch, indices) in enumerate(steps, 1):
            batch = collate([examples[i] for i in indices])
            history.loss.append(_train_step(net, batch, optimizer, scheduler, config.max_grad_norm))
            if observe is not None and epoch == int(epoch):
                net.eval()
                history.dynamics.append({"epoch": int(epoch), **observe()})
                net.train()
            if not validate.enabled or (step % every and step != total):
                continue
            score, scores = _validation_score(validate, metric)
            net.train()
            history.evals.append({"step": step, "epoch": epoch, "score": score, **scores})
            best.update(net, step, score)
            if config.patience is not None and best.stale >= config.patience and step >= config.min_steps:
                history.stopped_early = True
                break
    best.restore(net)
    history.best_step, history.best_score = best.step, best.score
    history.seconds = time.monotonic() - start
    net.eval()
    return history


def _collate(pad_id: int, device):
    """Batch builder for (input_ids, label(s), weight) examples; labels padded with -100."""
    import torch

    def collate(batch):
        input_ids, mask = _pad([b[0] for b in batch], pad_id, device)
        if isinstance(batch[0][1], list):
            labels, _ = _pad([b[1] for b in batch], IGNORE_INDEX, device)
        else:
            labels = torch.tensor([b[1] for b in batch], dtype=torch.long, device=device)
        weights = torch.tensor([b[2] for b in batch], dtype=torch.float32, device=device)
        return {"input_ids": input_ids, "attention_mask": mask, "labels": labels, "weights": weights}

    return collate
