"""Student training: a small pretrained encoder plus a linear head, for classification and NER.

Every later notebook trains many small students (seeds x methods x rounds) on a few
to a few thousand examples on CPU, so this is a plain PyTorch loop rather than the
HF Trainer: AdamW with linear warmup/decay, dynamic padding, early stopping on the
validation split with the best weights kept in memory, and per-example weights.

- `train_classifier(train, validation, config)`: mean-pooled encoder -> linear head.
  Mean pooling is what all-MiniLM-L6-v2 was trained with, so its sentence space is
  useful from step 0 (this matters for few-shot sets).
- `train_tagger(train, validation, config)`: per-token head; word-level BIO tags sit
  on each word's first wordpiece, the other wordpieces are ignored (-100).
- `full_data_reference(dataset, config)`: the full-data student, cached on disk.

The pretrained weights are read from disk once per process and deep-copied per run.
On CPU the same config and seed give bit-identical weights and metrics.
"""

from __future__ import annotations

import copy
import functools
import hashlib
import json
import math
import os
import shutil
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from kdlib.registry.models import ENCODER_ID

IGNORE_INDEX = -100          # label of wordpieces that carry no loss (cross_entropy's default)
MAX_AUTO_EVALS = 10          # eval_every=None: once per epoch, but no more than this per run
LONG_RUN_STEPS = 500         # runs at least this long show epoch progress
CACHE_FORMAT = 1             # bump when the saved-student layout or training semantics change
TASK_METRIC = {"classification": "macro_f1", "ner": "entity_f1"}


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


# ----------------------------------------------------------------------------- input normalisation

def _is_dataset(data) -> bool:
    return hasattr(data, "features") and hasattr(data, "column_names")


def _class_names(data, field_name: str) -> list[str] | None:
    """Label names of a Dataset's ClassLabel column (a sequence of them for NER), else None."""
    if not _is_dataset(data) or field_name not in data.features:
        return None
    feature = data.features[field_name]
    feature = getattr(feature, "feature", feature)  # List(ClassLabel) for NER tags
    return list(feature.names) if hasattr(feature, "names") else None


def _label_id(value, names: list[str], index: dict[str, int], where: str) -> int:
    if isinstance(value, str):
        if value not in index:
            raise ValueError(f"{where}: label {value!r} is not one of the label names {names}")
        return index[value]
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < len(names):
        return int(value)
    raise ValueError(f"{where}: label {value!r} is neither a label name in {names} nor an id in 0..{len(names) - 1}")


def _rows(data, where: str) -> list[dict]:
    if _is_dataset(data):
        return data.to_list()
    if isinstance(data, Sequence) and not isinstance(data, str | bytes):
        return list(data)
    raise TypeError(f"{where}: expected a datasets.Dataset or a list of dicts, got {type(data).__name__}")


def _classification_examples(data, names: list[str], where: str) -> tuple[list, list[int]]:
    """Texts and label ids; a Dataset's ClassLabel ids are remapped by name onto `names`. Rows with a question
    and a context instead of a text (yes/no/maybe QA) give (question, context) pairs, encoded as a pair."""
    own = _class_names(data, "label")
    rows = _rows(data, where)
    if not rows:
        raise ValueError(f"{where}: no examples")
    index = {n: i for i, n in enumerate(names)}
    texts, labels = [], []
    for i, row in enumerate(rows):
        pair = isinstance(row, dict) and "text" not in row and "question" in row and "context" in row
        if not isinstance(row, dict) or ("text" not in row and not pair) or "label" not in row:
            raise ValueError(f"{where}, example {i}: expected a dict with 'text' (or 'question' and 'context') and "
                             f"'label', got {row!r:.120}")
        value = own[row["label"]] if own is not None else row["label"]
        labels.append(_label_id(value, names, index, f"{where}, example {i}"))
        texts.append((str(row["question"]), str(row["context"])) if pair else str(row["text"]))
    return texts, labels


def _tagging_examples(data, names: list[str], where: str) -> tuple[list[list[str]], list[list[int]]]:
    own = _class_names(data, "tags")
    rows = _rows(data, where)
    if not rows:
        raise ValueError(f"{where}: no examples")
    index = {n: i for i, n in enumerate(names)}
    tokens, tags = [], []
    for i, row in enumerate(rows):
        if not isinstance(row, dict) or not isinstance(row.get("tokens"), list) or not isinstance(row.get("tags"), list):
            raise ValueError(f"{where}, example {i}: expected a dict with 'tokens' and 'tags' lists")
        if len(row["tokens"]) != len(row["tags"]):
            raise ValueError(f"{where}, example {i}: {len(row['tokens'])} tokens but {len(row['tags'])} tags")
        values = [own[t] for t in row["tags"]] if own is not None else row["tags"]
        tags.append([_label_id(v, names, index, f"{where}, example {i}") for v in values])
        tokens.append([str(t) for t in row["tokens"]])
    return tokens, tags


def _resolve_names(given, train, validation, field_name: str, infer) -> list[str]:
    """Label names: given > train's ClassLabel > validation's ClassLabel > inferred from train."""
    if given is not None:
        names = [str(n) for n in given]
        if len(set(names)) != len(names) or len(names) < 2:
            raise ValueError(f"label_names must hold at least 2 distinct names, got {names}")
        return names
    return _class_names(train, field_name) or _class_names(validation, field_name) or infer(_rows(train, "train"))


def _check_weights(weights, n: int):
    import numpy as np

    if weights is None:
        return None
    arr = np.asarray(weights, dtype=np.float64)
    if arr.shape != (n,):
        raise ValueError(f"sample_weights must hold one weight per training example ({n}), got shape {arr.shape}")
    if not np.all(np.isfinite(arr)) or np.any(arr < 0) or arr.sum() == 0:
        raise ValueError("sample_weights must be finite, >= 0 and not all zero")
    return arr.tolist()


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


# ----------------------------------------------------------------------------- history and the loop

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


def _fit(net, examples: list[tuple], collate, config: StudentConfig, validate) -> History:
    """Train `net` in place on `examples`, evaluating with `validate` (a `_Validator`) if enabled.

    Shuffling uses its own seeded generator and dropout runs under a forked, seeded
    torch RNG, so results neither depend on nor disturb the caller's random state.
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


class _Validator:
    """Callable evaluating a student on fixed validation data; `enabled` is False without any."""

    def __init__(self, student, data, metric: str):
        self.student, self.data, self.metric = student, data, metric
        self.enabled = data is not None

    def __call__(self) -> dict:
        return self.student._evaluate_encoded(*self.data)


# ----------------------------------------------------------------------------- students

class Student:
    """A trained encoder + head. Subclasses add task-specific predict/evaluate."""

    task = ""

    def __init__(self, net, tokenizer, label_names: list[str], config: StudentConfig,
                 history: History | None = None):
        self.net, self.tokenizer, self.label_names, self.config = net, tokenizer, list(label_names), config
        self.history = history or History()

    @property
    def device(self):
        return next(self.net.parameters()).device

    def _batches(self, ids: list[list[int]]):
        """(indices, input_ids, attention_mask) of length-sorted inference batches."""
        for idx in _length_sorted_batches(ids, self.config.eval_batch_size):
            yield (idx, *_pad([ids[i] for i in idx], self.tokenizer.pad_token_id, self.device))

    def _encode(self, texts: Sequence[str]) -> list[list[int]]:
        if isinstance(texts, str):
            raise TypeError("expected a list of texts, got a single string")
        if len(texts) == 0:
            return []
        texts = [(str(t[0]), str(t[1])) if isinstance(t, tuple | list) else str(t) for t in texts]
        return _encode_texts(self.tokenizer, texts, self.config.max_length)

    def embed(self, texts: Sequence[str], normalize: bool = False):
        """Mean-pooled final-layer encodings, shape (n, hidden); unit-length rows if `normalize`."""
        import numpy as np
        import torch

        ids = self._encode(texts)
        out = np.zeros((len(ids), self.net.head.in_features), dtype=np.float32)
        self.net.eval()
        with torch.inference_mode():
            for idx, input_ids, mask in self._batches(ids):
                out[idx] = self.net.pooled(input_ids, mask).float().cpu().numpy()
        if normalize:
            out /= np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)
        return out

    def save(self, folder: str | Path) -> Path:
        """Write ``model.safetensors`` (the whole network) and ``student.json`` (task, labels, config, history)."""
        from safetensors.torch import save_file

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().contiguous().cpu() for k, v in self.net.state_dict().items()}
        save_file(state, str(folder / "model.safetensors"))
        meta = {"format": CACHE_FORMAT, "task": self.task, "label_names": self.label_names,
                "config": asdict(self.config), "history": asdict(self.history)}
        (folder / "student.json").write_text(json.dumps(meta, indent=1))
        return folder


class ClassifierStudent(Student):
    """Sentence classifier; label ids index `label_names`."""

    task = "classification"

    def _logits(self, ids: list[list[int]]):
        import torch

        out = None
        self.net.eval()
        with torch.inference_mode():
            for idx, input_ids, mask in self._batches(ids):
                logits = self.net(input_ids, mask).float().cpu()
                out = out if out is not None else torch.zeros((len(ids), logits.shape[1]))
                out[idx] = logits
        return out if out is not None else torch.zeros((0, len(self.label_names)))

    def predict_proba(self, texts: Sequence[str]):
        """Class probabilities, shape (n, num_labels), float32."""
        return self._logits(self._encode(texts)).softmax(-1).numpy()

    def predict(self, texts: Sequence[str]):
        """Predicted label ids, shape (n,)."""
        return self._logits(self._encode(texts)).argmax(-1).numpy()

    def predict_labels(self, texts: Sequence[str]) -> list[str]:
        return [self.label_names[i] for i in self.predict(texts)]

    def _evaluate_encoded(self, ids, labels) -> dict:
        from kdlib.students.metrics import classification_metrics

        return classification_metrics(labels, self._logits(ids).argmax(-1).tolist(), self.label_names)

    def evaluate(self, dataset) -> dict:
        """accuracy, macro_f1 and f1/<label> on a Dataset or list of {"text", "label"} dicts."""
        texts, labels = _classification_examples(dataset, self.label_names, "evaluation data")
        return self._evaluate_encoded(self._encode(texts), labels)


class TaggerStudent(Student):
    """Token classifier with BIO tags; predictions are per input word."""

    task = "ner"

    def _word_predictions(self, ids, word_ids) -> list[list[int]]:
        """Per sentence, the tag id of each word's first wordpiece (0, i.e. 'O', for words without one)."""
        import torch

        n_words = [max((w for w in wids if w is not None), default=-1) + 1 for wids in word_ids]
        preds = [None] * len(ids)
        self.net.eval()
        with torch.inference_mode():
            for idx, input_ids, mask in self._batches(ids):
                best = self.net(input_ids, mask).argmax(-1).cpu().tolist()
                for row, i in enumerate(idx):
                    preds[i] = best[row]
        out = []
        for i, wids in enumerate(word_ids):
            words = [self._outside] * n_words[i]
            # aligning the word indices themselves marks each word's first piece with its index
            for pos, tag in zip(align_tags(wids, range(n_words[i])), preds[i]):
                if pos != IGNORE_INDEX:
                    words[pos] = tag
            out.append(words)
        return out

    @property
    def _outside(self) -> int:
        return self.label_names.index("O") if "O" in self.label_names else 0

    def predict(self, sentences: Sequence[Sequence[str]]) -> list[list[str]]:
        """Tag strings per word of each sentence (words cut by truncation are tagged 'O')."""
        sentences = [[str(t) for t in s] for s in sentences]
        if not sentences:
            return []
        ids, word_ids = _encode_words(self.tokenizer, sentences, self.config.max_length)
        preds = self._word_predictions(ids, word_ids)
        outside = self.label_names[self._outside]
        return [[self.label_names[p] for p in pred] + [outside] * (len(s) - len(pred))
                for s, pred in zip(sentences, preds)]

    def _evaluate_encoded(self, ids, word_ids, true_tags) -> dict:
        from kdlib.students.metrics import ner_metrics

        preds = self._word_predictions(ids, word_ids)
        names, outside = self.label_names, self.label_names[self._outside]
        pred_tags = [[names[p] for p in pred] + [outside] * (len(true) - len(pred))
                     for pred, true in zip(preds, true_tags)]
        return ner_metrics(true_tags, pred_tags)

    def evaluate(self, dataset) -> dict:
        """entity_f1, precision, recall (seqeval micro) and f1/<type> on a Dataset or list of dicts."""
        tokens, tags = _tagging_examples(dataset, self.label_names, "evaluation data")
        ids, word_ids = _encode_words(self.tokenizer, tokens, self.config.max_length)
        return self._evaluate_encoded(ids, word_ids, [[self.label_names[t] for t in s] for s in tags])


# ----------------------------------------------------------------------------- training entry points

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


def train_classifier(train, validation=None, config: StudentConfig | None = None,
                     label_names: Sequence[str] | None = None, sample_weights: Sequence[float] | None = None
                     ) -> ClassifierStudent:
    """Fine-tune encoder + head on `train` and return the (best-on-validation) student.

    `train`/`validation` are Datasets with text + label (ClassLabel) or lists of
    ``{"text", "label"}`` dicts whose labels are names (synthetic data) or ids.
    Label names come from `label_names`, else the train/validation ClassLabel, else
    the sorted distinct train labels. `sample_weights` gives one weight per train example.
    """
    config = config or StudentConfig()
    names = _resolve_names(label_names, train, validation, "label",
                           lambda rows: sorted({str(r["label"]) for r in rows}))
    texts, labels = _classification_examples(train, names, "train")
    weights = _check_weights(sample_weights, len(texts)) or [1.0] * len(texts)
    net, tokenizer = _network(config, len(names), token_level=False)
    student = ClassifierStudent(net, tokenizer, names, config)
    examples = list(zip(_encode_texts(tokenizer, texts, config.max_length), labels, weights))
    val = None
    if validation is not None:
        v_texts, v_labels = _classification_examples(validation, names, "validation")
        val = (_encode_texts(tokenizer, v_texts, config.max_length), v_labels)
    student.history = _fit(net, examples, _collate(tokenizer.pad_token_id, student.device), config,
                           _Validator(student, val, TASK_METRIC["classification"]))
    return student


def train_tagger(train, validation=None, config: StudentConfig | None = None,
                 label_names: Sequence[str] | None = None, sample_weights: Sequence[float] | None = None
                 ) -> TaggerStudent:
    """Fine-tune encoder + per-token head for BIO tagging (NER); arguments as `train_classifier`.

    Data are Datasets with tokens + tags (ClassLabel sequence) or lists of
    ``{"tokens": [...], "tags": [...]}`` dicts with tag names.
    """
    from kdlib.registry.data import tag_order

    config = config or StudentConfig()
    names = _resolve_names(label_names, train, validation, "tags",
                           lambda rows: tag_order({str(t) for r in rows for t in r["tags"]}))
    tokens, tags = _tagging_examples(train, names, "train")
    weights = _check_weights(sample_weights, len(tokens)) or [1.0] * len(tokens)
    net, tokenizer = _network(config, len(names), token_level=True)
    student = TaggerStudent(net, tokenizer, names, config)
    ids, word_ids = _encode_words(tokenizer, tokens, config.max_length)
    examples = [(i, align_tags(w, t), wt) for i, w, t, wt in zip(ids, word_ids, tags, weights)]
    val = None
    if validation is not None:
        v_tokens, v_tags = _tagging_examples(validation, names, "validation")
        val = (*_encode_words(tokenizer, v_tokens, config.max_length), [[names[t] for t in s] for s in v_tags])
    student.history = _fit(net, examples, _collate(tokenizer.pad_token_id, student.device), config,
                           _Validator(student, val, TASK_METRIC["ner"]))
    return student


# ----------------------------------------------------------------------------- saved students and the reference

def load_student(folder: str | Path, device: str = "auto") -> Student:
    """A student written by `Student.save`, on `device`."""
    from safetensors.torch import load_file

    folder = Path(folder)
    meta = json.loads((folder / "student.json").read_text())
    known = {f.name for f in fields(StudentConfig)}
    config = StudentConfig(**{k: v for k, v in meta["config"].items() if k in known}).replace(device=device)
    cls = ClassifierStudent if meta["task"] == "classification" else TaggerStudent
    net, tokenizer = _network(config, len(meta["label_names"]), token_level=cls is TaggerStudent)
    net.load_state_dict(load_file(str(folder / "model.safetensors"), device=str(next(net.parameters()).device)))
    return cls(net.eval(), tokenizer, meta["label_names"], config, History(**meta["history"]))


def dataset_fingerprint(*splits) -> str:
    """Content hash of Datasets (rows and label names), stable across processes and machines."""
    digest = hashlib.sha256()
    for ds in splits:
        digest.update(json.dumps({"features": str(ds.features), "rows": ds.to_dict()}, sort_keys=True).encode())
    return digest.hexdigest()


def _reference_key(dd, config: StudentConfig, max_train: int | None) -> str:
    _, _, revision = _pretrained(config.model)
    settings = {k: v for k, v in asdict(config).items() if k != "device"}  # a GPU-trained reference serves CPU too
    payload = {"format": CACHE_FORMAT, "data": dataset_fingerprint(dd["train"], dd["validation"]),
               "config": settings, "model_revision": revision, "max_train": max_train}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def full_data_reference(dataset, config: StudentConfig | None = None, *, max_train: int | None = None,
                        use_cache: bool = True) -> Student:
    """The student trained on a dataset's whole train split (early-stopped on validation).

    It is the upper bound that few-shot and synthetic-data students are compared with,
    and the reference classifier that judges the label fidelity of synthetic data.
    `dataset` is a registry name/path or a DatasetDict; `max_train` takes a seeded
    subset of train for CPU budgets. Trained students are cached under
    ``cache_dir()/students/``, keyed by the data's content, the config, the seed and
    the encoder revision, so every notebook after the first loads it in seconds.
    """
    from filelock import FileLock

    from kdlib.lab.paths import cache_dir
    from kdlib.registry import data

    config = config or StudentConfig()
    name = dataset if isinstance(dataset, str) else "dataset"
    dd = data.load(dataset) if isinstance(dataset, str) else dataset
    if max_train is not None and len(dd["train"]) > max_train:
        dd = {**dd, "train": dd["train"].shuffle(seed=config.seed).select(range(max_train))}
    folder = cache_dir() / "students" / f"{Path(name).name}-{_reference_key(dd, config, max_train)}"
    if use_cache and (folder / "student.json").is_file():
        return load_student(folder, config.device)
    task = data.task_of(dd["train"])
    if task == "extractive_qa":
        raise ValueError("full_data_reference trains classifiers and taggers; for extractive QA use kdlib.students.qa.train_qa")
    trainer = train_classifier if task in ("classification", "yes_no_qa") else train_tagger
    student = trainer(dd["train"], dd["validation"], config)
    if use_cache:
        folder.parent.mkdir(parents=True, exist_ok=True)
        with FileLock(str(folder) + ".lock"):  # parallel notebooks: one writer, atomic rename
            if not (folder / "student.json").is_file():
                tmp = folder.with_name(folder.name + f".tmp{os.getpid()}")
                shutil.rmtree(tmp, ignore_errors=True)
                student.save(tmp)
                os.replace(tmp, folder)
    return student
