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
agreement of the teacher's labels with a reference classifier (`evokd_tasks.label_agreement`), are recorded
for the learning curves and diagnostics only; no decision reads them.

The task (`kdlib.synthesis.evokd_tasks`: classification or NER, through the same methods) supplies the
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
from kdlib.parsing.parse import ParseReport
from kdlib.synthesis.evokd_tasks import STANCES
from kdlib.synthesis.valuation import knn_shapley, top_fraction


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
