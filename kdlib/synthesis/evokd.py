"""EvoKD (Liu et al., "Evolving Knowledge Distillation with Large Language Models and Active Learning",
LREC-COLING 2024): the teacher studies the student's mistakes and writes the data that fixes them.

Round r (after round 0, the student trained on the k-shot seed set):
1. the current student predicts the pool (seed + generated samples so far);
2. feedback: some correctly and some wrongly predicted pool items (text, gold label, student's
   label), drawn at random or by data value (`feedback="value"`: the lowest-valued wrong items,
   the most confusing, and the highest-valued right ones, the most typical);
3. analysis (unless ``analysis=False``, an ablation): the teacher writes a short diagnosis of the
   student's weaknesses, with the last `review` rounds' diagnoses in the prompt;
4. generation: per stance ("easy": clearly labelled, "hard": near the decision boundary; or one
   plain request when ``stances=()``, an ablation) the teacher writes labelled samples as JSON;
   they are parsed and validated (`kdlib.parsing.parse`), de-duplicated against the pool and the test
   texts; optionally relabelled by a separate teacher query (``relabel=True``; the paper's answer
   to label noise) and pruned by KNN-Shapley value (``valuation="knn_shapley"``); in the controlled
   variant (``labels="reference"``) a classifier trained on the full gold data relabels them, which
   separates what the loop makes the teacher *write* from the teacher's label noise;
5. the pool grows, a fresh student trains on it, and the round is checkpointed.

Every round writes ``round_NNN.json`` (pool, analyses, history, tokens) atomically: a killed run
resumes after its last finished round and asks the teacher for nothing it already has (the
teacher cache makes even the interrupted round's finished calls free). Test scores, and the
agreement of the teacher's labels with a reference classifier (`label_agreement`), are recorded
for the learning curves and diagnostics only; no decision reads them.

The task (classification here; NER plugs in through the same `Task` methods) supplies the
prompts' wording, parsing, training and prediction.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from kdlib.parsing.dedup import dedup
from kdlib.parsing.parse import ParseReport, parse_classification, split_inline_list
from kdlib.parsing.parse_ner import parse_ner, to_markup
from kdlib.synthesis.synth import TaskSpec
from kdlib.synthesis.valuation import knn_shapley, top_fraction

STANCES = {
    "easy": "easy examples: typical texts whose label is obvious",
    "hard": "hard examples: texts the model above would likely get wrong, close to the boundary between labels",
}


@dataclass
class EvoKDConfig:
    rounds: int = 4
    per_round: int = 16              # samples requested per round, split over the stances
    samples_per_request: int = 2     # teacher samples per generation prompt (seeded, distinct)
    feedback_correct: int = 4        # correctly predicted pool items shown to the teacher
    feedback_wrong: int = 6          # wrongly predicted pool items shown
    feedback: str = "random"         # "random" or "value" (KNN-Shapley picks the items shown)
    analysis: bool = True            # ablation switch: without the weakness analysis
    stances: tuple[str, ...] = ("easy", "hard")   # () = one plain request (ablation)
    review: int = 2                  # earlier analyses kept in the prompt
    relabel: bool = False            # a separate labelling query; disagreeing samples are dropped
    labels: str = "teacher"          # who labels generated texts: "teacher", or "reference" (controlled
                                     # variant: the full-data classifier passed to `run` relabels them)
    valuation: str = "none"          # "none" or "knn_shapley": keep the most valuable new samples
    keep_fraction: float = 0.75      # share of new samples kept by valuation
    knn_k: int = 5
    temperature: float = 0.8
    analysis_max_new_tokens: int = 120
    generate_max_new_tokens: int = 256
    max_tokens: int | None = None    # stop once the teacher tokens spent so far reach this budget
    structured: bool = False         # ask for JSON / markup and constrain the teacher's answer to its grammar
    seed: int = 0

    def __post_init__(self):
        self.stances = tuple(self.stances)
        unknown = set(self.stances) - set(STANCES)
        if unknown:
            raise ValueError(f"EvoKDConfig.stances: unknown {sorted(unknown)}; known: {sorted(STANCES)}")
        if self.feedback not in ("random", "value") or self.valuation not in ("none", "knn_shapley"):
            raise ValueError("EvoKDConfig: feedback must be 'random' or 'value', valuation 'none' or 'knn_shapley'")
        if self.labels not in ("teacher", "reference"):
            raise ValueError(f"EvoKDConfig.labels must be 'teacher' or 'reference', got {self.labels!r}")
        for name in ("rounds", "per_round", "samples_per_request", "knn_k"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ValueError(f"EvoKDConfig.{name} must be an integer >= 1, got {getattr(self, name)!r}")
        if not 0 < self.keep_fraction <= 1:
            raise ValueError(f"EvoKDConfig.keep_fraction must be in (0, 1], got {self.keep_fraction}")

    def fingerprint(self) -> str:
        """Identity of a run: everything but when to stop (`rounds`, `max_tokens`), so a run can be extended."""
        settings = {k: v for k, v in asdict(self).items() if k not in ("rounds", "max_tokens")}
        if not self.structured:  # added later: runs made before it keep their identity
            del settings["structured"]
        return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]


# ----------------------------------------------------------------------------- the task: classification

class ClassificationTask:
    """Prompts, parsing, training and prediction for text classification. Rows are {"text", "label"}."""

    fields = ("text", "label")

    def __init__(self, spec: TaskSpec, student_config, test_texts: Sequence[str] = ()):
        self.spec, self.config, self.test_texts = spec, student_config, list(test_texts)
        self.labels = spec.label_names
        self.trained = TrainingMemo()

    def correct(self, row: dict, pred) -> bool:
        return pred == row["label"]

    def label_of(self, row: dict):
        """The label data valuation compares (KNN-Shapley's same-label test)."""
        return row["label"]

    def with_labels(self, rows: Sequence[dict], preds: Sequence[str]) -> list[dict]:
        return [{**r, "label": p} for r, p in zip(rows, preds)]

    def agreement(self, rows: Sequence[dict], preds: Sequence[str]) -> float:
        """Share of rows whose label equals the prediction."""
        return float(np.mean([r["label"] == p for r, p in zip(rows, preds)]))

    def describe(self) -> str:
        lines = [f"A small model is learning to classify {self.spec.text_kind} into one of these labels:"]
        lines += [f"- {lab}: the text {d}" for lab, d in self.spec.label_descriptions.items()]
        return "\n".join(lines)

    def show(self, row: dict, pred: str | None = None) -> str:
        text = " ".join(row["text"].split())
        if pred is None or pred == row["label"]:
            return f'"{text}" (label: {row["label"]})'
        return f'"{text}" (correct label: {row["label"]}; the model said: {pred})'

    def output_format(self, n: int, stance: str | None, structured: bool = False) -> str:
        kind = STANCES[stance] if stance else "examples"
        if structured:
            return (f"Write {n} new {kind}, each with its correct label. Answer with one JSON object "
                    '{"samples": [{"text": "...", "label": "..."}, ...]}, and nothing else.')
        return (f"Write {n} new {kind}, each with its correct label. Answer with one JSON object per line, "
                'like {"text": "...", "label": "..."}, and nothing else.')

    def output_grammar(self, n: int, max_new_tokens: int = 256) -> str:
        """The grammar of a structured answer: {"samples": [n {text, label from the label set}]}, each text
        capped in tokens so that all n always fit in `max_new_tokens` (and in characters for servers)."""
        from kdlib.teachers.structured import chars_within, json_schema, sample_schema, string_budget

        longest = min(400, chars_within(max_new_tokens, n, overhead_tokens=12))
        schema = sample_schema(self.labels, items=n, min_chars=10, max_chars=max(longest, 24))
        return json_schema(schema, compact=True, string_max_tokens=string_budget(max_new_tokens - 4, n, 12))

    def parse(self, outputs: Sequence[str]) -> ParseReport:
        return parse_classification([split_inline_list(o) for o in outputs], self.labels, min_chars=10)

    def train(self, rows: Sequence[dict], seed: int):
        from kdlib.students.student import train_classifier

        return self.trained.get(rows, seed, lambda: train_classifier(list(rows), None, self.config.replace(seed=seed),
                                                                     label_names=self.labels))

    def predict(self, student, rows: Sequence[dict]) -> list[str]:
        return student.predict_labels([r["text"] for r in rows]) if rows else []

    def embed(self, student, rows: Sequence[dict]):
        return student.embed([r["text"] for r in rows], normalize=True)

    def evaluate(self, student, dataset) -> dict:
        return self.trained.evaluate(student, dataset)

    def relabel(self, teacher, rows: Sequence[dict], shots: Sequence[dict]) -> list[bool]:
        """Whether a separate few-shot labelling query agrees with each row's label."""
        from kdlib.synthesis.labeling import annotate_generate

        demos = [(r["text"], r["label"]) for r in shots]
        labels = annotate_generate(teacher, [r["text"] for r in rows], self.labels, demos,
                                   task=f"the {self.spec.text_kind}", method="relabel").labels
        return [lab == r["label"] for lab, r in zip(labels, rows)]


# What CoNLL-style entity types mean, for prompts; other types are described by their name.
ENTITY_DESCRIPTIONS = {"PER": "a person's name", "LOC": "a location (country, city, region, landmark)",
                       "ORG": "an organisation (company, team, institution, party)",
                       "MISC": "another named entity (nationality, event, language, title of a work)"}


def entity_types(tag_names: Sequence[str]) -> dict[str, str]:
    """Entity type -> description, from BIO tag names (B-PER, I-PER, O, ...), in order of appearance."""
    types = dict.fromkeys(t[2:] for t in tag_names if t[:2] in ("B-", "I-"))
    return {t: ENTITY_DESCRIPTIONS.get(t, f"an entity of type {t}") for t in types}


class NERTask:
    """The same loop for named-entity recognition. Rows are {"tokens", "tags"} (BIO); the teacher
    sees and writes sentences with inline ``[entity text](TYPE)`` markup, read by `parse_ner`."""

    fields = ("tokens", "tags")

    def __init__(self, entity_types: dict[str, str], student_config, text_kind: str = "a sentence from a news article",
                 test_sentences: Sequence[Sequence[str]] = ()):
        if not entity_types:
            raise ValueError("NERTask needs at least one entity type")
        self.types, self.config, self.text_kind = dict(entity_types), student_config, text_kind
        self.tag_names = ["O"] + [f"{p}-{t}" for t in self.types for p in ("B", "I")]
        self.test_texts = [" ".join(s) for s in test_sentences]
        self.trained = TrainingMemo()

    def describe(self) -> str:
        lines = [f"A small model is learning to find named entities in {self.text_kind}. The entity types are:"]
        lines += [f"- {t}: {d}" for t, d in self.types.items()]
        return "\n".join(lines)

    def show(self, row: dict, pred=None) -> str:
        text = to_markup(row["tokens"], row["tags"])
        if pred is None or pred == row["tags"]:
            return text
        return f"{text}   (the model marked: {to_markup(row['tokens'], pred)})"

    def output_format(self, n: int, stance: str | None, structured: bool = False) -> str:
        kind = STANCES[stance] if stance else "examples"
        return (f"Write {n} new sentences as {kind}. Mark every entity as [entity text](TYPE), for example "
                "[Angela Merkel](PER) visited [Paris](LOC). One sentence per line, nothing else.")

    def output_grammar(self, n: int, max_new_tokens: int = 256) -> str:
        """The grammar of a structured answer: n lines of words and [entity](TYPE) marks of known types,
        each line capped in tokens so that all n always fit in `max_new_tokens`."""
        from kdlib.teachers.structured import markup_grammar

        return markup_grammar(list(self.types), lines=n, max_words=40, require_entity=True,
                              line_max_tokens=max(8, max_new_tokens // n - 1))

    def parse(self, outputs: Sequence[str]) -> ParseReport:
        return parse_ner([split_inline_list(o) for o in outputs], list(self.types), min_tokens=3)

    def correct(self, row: dict, pred) -> bool:
        return list(pred) == list(row["tags"])

    def label_of(self, row: dict):
        raise ValueError("data valuation (KNN-Shapley) needs one label per example: not available for NER")

    def with_labels(self, rows: Sequence[dict], preds: Sequence[Sequence[str]]) -> list[dict]:
        return [{**r, "tags": list(p)} for r, p in zip(rows, preds)]

    def agreement(self, rows: Sequence[dict], preds: Sequence[Sequence[str]]) -> float:
        """Entity F1 (seqeval) of the rows' tags against the predictions taken as the truth."""
        from kdlib.students.metrics import ner_metrics

        return float(ner_metrics([list(p) for p in preds], [list(r["tags"]) for r in rows])["entity_f1"])

    def train(self, rows: Sequence[dict], seed: int):
        from kdlib.students.student import train_tagger

        return self.trained.get(rows, seed, lambda: train_tagger(list(rows), None, self.config.replace(seed=seed),
                                                                 label_names=self.tag_names))

    def predict(self, student, rows: Sequence[dict]) -> list[list[str]]:
        return student.predict([r["tokens"] for r in rows]) if rows else []

    def embed(self, student, rows: Sequence[dict]):
        raise ValueError("data valuation (KNN-Shapley) is implemented for classification only")

    def evaluate(self, student, dataset) -> dict:
        return self.trained.evaluate(student, dataset)

    def relabel(self, teacher, rows: Sequence[dict], shots: Sequence[dict]) -> list[bool]:
        raise ValueError("relabel is implemented for classification only")


class TrainingMemo:
    """The students a task trained most recently used, by (training rows, seed), and their scores.
    Every method compared on one seed set starts from the same round-0 student, and training is
    deterministic given its rows and seed: the notebook's runs share that student, and its test
    score, instead of training and evaluating it once per method. A round that adds nothing also
    reuses the student it has. Least recently used students go first (a MiniLM student is ~90 MB)."""

    def __init__(self, size: int = 12):
        self.size, self.students = size, {}
        self.scores = {}  # (id(student), id(dataset)) -> (dataset, scores); only for remembered students

    def get(self, rows: Sequence[dict], seed: int, train):
        key = hashlib.sha256(json.dumps([rows, seed], sort_keys=True, ensure_ascii=False).encode()).hexdigest()
        student = self.students.pop(key) if key in self.students else train()
        self.students[key] = student  # (re)inserted last: the most recently used
        while len(self.students) > self.size:
            gone = id(self.students.pop(next(iter(self.students))))
            # an id can be reused once its object is freed: forget the scores of a forgotten student
            self.scores = {k: v for k, v in self.scores.items() if k[0] != gone}
        return student

    def evaluate(self, student, dataset) -> dict:
        """``student.evaluate(dataset)``, computed once while the student is remembered."""
        if not any(s is student for s in self.students.values()):
            return student.evaluate(dataset)
        key = (id(student), id(dataset))
        if key not in self.scores:  # the dataset is kept with its scores, so its id stays its own
            self.scores[key] = (dataset, student.evaluate(dataset))
        return self.scores[key][1]


def label_agreement(task, reference, rows: Sequence[dict]) -> float:
    """How often the labels of `rows` (generated ones) agree with a reference classifier trained on
    the full gold data: the share of equal labels for classification, the entity F1 against the
    reference's tags for NER. A diagnostic of the teacher's label quality (NaN for no rows)."""
    return task.agreement(rows, task.predict(reference, rows)) if rows else float("nan")


# ----------------------------------------------------------------------------- prompts

def analysis_prompt(task, right: Sequence[tuple[dict, str]], wrong: Sequence[tuple[dict, str]],
                    earlier: Sequence[str]) -> list[dict]:
    lines = [task.describe(), ""]
    if right:
        lines += ["Examples it classified correctly:"] + [f"{i}. {task.show(r, p)}" for i, (r, p) in enumerate(right, 1)]
    if wrong:
        lines += ["Examples it got wrong:"] + [f"{i}. {task.show(r, p)}" for i, (r, p) in enumerate(wrong, 1)]
    if earlier:
        lines += ["Your earlier analyses:"] + [f"- {a}" for a in earlier]
    lines.append("In two or three sentences, describe which kinds of texts the model gets wrong, and why.")
    return [{"role": "user", "content": "\n".join(lines)}]


def generation_prompt(task, analysis: str | None, wrong: Sequence[tuple[dict, str]], n: int,
                      stance: str | None, structured: bool = False) -> list[dict]:
    lines = [task.describe(), ""]
    if analysis:
        lines += ["Analysis of its weaknesses: " + " ".join(analysis.split()), ""]
    if wrong:
        lines += ["Examples it got wrong:"] + [f"{i}. {task.show(r, p)}" for i, (r, p) in enumerate(wrong, 1)] + [""]
    lines.append(task.output_format(n, stance, structured))
    return [{"role": "user", "content": "\n".join(lines)}]


# ----------------------------------------------------------------------------- methods compared in the notebooks

STRUCTURED_TAG = " [structured]"


def preset(method: str, base: EvoKDConfig | None = None) -> EvoKDConfig:
    """The configuration of a named method (the paper's ablations and the static baseline) on top of `base`;
    "<method> [structured]" is the same with `structured=True`."""
    from dataclasses import replace

    base = base or EvoKDConfig()
    if method.endswith(STRUCTURED_TAG):  # any method, with answers constrained to the task's grammar
        return replace(preset(method[:-len(STRUCTURED_TAG)], base), structured=True)
    # the same requests, rounds and budget with no feedback at all: static generation
    static = {"analysis": False, "feedback_wrong": 0, "feedback_correct": 0, "stances": ()}
    changes = {
        "EvoKD": {},
        "EvoKD w/o analysis": {"analysis": False},
        "EvoKD w/o stances": {"stances": ()},
        "EvoKD + valuation": {"valuation": "knn_shapley"},
        "EvoKD + value feedback": {"feedback": "value"},
        "EvoKD + relabel": {"relabel": True},
        "static generation": static,
        # controlled variants: the full-data reference labels what the teacher writes
        "EvoKD (reference labels)": {"labels": "reference"},
        "static generation (reference labels)": {**static, "labels": "reference"},
    }
    if method not in changes:
        raise ValueError(f"unknown EvoKD method {method!r}; known: {sorted(changes)}")
    return replace(base, **changes[method])


# ----------------------------------------------------------------------------- the loop

@dataclass
class EvoKDState:
    pool: list[dict]                              # {"text", "label", "origin": "seed" | "round N", ...}
    analyses: list[str] = field(default_factory=list)
    history: list[dict] = field(default_factory=list)
    examples: list[dict] = field(default_factory=list)   # per round: prompts' feedback and a few samples
    tokens: int = 0                               # teacher tokens (cache hits included)
    round: int = 0


def _feedback(task, cfg: EvoKDConfig, student, pool: list[dict], rng: random.Random, seeds: list[dict]):
    preds = task.predict(student, pool)
    right = [(r, p) for r, p in zip(pool, preds) if task.correct(r, p)]
    wrong = [(r, p) for r, p in zip(pool, preds) if not task.correct(r, p)]
    if cfg.feedback == "value" and len(pool) > 1:
        values = _values(task, student, pool, seeds, cfg.knn_k)
        value = {id(r): v for r, v in zip(pool, values)}
        wrong = sorted(wrong, key=lambda rp: value[id(rp[0])])[:cfg.feedback_wrong]
        right = sorted(right, key=lambda rp: -value[id(rp[0])])[:cfg.feedback_correct]
    else:
        wrong = rng.sample(wrong, min(cfg.feedback_wrong, len(wrong)))
        right = rng.sample(right, min(cfg.feedback_correct, len(right)))
    return right, wrong, float(np.mean([task.correct(r, p) for r, p in zip(pool, preds)])) if pool else 0.0


def _values(task, student, rows: list[dict], seeds: list[dict], k: int):
    """KNN-Shapley value of each row, the gold seeds being the validation set (the only labels we trust)."""
    return knn_shapley(task.embed(student, rows), [task.label_of(r) for r in rows],
                       task.embed(student, seeds), [task.label_of(r) for r in seeds], k)


def _new_samples(teacher, task, cfg: EvoKDConfig, state: EvoKDState, right, wrong, seed: int):
    tokens, analysis = 0, None
    if cfg.analysis:
        out = teacher.generate([analysis_prompt(task, right, wrong, state.analyses[-cfg.review:] if cfg.review else [])],
                               seed=seed, temperature=cfg.temperature, max_new_tokens=cfg.analysis_max_new_tokens)[0]
        analysis, tokens = " ".join(out.text.split()), out.prompt_tokens + out.completion_tokens
    stances = cfg.stances or (None,)
    per_request = _per_request(cfg)
    prompts = [generation_prompt(task, analysis, wrong, per_request, s, cfg.structured) for s in stances]
    grammar = {"grammar": task.output_grammar(per_request, cfg.generate_max_new_tokens)} if cfg.structured else {}
    outs = teacher.generate(prompts, n=cfg.samples_per_request, seed=seed, temperature=cfg.temperature,
                            max_new_tokens=cfg.generate_max_new_tokens, **grammar)
    tokens += sum(c.prompt_tokens + c.completion_tokens for c in outs)
    report = ParseReport()
    for k, stance in enumerate(stances):
        part = task.parse([c.text for c in outs[k * cfg.samples_per_request:(k + 1) * cfg.samples_per_request]])
        part.kept = [{**r, "stance": stance or "plain"} for r in part.kept]
        report = report.merge(part)
    counts = {"requested": len(outs) * per_request, "parsed": len(report.kept)}
    kept, dups = dedup(report.kept, near_threshold=0.9, key=_text, against=state.pool, against_reason="copy_of_pool")
    kept, leaks = dedup(kept, near_threshold=None, key=_text, against=[{"text": t} for t in task.test_texts])
    report = report.then(dups).then(leaks)
    return analysis, kept, report, tokens, prompts, counts


def _per_request(cfg: EvoKDConfig) -> int:
    """Samples asked for in one generation request: the round's samples split over stances and draws."""
    return max(1, round(cfg.per_round / (len(cfg.stances or (None,)) * cfg.samples_per_request)))


def _text(row: dict) -> str:
    return row["text"] if "text" in row else " ".join(row["tokens"])


def run_identity(cfg: EvoKDConfig, teacher, task, reference=None) -> str:
    """What a checkpoint must match to be resumed: the configuration (less its stopping rule), the
    teacher (backend, model, revision), the student's settings and, when it labels the samples, the
    reference classifier's weights."""
    student = getattr(task, "config", None)
    # a run may resume on another device: the device is no part of its identity
    settings = {k: v for k, v in asdict(student).items() if k != "device"} if student is not None else None
    payload = {"config": cfg.fingerprint(), "teacher": teacher.identity(), "student": settings}
    if cfg.structured:  # the grammar shapes every answer: a changed grammar must not resume an old run
        payload["grammar"] = task.output_grammar(_per_request(cfg), cfg.generate_max_new_tokens)
    if cfg.labels == "reference":
        payload["reference"] = _weights_fingerprint(reference)
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _weights_fingerprint(model) -> str:
    """A hash of a student's weights: which reference classifier labelled a run's samples."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.net.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


def _save(folder: Path, state: EvoKDState, cfg: EvoKDConfig, identity: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"round_{state.round:03d}.json"
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    tmp.write_text(json.dumps({"config": asdict(cfg), "identity": identity, **asdict(state)}, ensure_ascii=False))
    os.replace(tmp, path)  # a kill leaves the previous round's file, never half a file


def _load(folder: Path, identity: str, seeds: list[dict]) -> EvoKDState | None:
    files = sorted(folder.glob("round_*.json")) if folder.is_dir() else []
    if not files:
        return None
    saved = json.loads(files[-1].read_text())
    if saved.get("identity") != identity or saved["pool"][:len(seeds)] != seeds:
        raise ValueError(f"{folder} holds an EvoKD run with another configuration, teacher, student or seed set: "
                         "use a new checkpoint folder (or delete this one) to start over")
    return EvoKDState(**{k: saved[k] for k in ("pool", "analyses", "history", "examples", "tokens", "round")})


def run(teacher, task, seeds: Sequence[dict], cfg: EvoKDConfig | None = None, *, evaluate_on=None,
        reference=None, checkpoint_dir: str | Path | None = None, progress: bool = True):
    """Run (or resume) EvoKD; returns (final student, state). `seeds` are the k-shot gold rows.

    `reference`: a classifier (or tagger) trained on the full gold data. Given, each round's history
    records how often the teacher's labels agree with it (`reference_agreement`); with
    ``cfg.labels == "reference"`` (required there) it also replaces those labels."""
    cfg = cfg or EvoKDConfig()
    seed_rows = [{**{f: r[f] for f in task.fields}, "origin": "seed"} for r in seeds]
    if not seed_rows:
        raise ValueError("EvoKD needs a non-empty seed set")
    if cfg.labels == "reference" and reference is None:
        raise ValueError("EvoKDConfig.labels='reference' needs run(..., reference=<classifier trained on the full data>)")
    folder = Path(checkpoint_dir) if checkpoint_dir else None
    identity = run_identity(cfg, teacher, task, reference)
    state = (_load(folder, identity, seed_rows) if folder else None) or EvoKDState(pool=seed_rows)
    t = teacher  # its ledger shows what this process really computed; state.tokens is the run's full bill
    student = task.train(_examples(task, state.pool), cfg.seed)
    if not state.history:
        state.history.append(_history_row(task, student, state, evaluate_on, added=0, pool_accuracy=None, report=None))
        if folder:
            _save(folder, state, cfg, identity)
    rounds = range(state.round + 1, cfg.rounds + 1)
    if progress:
        from kdlib.lab.progress import track

        rounds = track(list(rounds), desc="EvoKD rounds")
    for r in rounds:
        if cfg.max_tokens is not None and state.tokens >= cfg.max_tokens:
            break
        rng = random.Random(f"{cfg.seed}/{r}")
        right, wrong, pool_acc = _feedback(task, cfg, student, state.pool, rng, seed_rows)
        analysis, new, report, tokens, prompts, counts = _new_samples(t, task, cfg, state, right, wrong,
                                                                      seed=cfg.seed * 1000 + r)
        agreement = None
        if reference is not None and new:
            verdicts = task.predict(reference, new)
            agreement = task.agreement(new, verdicts)  # of the teacher's own labels, before any replacement
            if cfg.labels == "reference":
                new = task.with_labels(new, verdicts)
        if cfg.relabel and new:
            agrees = task.relabel(t, new, seed_rows)
            for x, ok in zip(new, agrees):
                if not ok:
                    report.reject(_text(x), "label_disagreement")
            new = [x for x, ok in zip(new, agrees) if ok]
        if cfg.valuation == "knn_shapley" and new:
            values = _values(task, student, state.pool + new, seed_rows, cfg.knn_k)
            keep = set(top_fraction(values[len(state.pool):], cfg.keep_fraction).tolist())
            for i, x in enumerate(new):
                if i not in keep:
                    report.reject(_text(x), "low_value")
            new = [x for i, x in enumerate(new) if i in keep]
        state.round = r
        state.tokens += tokens
        if analysis:
            state.analyses.append(analysis)
        state.pool += [{**x, "origin": f"round {r}"} for x in new]
        student = task.train(_examples(task, state.pool), cfg.seed)
        state.history.append({**_history_row(task, student, state, evaluate_on, len(new), pool_acc, report),
                              "reference_agreement": agreement, **counts})
        state.examples.append({"round": r, "analysis": analysis, "prompt": prompts[0][0]["content"],
                               "samples": new[:6], "rejected": report.rejected[:6]})
        if folder:
            _save(folder, state, cfg, identity)
    return student, state


def _examples(task, rows: list[dict]) -> list[dict]:
    """Rows as the student trainer takes them: the task's fields only (no origin or stance)."""
    return [{f: r[f] for f in task.fields} for r in rows]


def _history_row(task, student, state: EvoKDState, evaluate_on, added: int, pool_accuracy, report) -> dict:
    row = {"round": state.round, "pool": len(state.pool), "added": added, "tokens": state.tokens,
           "pool_accuracy_before": pool_accuracy,
           "rejections": dict(report.counts) if report is not None else {}}
    if evaluate_on is not None:
        row.update({f"test_{k}": v for k, v in task.evaluate(student, evaluate_on).items()
                    if isinstance(v, int | float)})
    return row
