"""Extractive question answering: a student that points at the answer's span in the context.

The network is the standard `AutoModelForQuestionAnswering` shape — the encoder, then a linear layer giving
every wordpiece a start and an end score — built on the same pretrained encoder and training loop as the
classifiers (`kdlib.students.student`), so students of every task share one optimiser, schedule, early stopping and
seeding. The loss is HF's: the mean of the start and end cross-entropies over positions,

    L = ½ (CE(s, i_start) + CE(e, i_end)),   s, e: [B, T] scores, i_*: gold wordpiece indices,

which is `fit._weighted_loss`'s tagging path applied to logits arranged [B, 2, T].

Long contexts are cut into windows of `max_length` wordpieces that overlap by `stride` (the fast tokenizer's
overflow with offset mapping, as in the HF QA examples); a training window that does not contain the whole
answer points at [CLS]. A prediction is the best-scoring span (start <= end < start + `max_answer_tokens`,
inside the context) over all windows of a question, mapped back to characters through the offsets.

Scoring is SQuAD v1.1 exact match and F1 from torchmetrics (a port of the official script, with its answer
normalisation); `evaluate`'s "squad" metric would fetch its script from the hub, which this lab cannot reach.
Both are reported as fractions in [0, 1] like every other metric here (SQuAD papers print percentages).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass

from kdlib.students.encoder import StudentConfig, _length_sorted_batches, _net_class, _network, _pad
from kdlib.students.fit import _collate, _fit
from kdlib.students.student import Student, _check_weights

CONTEXT = 1  # sequence id of the context in a (question, context) pair


def qa_config(**changes) -> StudentConfig:
    """A `StudentConfig` sized for QA: 384-wordpiece windows (the SQuAD default) and a smaller batch."""
    return StudentConfig(**{"max_length": 384, "batch_size": 16, "eval_batch_size": 64, **changes})


@dataclass(frozen=True)
class Windows:
    """Tokenised (question, context) windows: ids, which example each came from, and character offsets
    of its context wordpieces (None elsewhere)."""
    input_ids: list[list[int]]
    example: list[int]
    offsets: list[list[tuple[int, int] | None]]


def windows(tokenizer, questions: Sequence[str], contexts: Sequence[str], max_length: int, stride: int) -> Windows:
    """Every (question, context) pair as overlapping windows of at most `max_length` wordpieces."""
    if stride >= max_length // 2:
        raise ValueError(f"stride ({stride}) must be well below max_length ({max_length})")
    enc = tokenizer([q.strip() for q in questions], list(contexts), truncation="only_second", max_length=max_length,
                    stride=stride, return_overflowing_tokens=True, return_offsets_mapping=True)
    offsets = [[tuple(o) if sid == CONTEXT else None for o, sid in zip(enc["offset_mapping"][i], enc.sequence_ids(i))]
               for i in range(len(enc["input_ids"]))]
    return Windows(enc["input_ids"], list(enc["overflow_to_sample_mapping"]), offsets)


def answer_positions(offsets: list[tuple[int, int] | None], start_char: int, end_char: int) -> tuple[int, int]:
    """Wordpiece indices (start, end) of the characters [start_char, end_char) in one window; (0, 0) ([CLS])
    when the window does not hold the whole answer."""
    inside = [i for i, o in enumerate(offsets) if o is not None]
    if not inside or offsets[inside[0]][0] > start_char or offsets[inside[-1]][1] < end_char:
        return 0, 0
    start = next(i for i in inside if offsets[i][1] > start_char)
    end = next(i for i in reversed(inside) if offsets[i][0] < end_char)
    return start, end


@functools.cache
def _span_net_class():
    import torch

    class SpanNet(_net_class()):
        """Encoder + per-token head with 2 outputs, arranged [B, 2, T] (start and end scores); padding never wins."""

        def forward(self, input_ids, attention_mask):
            scores = self.head(self.dropout(self.hidden(input_ids, attention_mask))).transpose(1, 2)
            return scores.masked_fill(attention_mask.unsqueeze(1) == 0, torch.finfo(scores.dtype).min / 2)

    return SpanNet


def _qa_rows(data, where: str) -> list[dict]:
    """Rows with question, context and answers {text: [...], answer_start: [...]}, checked as the data
    registry checks a file (`kdlib.registry.data_qa.check_rows`): errors name the row (counted from 1)."""
    from kdlib.registry.data_qa import check_rows

    rows = list(data)
    if rows:
        check_rows(rows, "extractive_qa", where, ValueError)
    return rows


class QAStudent(Student):
    """Extractive QA: the answer is a span of the context."""

    task = "extractive_qa"

    def __init__(self, net, tokenizer, config: StudentConfig, stride: int, max_answer_tokens: int, history=None):
        super().__init__(net, tokenizer, ["start", "end"], config, history)
        self.stride, self.max_answer_tokens = stride, max_answer_tokens

    def _scores(self, w: Windows):
        """Start and end scores per window, as lists of float tensors of each window's length."""
        import torch

        out = [None] * len(w.input_ids)
        self.net.eval()
        with torch.inference_mode():
            for idx in _length_sorted_batches(w.input_ids, self.config.eval_batch_size):
                ids, mask = _pad([w.input_ids[i] for i in idx], self.tokenizer.pad_token_id, self.device)
                scores = self.net(ids, mask).float().cpu()
                for row, i in enumerate(idx):
                    out[i] = scores[row, :, :len(w.input_ids[i])]
        return out

    def predict(self, questions: Sequence[str], contexts: Sequence[str]) -> list[str]:
        """The answer text of each (question, context): the best span over the question's windows."""
        if isinstance(questions, str) or len(questions) != len(contexts):
            raise ValueError("predict takes equally long lists of questions and contexts")
        if not questions:
            return []
        w = windows(self.tokenizer, questions, contexts, self.config.max_length, self.stride)
        best: list[tuple[float, str]] = [(float("-inf"), "")] * len(questions)
        for scores, k, offsets in zip(self._scores(w), w.example, w.offsets):
            score, start, end = best_span(scores[0], scores[1], [o is not None for o in offsets], self.max_answer_tokens)
            if start >= 0 and score > best[k][0]:
                best[k] = (score, contexts[k][offsets[start][0]:offsets[end][1]])
        return [text for _, text in best]

    def evaluate(self, data) -> dict:
        """exact_match and f1 (SQuAD v1.1, fractions) on rows with question, context and answers."""
        rows = _qa_rows(data, "evaluation data")
        return squad_scores(self.predict([r["question"] for r in rows], [r["context"] for r in rows]), rows)


def best_span(start_scores, end_scores, allowed: Sequence[bool], max_tokens: int) -> tuple[float, int, int]:
    """argmax over start <= end < start + max_tokens, both allowed, of start_scores[start] + end_scores[end];
    (-inf, -1, -1) when no position is allowed. Shapes: [T], [T], T booleans. O(T * max_tokens)."""
    import torch

    ok = torch.tensor(list(allowed), dtype=torch.bool)
    if not ok.any():
        return float("-inf"), -1, -1
    neg = torch.finfo(start_scores.dtype).min
    s, e = start_scores.masked_fill(~ok, neg), end_scores.masked_fill(~ok, neg)
    n = len(s)
    total = s[:, None] + e[None, :]                                   # [T, T]: start i, end j
    i, j = torch.arange(n)[:, None], torch.arange(n)[None, :]
    total = total.masked_fill((j < i) | (j >= i + max_tokens) | ~ok[:, None] | ~ok[None, :], float("-inf"))
    flat = int(total.argmax())
    return float(total.view(-1)[flat]), flat // n, flat % n


def squad_scores(predictions: Sequence[str], rows: Sequence[dict]) -> dict:
    """SQuAD v1.1 exact match and F1 (best over each question's gold answers), as fractions in [0, 1]."""
    from torchmetrics.functional.text import squad

    if len(predictions) != len(rows):
        raise ValueError(f"{len(predictions)} predictions for {len(rows)} questions")
    if not rows:
        return {"exact_match": float("nan"), "f1": float("nan"), "n": 0}
    preds = [{"id": str(i), "prediction_text": p} for i, p in enumerate(predictions)]
    refs = [{"id": str(i), "answers": {"text": list(r["answers"]["text"]),
                                       "answer_start": list(r["answers"]["answer_start"])}} for i, r in enumerate(rows)]
    out = squad(preds, refs)
    return {"exact_match": float(out["exact_match"]) / 100, "f1": float(out["f1"]) / 100, "n": len(rows)}


def train_qa(train, validation=None, config: StudentConfig | None = None, *, stride: int = 128,
             max_answer_tokens: int = 30, sample_weights: Sequence[float] | None = None) -> QAStudent:
    """Fine-tune encoder + span head on rows {question, context, answers} (a Dataset or dicts; the first gold
    answer is the target) and return the best-on-validation student (validation metric: SQuAD F1)."""
    config = config or qa_config()
    if config.max_length < 64:
        raise ValueError(f"QA windows need max_length >= 64 wordpieces, got {config.max_length}")
    rows = _qa_rows(train, "train")
    if not rows:
        raise ValueError("train: no QA examples")
    weights = _check_weights(sample_weights, len(rows)) or [1.0] * len(rows)
    net, tokenizer = _network(config, 2, True, _span_net_class())
    student = QAStudent(net, tokenizer, config, stride, max_answer_tokens)
    w = windows(tokenizer, [r["question"] for r in rows], [r["context"] for r in rows], config.max_length, stride)
    examples = []
    for ids, k, offsets in zip(w.input_ids, w.example, w.offsets):
        start_char = rows[k]["answers"]["answer_start"][0]
        start, end = answer_positions(offsets, start_char, start_char + len(rows[k]["answers"]["text"][0]))
        examples.append((ids, [start, end], weights[k]))
    val = None if validation is None else (_qa_rows(validation, "validation"),)
    student.history = _fit(net, examples, _collate(tokenizer.pad_token_id, student.device), config,
                           _QAValidator(student, val))
    return student


class _QAValidator:
    """The training loop's validator for QA (SQuAD F1 on the validation rows); disabled without any."""

    metric = "f1"

    def __init__(self, student: QAStudent, data):
        self.student, self.data, self.enabled = student, data, data is not None

    def __call__(self) -> dict:
        return self.student.evaluate(self.data[0])

