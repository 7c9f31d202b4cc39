"""The students' network and its inputs: the configuration every student trains with, the pretrained
encoder (read once per process, deep-copied per run) with a linear head — mean-pooled for classification,
per token for tagging and QA — and the tokenisation into dynamically padded, length-sorted batches.
"""

from __future__ import annotations

import copy
import functools
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

from kdlib.registry.models import ENCODER_ID

IGNORE_INDEX = -100          # label of wordpieces that carry no loss (cross_entropy's default)


# ----------------------------------------------------------------------------- configuration

@dataclass
class StudentConfig:
    """Hyper-parameters of one student run; invalid values raise naming the field.

    The step budget is ``epochs * ceil(n_train / batch_size)``, raised to `min_steps`
    (a 4-example set gives one step per epoch, far too few to learn) and capped by
    `max_steps`. With a validation set, the model is evaluated every `eval_every`
    steps (None: once per epoch, at most ``MAX_AUTO_EVALS`` times a run, and always
    at the last step); training stops after `patience` evaluations without
    improvement of `metric` and the best evaluated weights are restored.
    """

    model: str = ENCODER_ID
    max_length: int = 64            # wordpieces per text, [CLS]/[SEP] included
    batch_size: int = 32
    eval_batch_size: int = 128
    lr: float = 5e-5                # encoder
    head_lr: float = 1e-2           # fresh head: 1e-2 beat 1e-3 with 256 sst2 examples (0.81 vs 0.49 acc, 16 steps)
    epochs: int = 3
    max_steps: int | None = None
    min_steps: int = 30             # ag_news 4-shot: 0.67-0.83 acc vs 0.60-0.68 with the 3 steps of 3 epochs
    warmup_ratio: float = 0.1
    weight_decay: float = 0.01
    max_grad_norm: float | None = 1.0
    dropout: float = 0.1            # before the head
    patience: int | None = 3        # evaluations without improvement; None never stops early
    eval_every: int | None = None   # steps
    metric: str | None = None       # None: macro_f1 for classification, entity_f1 for NER
    seed: int = 0
    device: str = "auto"

    def __post_init__(self):
        _positive_int(self, "max_length", "batch_size", "eval_batch_size", "epochs")
        _optional_positive_int(self, "max_steps", "patience", "eval_every")
        if not isinstance(self.min_steps, int) or isinstance(self.min_steps, bool) or self.min_steps < 0:
            raise ValueError(f"StudentConfig.min_steps must be an integer >= 0, got {self.min_steps!r}")
        for name in ("lr", "head_lr"):
            value = getattr(self, name)
            if not _is_real(value) or not 0 < value < 1:
                raise ValueError(f"StudentConfig.{name} must be a number in (0, 1), got {value!r}")
        for name, upper in (("warmup_ratio", 1.0), ("dropout", 1.0), ("weight_decay", math.inf)):
            value = getattr(self, name)
            if not _is_real(value) or not 0 <= value < upper:
                raise ValueError(f"StudentConfig.{name} must be a number in [0, {upper}), got {value!r}")
        if self.max_grad_norm is not None and (not _is_real(self.max_grad_norm) or self.max_grad_norm <= 0):
            raise ValueError(f"StudentConfig.max_grad_norm must be > 0 or None, got {self.max_grad_norm!r}")
        if self.max_steps is not None and self.max_steps < self.min_steps:
            raise ValueError(f"StudentConfig.max_steps ({self.max_steps}) is below min_steps ({self.min_steps})")
        if self.max_length > 512:
            raise ValueError(f"StudentConfig.max_length must be <= 512 (BERT positions), got {self.max_length}")
        if not isinstance(self.model, str) or not self.model:
            raise ValueError(f"StudentConfig.model must be a model name or path, got {self.model!r}")
        if not isinstance(self.seed, int) or isinstance(self.seed, bool):
            raise ValueError(f"StudentConfig.seed must be an integer, got {self.seed!r}")
        if not isinstance(self.device, str):
            raise ValueError(f"StudentConfig.device must be a string such as 'auto' or 'cpu', got {self.device!r}")

    def replace(self, **changes) -> StudentConfig:
        """A copy with some fields changed (validated again)."""
        return StudentConfig(**{**asdict(self), **changes})


BUDGET_KEYS = ("epochs", "min_steps", "max_steps", "full_data_max_train")


def from_budget(budget: dict, **fields) -> tuple[StudentConfig, int]:
    """A notebook's ``student_budget`` -> (the students' config, the full-data reference's train cap).

    ``budget`` holds exactly ``epochs``, ``min_steps``, ``max_steps`` (the step budget of
    every student, see `StudentConfig`) and ``full_data_max_train`` (rows of train the
    full-data reference sees; 0 means all); `fields` sets any other `StudentConfig` field.
    """
    if not isinstance(budget, dict) or set(budget) != set(BUDGET_KEYS):
        got = sorted(budget) if isinstance(budget, dict) else type(budget).__name__
        raise ValueError(f"student_budget must have exactly the keys {list(BUDGET_KEYS)}, got {got}")
    cap = budget["full_data_max_train"]
    if not isinstance(cap, int) or isinstance(cap, bool) or cap < 0:
        raise ValueError(f"student_budget['full_data_max_train'] must be an integer >= 0 (0: all), got {cap!r}")
    config = StudentConfig(epochs=budget["epochs"], min_steps=budget["min_steps"], max_steps=budget["max_steps"],
                           **fields)
    return config, cap


def _is_real(value) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _positive_int(cfg, *names):
    for name in names:
        value = getattr(cfg, name)
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"StudentConfig.{name} must be an integer >= 1, got {value!r}")


def _optional_positive_int(cfg, *names):
    for name in names:
        if getattr(cfg, name) is not None:
            _positive_int(cfg, name)


# ----------------------------------------------------------------------------- pretrained weights, cached

@functools.lru_cache(maxsize=4)
def _pretrained(name: str):
    """(encoder, tokenizer, revision) read from disk once per process; callers deep-copy the encoder."""
    from transformers import AutoModel, AutoTokenizer

    from kdlib.registry.models import resolve

    res = resolve(name)
    encoder = AutoModel.from_pretrained(res.path)
    tokenizer = AutoTokenizer.from_pretrained(res.path)
    if not getattr(tokenizer, "is_fast", False):
        raise ValueError(f"model {name!r}: a fast tokenizer is needed (word_ids for NER alignment)")
    return encoder.eval(), tokenizer, res.revision


def _network(config: StudentConfig, num_labels: int, token_level: bool, net_class=None):
    """A fresh student network on the config's device, seeded head on a copy of the encoder; `net_class`
    (a subclass of the standard network, e.g. `kdlib.students.qa`'s span network) replaces the standard one."""
    import torch

    from kdlib.lab.setup import pick_device

    encoder, tokenizer, _ = _pretrained(config.model)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        net = (net_class or _net_class())(copy.deepcopy(encoder), num_labels, config.dropout, token_level)
    return net.to(pick_device(config.device)), tokenizer


@functools.cache
def _net_class():  # defined on first use so that importing kdlib does not import torch
    import torch
    from torch import nn

    class Net(nn.Module):
        """Encoder + dropout + linear head; mean-pooled for sentences, per token for tagging."""

        def __init__(self, encoder, num_labels: int, dropout: float, token_level: bool):
            super().__init__()
            self.encoder, self.token_level = encoder, token_level
            self.dropout = nn.Dropout(dropout)
            self.head = nn.Linear(encoder.config.hidden_size, num_labels)
            nn.init.normal_(self.head.weight, std=encoder.config.initializer_range)
            nn.init.zeros_(self.head.bias)

        def hidden(self, input_ids, attention_mask):
            return self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state

        def pooled(self, input_ids, attention_mask):
            mask = attention_mask.unsqueeze(-1).to(torch.float32)
            return (self.hidden(input_ids, attention_mask) * mask).sum(1) / mask.sum(1).clamp(min=1.0)

        def forward(self, input_ids, attention_mask):
            if self.token_level:
                return self.head(self.dropout(self.hidden(input_ids, attention_mask)))
            return self.head(self.dropout(self.pooled(input_ids, attention_mask)))

    return Net


# ----------------------------------------------------------------------------- tokenisation and batches

def align_tags(word_ids: Sequence[int | None], tags: Sequence[int]) -> list[int]:
    """Word-level tag ids onto wordpieces: the first piece of a word gets its tag, the rest -100.

    `word_ids` is a fast tokenizer's ``encoding.word_ids()``: None for special tokens,
    else the index of the word a piece belongs to. Words cut off by truncation, or
    that produce no piece at all, simply have no position.
    """
    out, previous = [], None
    for wid in word_ids:
        out.append(IGNORE_INDEX if wid is None or wid == previous else tags[wid])
        previous = wid
    return out


def _encode_texts(tokenizer, texts: list, max_length: int) -> list[list[int]]:
    """Input ids of texts, or of (first, second) pairs ([CLS] first [SEP] second [SEP], the longer cut first)."""
    if texts and isinstance(texts[0], tuple):
        return tokenizer([a for a, _ in texts], [b for _, b in texts], truncation="longest_first",
                         max_length=max_length)["input_ids"]
    return tokenizer(texts, truncation=True, max_length=max_length)["input_ids"]


def _encode_words(tokenizer, tokens: list[list[str]], max_length: int):
    """(input ids, word_ids) per sentence of pre-split words."""
    enc = tokenizer(tokens, is_split_into_words=True, truncation=True, max_length=max_length)
    return enc["input_ids"], [enc.word_ids(i) for i in range(len(tokens))]


def _pad(sequences: list[list[int]], value: int, device):
    """Right-padded LongTensor of a batch plus its attention mask (dynamic padding)."""
    import torch

    width = max(len(s) for s in sequences)
    out = torch.full((len(sequences), width), value, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for i, seq in enumerate(sequences):
        out[i, :len(seq)] = torch.tensor(seq, dtype=torch.long)
        mask[i, :len(seq)] = 1
    return out.to(device), mask.to(device)


def _length_sorted_batches(ids: list[list[int]], batch_size: int) -> list[list[int]]:
    """Indices grouped by length so that inference batches carry little padding."""
    order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
    return [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
