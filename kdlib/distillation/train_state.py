"""Resumable training for the LM trainers (SFT, word-level KD, MiniLLM).

Two pieces make a killed run end with exactly the weights of an uninterrupted one:

* `epoch_batches` derives every step's batch from the seed and the step number alone (epoch e uses the
  e-th permutation of one seeded generator), so a resumed run replays the order instead of storing it;
* `Checkpoint` saves, every `every` steps, what the step number does not determine: model weights,
  optimizer and scheduler state, the torch RNG (dropout) and the history. It writes to a temporary file
  and renames it, so a kill during the save leaves the previous checkpoint intact. A fingerprint of the
  config and the encoded data guards against resuming a different run from the same folder.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from collections.abc import Iterator
from pathlib import Path

# Fields that say where and how often to checkpoint: changing them must not block a resume.
_NOT_IN_FINGERPRINT = ("checkpoint_dir", "checkpoint_every")


def epoch_batches(n_rows: int, batch_size: int, total_steps: int, seed: int, start: int = 0
                  ) -> Iterator[tuple[int, list[int]]]:
    """(step, row indices) for steps start..total_steps-1; reshuffled every epoch from one seeded generator."""
    import torch

    if n_rows < 1:
        return
    shuffler = torch.Generator().manual_seed(seed)
    per_epoch = -(-n_rows // batch_size)
    for epoch in range(-(-total_steps // per_epoch)):
        order = torch.randperm(n_rows, generator=shuffler).tolist()  # drawn even for skipped epochs: replay
        for b in range(per_epoch):
            step = epoch * per_epoch + b
            if step >= total_steps:
                return
            if step >= start:
                yield step, order[b * batch_size:(b + 1) * batch_size]


def fingerprint(config, rows) -> str:
    """Hash of the config (minus checkpoint placement) and the encoded training rows."""
    cfg = {k: v for k, v in dataclasses.asdict(config).items() if k not in _NOT_IN_FINGERPRINT}
    h = hashlib.sha256(json.dumps(cfg, sort_keys=True, default=str).encode())
    h.update(json.dumps(rows, default=str).encode())
    return h.hexdigest()[:16]


class Checkpoint:
    """The state of one training run in `folder/state.pt`; `every` <= 0 saves nothing."""

    def __init__(self, folder: str | Path, every: int, fingerprint: str, trainer: str):
        if not isinstance(every, int) or isinstance(every, bool) or every < 0:
            raise ValueError(f"checkpoint_every must be an int >= 0, got {every!r}")
        self.folder, self.every, self.fingerprint, self.trainer = Path(folder), every, fingerprint, trainer
        self.path = self.folder / "state.pt"

    @classmethod
    def of(cls, config, rows, trainer: str) -> Checkpoint | None:
        folder = getattr(config, "checkpoint_dir", None)
        if not folder:
            return None
        return cls(folder, getattr(config, "checkpoint_every", 0) or 0, fingerprint(config, rows), trainer)

    def restore(self, model, optimizer, scheduler=None) -> tuple[int, dict]:
        """(step to resume at, saved history fields); (0, {}) with no checkpoint. Loads states in place."""
        import torch

        if not self.path.exists():
            return 0, {}
        try:
            state = torch.load(self.path, map_location="cpu", weights_only=False)
        except Exception as exc:  # a truncated or foreign file: say which, do not guess
            raise RuntimeError(f"cannot read the checkpoint {self.path} ({exc}); delete it to start over") from exc
        if state.get("trainer") != self.trainer or state.get("fingerprint") != self.fingerprint:
            raise ValueError(
                f"{self.path} belongs to another run ({state.get('trainer')}, fingerprint {state.get('fingerprint')}; "
                f"this run is {self.trainer}, {self.fingerprint}): the config or the data changed. Use another "
                "checkpoint_dir, or delete the folder to start over")
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        if scheduler is not None and state.get("scheduler") is not None:
            scheduler.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["torch_rng"])
        return int(state["step"]), dict(state["history"])

    def maybe_save(self, step: int, total: int, model, optimizer, scheduler, history) -> bool:
        """Save after `step` steps when it is a multiple of `every` (not at the end: the caller has the model)."""
        if self.every <= 0 or step % self.every or step >= total:
            return False
        import torch

        self.folder.mkdir(parents=True, exist_ok=True)
        state = {"trainer": self.trainer, "fingerprint": self.fingerprint, "step": step,
                 "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
                 "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict() if scheduler else None,
                 "torch_rng": torch.get_rng_state(), "history": dataclasses.asdict(history)}
        tmp = self.path.with_suffix(".tmp")
        torch.save(state, tmp)
        os.replace(tmp, self.path)  # atomic: a kill mid-save keeps the previous checkpoint
        return True

    def finish(self) -> None:
        """Remove the checkpoint of a completed run (its result is the returned model)."""
        self.path.unlink(missing_ok=True)


class Runtime:
    """Where a trainer runs: one process, or the process group of `accelerate launch` (DDP, FSDP).

    With an `accelerate.Accelerator`, the student and its optimiser are prepared (wrapped), every rank
    takes its share of each global batch (`shard`), gradients are averaged by the wrapper, and only the
    main process writes checkpoints. The LR scheduler is stepped by the trainer, once per global step, so
    the schedule does not depend on the number of processes. Without one, every method is a no-op.
    """

    def __init__(self, accelerator=None):
        self.accelerator = accelerator
        self.rank = accelerator.process_index if accelerator else 0
        self.world = accelerator.num_processes if accelerator else 1
        self.is_main = accelerator.is_main_process if accelerator else True

    @property
    def sharded_weights(self) -> bool:
        """FSDP shards parameters and optimiser state: our single-file checkpoints cannot hold them."""
        from accelerate.utils import DistributedType

        return bool(self.accelerator) and self.accelerator.distributed_type == DistributedType.FSDP

    def prepare(self, model, optimizer):
        if not self.accelerator:
            return model, optimizer
        return self.accelerator.prepare(model, optimizer)

    def shard(self, idx: list[int]) -> list[int]:
        if self.world == 1:
            return idx
        if len(idx) < self.world:
            raise ValueError(f"a batch of {len(idx)} rows cannot feed {self.world} processes: raise batch_size "
                             f"to at least {self.world} (it is the global batch, split across processes)")
        return idx[self.rank::self.world]

    def backward(self, loss) -> None:
        if self.accelerator:
            self.accelerator.backward(loss)
        else:
            loss.backward()

    def clip(self, params, max_norm: float) -> None:
        import torch

        if self.accelerator:
            self.accelerator.clip_grad_norm_(params, max_norm)
        else:
            torch.nn.utils.clip_grad_norm_(params, max_norm)

    def update(self, loss, params, optimizer, scheduler, max_norm: float, what: str, step: int) -> None:
        """One optimiser step on `loss`: refuse a non-finite loss (naming the trainer and step), backward,
        clip, step optimiser and scheduler (None for a constant LR), clear gradients."""
        import torch

        if not torch.isfinite(loss):
            raise FloatingPointError(f"{what} loss is {loss.item()} at step {step + 1}: lower lr or check the data")
        self.backward(loss)
        self.clip(params, max_norm)
        optimizer.step()
        if scheduler is not None:
            scheduler.step()
        optimizer.zero_grad(set_to_none=True)

    def unwrap(self, model):
        return self.accelerator.unwrap_model(model) if self.accelerator else model

    def checkpoint(self, config, rows, trainer: str) -> Checkpoint | None:
        ckpt = Checkpoint.of(config, rows, trainer)
        if ckpt and self.sharded_weights:
            raise ValueError("checkpoint_dir is not supported under FSDP (sharded weights and optimiser state); "
                             "use DDP or a single process for resumable runs")
        return ckpt

    def save(self, ckpt: Checkpoint | None, step: int, total: int, model, optimizer, scheduler, history) -> None:
        if ckpt is None:
            return
        if self.is_main:
            ckpt.maybe_save(step, total, self.unwrap(model), optimizer, scheduler, history)
        if self.accelerator and ckpt.every > 0 and step % ckpt.every == 0:
            self.accelerator.wait_for_everyone()
