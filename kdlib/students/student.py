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

import hashlib
import json
import os
import shutil
from collections.abc import Sequence
from dataclasses import asdict, fields
from pathlib import Path

from kdlib.students.encoder import (
    IGNORE_INDEX,
    StudentConfig,
    _encode_texts,
    _encode_words,
    _length_sorted_batches,
    _network,
    _pad,
    _pretrained,
    align_tags,
)
from kdlib.students.encoder import (
    from_budget as from_budget,  # notebooks build their configs through `student`
)
from kdlib.students.examples import (
    _check_weights,
    _classification_examples,
    _resolve_names,
    _tagging_examples,
)
from kdlib.students.fit import History, _collate, _fit

CACHE_FORMAT = 1             # bump when the saved-student layout or training semantics change
TASK_METRIC = {"classification": "macro_f1", "ner": "entity_f1"}


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

    def predict_logits(self, texts: Sequence[str]):
        """Class logits, shape (n, num_labels), float32 (what temperature scaling rescales)."""
        return self._logits(self._encode(texts)).numpy()

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


def train_classifier(train, validation=None, config: StudentConfig | None = None,
                     label_names: Sequence[str] | None = None, sample_weights: Sequence[float] | None = None,
                     track_dynamics: bool = False) -> ClassifierStudent:
    """Fine-tune encoder + head on `train` and return the (best-on-validation) student.

    `train`/`validation` are Datasets with text + label (ClassLabel) or lists of
    ``{"text", "label"}`` dicts whose labels are names (synthetic data) or ids.
    Label names come from `label_names`, else the train/validation ClassLabel, else
    the sorted distinct train labels. `sample_weights` gives one weight per train example.
    `track_dynamics` records, after every full epoch, each train example's probability of its own label and
    whether it is predicted (``student.history.dynamics``; see `kdlib.evaluation.cartography`).
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
    observe = None
    if track_dynamics:
        ids, gold = [e[0] for e in examples], labels

        def observe():
            probs = student._logits(ids).softmax(-1).numpy()
            return {"p_label": probs[range(len(gold)), gold].tolist(),
                    "correct": (probs.argmax(-1) == gold).astype(int).tolist()}
    student.history = _fit(net, examples, _collate(tokenizer.pad_token_id, student.device), config,
                           _Validator(student, val, TASK_METRIC["classification"]), observe)
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
