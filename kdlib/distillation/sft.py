"""Supervised fine-tuning of a causal LM on (instruction, response) pairs, loss on the response only.

The smallest correct SFT loop: the chat template renders the instruction as a user turn, the
response tokens (and the end-of-turn token after them) carry the loss, prompt tokens are masked
with -100. AdamW with linear warm-up/decay, gradient clipping, seeded shuffling; batches are
padded on the right to their longest row. A NaN/inf loss stops with an error naming the step
instead of silently corrupting the weights. Scale-out trainers (KD, MiniLLM) build on the same
`encode_pairs`.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from kdlib.distillation.train_state import Runtime, epoch_batches

IGNORE_INDEX = -100


@dataclass
class SFTConfig:
    epochs: int = 1
    max_steps: int | None = None
    batch_size: int = 8
    lr: float = 2e-5
    warmup_ratio: float = 0.1
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    max_length: int = 256          # tokens per rendered pair; longer responses are cut at the end
    seed: int = 0
    checkpoint_dir: str | None = None  # save training state here and resume from it after a kill
    checkpoint_every: int = 0      # steps between checkpoints (0: never; needs checkpoint_dir)

    def __post_init__(self):
        for name in ("epochs", "batch_size", "max_length"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"SFTConfig.{name} must be an integer >= 1, got {value!r}")
        if self.max_steps is not None and (not isinstance(self.max_steps, int) or self.max_steps < 1):
            raise ValueError(f"SFTConfig.max_steps must be None or an integer >= 1, got {self.max_steps!r}")
        if not 0 < self.lr < 1 or not 0 <= self.warmup_ratio < 1 or self.max_grad_norm <= 0:
            raise ValueError("SFTConfig: need 0 < lr < 1, 0 <= warmup_ratio < 1 and max_grad_norm > 0")
        if not isinstance(self.checkpoint_every, int) or self.checkpoint_every < 0:
            raise ValueError(f"SFTConfig.checkpoint_every must be an integer >= 0, got {self.checkpoint_every!r}")
        if self.checkpoint_every and not self.checkpoint_dir:
            raise ValueError("SFTConfig.checkpoint_every > 0 needs a checkpoint_dir to write to")


@dataclass
class SFTHistory:
    loss: list[float] = field(default_factory=list)
    steps: int = 0
    seconds: float = 0.0
    tokens: int = 0                # response tokens that carried loss


def chat_prompt(tokenizer, instruction: str) -> list[int]:
    """Token ids of the instruction as a user turn followed by the assistant header."""
    ids = tokenizer.apply_chat_template([{"role": "user", "content": instruction}], add_generation_prompt=True,
                                        tokenize=True)
    return list(ids["input_ids"] if isinstance(ids, dict) or hasattr(ids, "keys") else ids)


def encode_pairs(tokenizer, pairs: Sequence[dict], max_length: int) -> list[tuple[list[int], list[int]]]:
    """(input_ids, labels) per pair; labels are -100 on the prompt. Pairs whose prompt alone fills
    `max_length` are skipped (nothing would carry loss)."""
    end = tokenizer.eos_token or ""
    out = []
    for p in pairs:
        prompt = chat_prompt(tokenizer, p["instruction"])
        # the template's end-of-turn token ends the answer, so the model learns to stop
        response = tokenizer(p["response"].strip() + end, add_special_tokens=False)["input_ids"]
        ids = (prompt + response)[:max_length]
        if len(prompt) >= len(ids):
            continue
        out.append((ids, [IGNORE_INDEX] * len(prompt) + ids[len(prompt):]))
    return out


def _batch(rows, pad_id: int, device):
    import torch

    width = max(len(ids) for ids, _ in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    labels = torch.full((len(rows), width), IGNORE_INDEX, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, (x, y) in enumerate(rows):
        ids[i, :len(x)], labels[i, :len(y)], mask[i, :len(x)] = torch.tensor(x), torch.tensor(y), 1
    return ids.to(device), labels.to(device), mask.to(device)


def train_sft(model, tokenizer, pairs: Sequence[dict], config: SFTConfig | None = None, accelerator=None
              ) -> SFTHistory:
    """Fine-tune `model` in place on `pairs` (dicts with instruction and response); returns the history.
    `accelerator` (an `accelerate.Accelerator`) spreads each global batch over its processes."""
    import torch

    config = config or SFTConfig()
    rows = encode_pairs(tokenizer, pairs, config.max_length)
    if not rows:
        raise ValueError("no training pair left after encoding (empty data, or prompts longer than max_length)")
    steps_per_epoch = math.ceil(len(rows) / config.batch_size)
    total = min(config.epochs * steps_per_epoch, config.max_steps or 10**12)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    warmup = int(config.warmup_ratio * total)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: (s + 1) / max(warmup, 1) if s < warmup else max(0.0, (total - s) / max(total - warmup, 1)))
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    rt = Runtime(accelerator)
    history, start = SFTHistory(), time.monotonic()
    ckpt = rt.checkpoint(config, rows, "sft")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)  # dropout, if the model has any
        first_step, saved = ckpt.restore(model, optimizer, scheduler) if ckpt else (0, {})
        history = SFTHistory(**saved) if saved else history
        model, optimizer = rt.prepare(model, optimizer)
        params = [p for p in model.parameters() if p.requires_grad]
        device = next(model.parameters()).device
        model.train()
        for step, idx in epoch_batches(len(rows), config.batch_size, total, config.seed, start=first_step):
            ids, labels, mask = _batch([rows[i] for i in rt.shard(idx)], pad_id, device)
            loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
            rt.update(loss, params, optimizer, scheduler, config.max_grad_norm, "SFT", step)
            history.loss.append(float(loss.detach()))
            history.tokens += int((labels != IGNORE_INDEX).sum())
            rt.save(ckpt, step + 1, total, model, optimizer, scheduler, history)
        step = total
    if ckpt and rt.is_main:
        ckpt.finish()
    model.eval()
    history.steps, history.seconds = step, history.seconds + time.monotonic() - start
    return history


def generate_responses(model, tokenizer, instructions: Sequence[str], max_new_tokens: int = 128,
                       batch_size: int = 16) -> list[str]:
    """Greedy answers of a chat model to each instruction (MiniLLM's evaluation protocol), via fastgen."""
    from kdlib.teachers.fastgen import SamplingParams, generate

    prompts = [chat_prompt(tokenizer, x) for x in instructions]
    outs = generate(model, prompts, SamplingParams(max_new_tokens=max_new_tokens, temperature=0.0),
                    batch_size=batch_size, pad_token_id=tokenizer.pad_token_id)
    return [tokenizer.decode(o.token_ids, skip_special_tokens=True).strip() for o in outs]


def rouge_l_scores(predictions: Sequence[str], references: Sequence[str]) -> list[float]:
    """ROUGE-L F1 of each prediction against its reference (rouge-score, stemmed, as in MiniLLM)."""
    from rouge_score import rouge_scorer

    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions for {len(references)} references")
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    return [scorer.score(ref, pred)["rougeL"].fmeasure for pred, ref in zip(predictions, references)]
