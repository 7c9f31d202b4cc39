"""The teacher as annotator: prompting, label scoring, calibration, voting, and co-annotation routing.

Two ways to get a label for a text from a chat LLM:

- *generate*: ask for the label, parse the answer with `kdlib.parsing.parse.parse_label` (an answer
  naming no label, or several, is rejected). With ``n > 1`` samples at temperature > 0 the
  label is the majority vote (self-consistency, Wang et al. 2023) and the vote entropy
  says how unsure the teacher is.
- *score*: the log-likelihood of each label name as the assistant's answer; a softmax over
  labels gives probabilities and the label is the argmax. Never rejects, costs one forward
  pass per (text, label). Contextual calibration (Zhao et al. 2021) divides out the bias the
  prompt itself has towards some labels, measured on content-free inputs.

Few-shot prompts put the demonstrations (drawn from the *train* split, never test) as earlier
chat turns after a system message with the instruction, so every prompt shares one prefix:
the local backend computes it once per batch, an API would bill it per call.

Co-annotation: `route` sends the most uncertain items to an expensive annotator (a human
budget, a bigger model); `coannotate` merges the two label sets.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from kdlib.students.metrics import entropy
from kdlib.synthesis import languages

CONTENT_FREE = ("N/A", "", "[MASK]")  # Zhao et al. (2021) use these three


# ----------------------------------------------------------------------------- prompts

def instruction(label_names: Sequence[str], task: str = "", language: str = "en") -> str:
    """The system instruction: what to classify and the allowed answers (worded in `language`,
    `kdlib.synthesis.languages`; the label names are used as given)."""
    words = languages.prompts(language)
    return words["classify"].format(what=task or words["the_text"], labels=", ".join(label_names))


def _turn(text: str, language: str = "en") -> str:
    return languages.prompts(language)["turn"].format(text=text)


def build_prompt(text: str, label_names: Sequence[str], shots: Sequence[tuple[str, str]] = (),
                 task: str = "", language: str = "en", system: str = "", ask: str = "") -> list[dict]:
    """A chat prompt: system instruction, then one (user text, assistant label) turn pair per shot,
    then the text to label. ``shots=()`` gives the zero-shot prompt. `system` replaces the instruction
    (another phrasing, `kdlib.synthesis.prompting`); `ask` is appended to the last turn only (e.g. "reason
    first"), so the demonstrations stay bare (text, label) pairs."""
    messages = [{"role": "system", "content": system or instruction(label_names, task, language)}]
    for demo_text, demo_label in shots:
        if demo_label not in label_names:
            raise ValueError(f"demonstration label {demo_label!r} is not one of {list(label_names)}")
        messages += [{"role": "user", "content": _turn(demo_text, language)},
                     {"role": "assistant", "content": demo_label}]
    last = _turn(text, language) + (f"\n{ask}" if ask else "")
    return messages + [{"role": "user", "content": last}]


def draw_shots(train, k: int, seed: int = 0) -> list[tuple[str, str]]:
    """k demonstrations per class from a train split (a `datasets.Dataset`), in a seeded order.

    The order is shuffled rather than grouped by class: a small model copies the label of the
    last demonstration (recency bias, Zhao et al. 2021), so a block of one class at the end
    would push every answer towards it.
    """
    from kdlib.registry import data

    if k == 0:
        return []
    picked = data.k_shot(train, k, seed)
    names = data.label_names(train)
    pairs = [(t, names[y]) for t, y in zip(picked["text"], picked["label"])]
    order = np.random.default_rng(seed).permutation(len(pairs))
    return [pairs[i] for i in order]


# ----------------------------------------------------------------------------- voting and uncertainty

@dataclass(frozen=True)
class Pool:
    """What an annotation experiment starts from: demonstrations and a disjoint pool of unlabelled items,
    both from train, with the pool's gold labels kept aside for scoring only."""
    demos: list[tuple[str, str]]    # (text, label) demonstrations, `shots` per class
    texts: list[str]                # the pool, annotated by the methods
    gold: list[str]                 # its hidden gold labels
    order: list[int]                # the seeded permutation of train the pool was drawn from (first items)

    @property
    def demo_rows(self) -> list[dict]:
        return [{"text": t, "label": lab} for t, lab in self.demos]


def draw_pool(train, shots: int, size: int, seed: int = 0) -> Pool:
    """`shots` demonstrations per class and `size` pool items from a seeded permutation of `train`, never the
    same text in both."""
    names = train.features["label"].names
    demos = draw_shots(train, shots, seed=seed)
    shown = {t for t, _ in demos}
    order = [int(i) for i in np.random.default_rng(seed).permutation(len(train))]
    idx = [i for i in order[:size + len(demos)] if train[i]["text"] not in shown][:size]
    pool = train.select(idx)
    return Pool(demos, list(pool["text"]), [names[y] for y in pool["label"]], order)


def majority_vote(votes: Sequence[str | None], label_names: Sequence[str]) -> tuple[str | None, np.ndarray]:
    """(winning label, vote shares over `label_names`) of one item's parsed votes.

    Rejected votes (None) do not count. Ties go to the label voted first, so the result
    depends only on the votes. No valid vote: (None, uniform shares).
    """
    valid = [v for v in votes if v is not None]
    if not valid:
        return None, np.full(len(label_names), 1.0 / len(label_names))
    counts = Counter(valid)
    top = max(counts.values())
    winner = next(v for v in valid if counts[v] == top)
    shares = np.array([counts.get(name, 0) for name in label_names], dtype=np.float64) / len(valid)
    return winner, shares


@dataclass
class Annotation:
    """Labels of one method for a list of texts, with what it cost and how sure it was."""
    method: str
    labels: list[str | None]           # None: rejected (no parseable answer)
    probs: np.ndarray                  # (n, C): label probabilities or vote shares
    uncertainty: np.ndarray            # (n,): entropy in nats (vote entropy for generate)
    raw: list[list[str]] = field(default_factory=list)   # teacher outputs per item (generate only)
    tokens: int = 0                    # teacher tokens this method needs (cache hits included)
    tokens_spent: int = 0              # tokens really computed in this run (cache misses)


def _tokens(ledger) -> tuple[int, int]:
    s = ledger.summary()
    return int(s["tokens_without_cache"]), int(s["tokens_spent"])


def annotate_generate(teacher, texts: Sequence[str], label_names: Sequence[str],
                      shots: Sequence[tuple[str, str]] = (), n: int = 1, seed: int = 0,
                      temperature: float = 0.7, max_new_tokens: int = 5, task: str = "",
                      method: str = "generate", decoding: dict | None = None, structured: bool = False,
                      language: str = "en", per_text_shots: Sequence[Sequence[tuple[str, str]]] | None = None,
                      reason_tokens: int = 0) -> Annotation:
    """Ask the teacher for each text's label; ``n > 1`` samples at `temperature` and takes the
    majority vote (self-consistency), ``n == 1`` decodes greedily. `decoding` adds or overrides
    generation knobs (`kdlib.teachers.decoding.STRATEGIES`: min_p, typical_p, adaptive_temperature, contrastive).

    Tokens are counted on a private ledger, so each method's cost is its own. `structured` constrains the
    answer to one of the label names (a grammar locally; an endpoint gets the schema {"enum": names}).

    `per_text_shots` gives each text its own demonstrations (e.g. its nearest neighbours, KATE) instead of the
    shared `shots`. ``reason_tokens > 0`` is chain-of-thought labelling: the teacher first writes a reason of at
    most that many tokens, then the label, as {"reason": ..., "label": ...} (held to that schema with
    `structured`; read from free text otherwise, `reasoned_label`); with ``n > 1`` the labels of the sampled
    reasoning paths vote (self-consistency over reasons, Wang et al. 2023).
    """
    if per_text_shots is not None and len(per_text_shots) != len(texts):
        raise ValueError(f"per_text_shots must give one list of demonstrations per text ({len(texts)}), "
                         f"got {len(per_text_shots)}")
    t = teacher.with_cache(teacher.cache)
    ask = REASON_ASK if reason_tokens else ""
    demos = per_text_shots if per_text_shots is not None else [shots] * len(texts)
    prompts = [build_prompt(x, label_names, d, task, language, ask=ask) for x, d in zip(texts, demos)]
    knobs = {"temperature": temperature if n > 1 else 0.0, **(decoding or {})}
    if structured or reason_tokens:
        from kdlib.teachers.structured import json_schema

        if reason_tokens:
            knobs["grammar"] = json_schema(reason_schema(label_names), compact=True, string_max_tokens=reason_tokens)
        else:
            knobs["grammar"] = json_schema({"enum": list(label_names)})
    budget = reason_tokens + 8 + max(len(name) for name in label_names) if reason_tokens else max_new_tokens
    stop = [] if reason_tokens else ["\n"]
    outs = t.texts(prompts, n=n, seed=seed, max_new_tokens=budget, stop=stop, **knobs)
    from kdlib.parsing.parse import parse_label

    read = (lambda a: reasoned_label(a, list(label_names))) if reason_tokens else (
        lambda a: parse_label(a, list(label_names)))
    labels, shares, raw = [], [], []
    for i in range(len(texts)):
        answers = outs[i * n:(i + 1) * n]
        label, share = majority_vote([read(a) for a in answers], label_names)
        labels.append(label)
        shares.append(share)
        raw.append(answers)
    probs = np.array(shares).reshape(len(texts), len(label_names))
    unc = entropy(probs)
    unc[[lab is None for lab in labels]] = np.log(len(label_names))  # nothing parsed: maximally unsure
    return Annotation(method, labels, probs, unc, raw, *_tokens(t.ledger))


# Chain-of-thought labelling: the reason comes before the label, so the label is conditioned on it.
REASON_ASK = "First give a one-sentence reason, then the label."


def reason_schema(label_names: Sequence[str]) -> dict:
    """{"reason": a string, "label": one of the label names}, in that order."""
    return {"type": "object", "additionalProperties": False, "required": ["reason", "label"],
            "properties": {"reason": {"type": "string"}, "label": {"enum": list(label_names)}}}


def reasoned_label(answer: str, label_names: Sequence[str]) -> str | None:
    """The label of a reasoned answer: its JSON "label" field, else the label a "Label:/Answer:" line or the
    text after the reason gives (`kdlib.parsing.parse.parse_label`); None when neither names exactly one.
    Mentions inside the reason ("not negative at all") are not read as the answer when a label field exists."""
    import re

    from kdlib.parsing.parse import match_label, parse_label

    if not isinstance(answer, str):
        return None
    found = re.findall(r'"label"\s*:\s*"([^"]*)"', answer)
    if found:
        return match_label(found[-1], list(label_names))
    return parse_label(answer, list(label_names))


def score_probs(teacher, prompts: Sequence, label_names: Sequence[str]) -> np.ndarray:
    """(n, C) softmax over labels of the summed log-likelihood of each label name as the answer."""
    scores = teacher.score_many(list(prompts), list(label_names))
    logits = np.array([[s.sum_logprob for s in row] for row in scores], dtype=np.float64)
    logits -= logits.max(axis=1, keepdims=True)
    p = np.exp(logits)
    return p / p.sum(axis=1, keepdims=True)


def annotate_score(teacher, texts: Sequence[str], label_names: Sequence[str],
                   shots: Sequence[tuple[str, str]] = (), task: str = "",
                   content_free: Sequence[str] | None = CONTENT_FREE, method: str = "score", language: str = "en",
                   system: str = "") -> tuple[Annotation, Annotation | None]:
    """Label by log-likelihood; returns (raw, calibrated) annotations of the same scores.

    The calibrated one (None when ``content_free`` is None) uses `calibrate` with the label
    probabilities of the same prompt around each content-free input, averaged; its token
    count adds only those few prompts to the raw method's. `system` replaces the instruction (`build_prompt`).
    """
    t = teacher.with_cache(teacher.cache)
    probs = score_probs(t, [build_prompt(x, label_names, shots, task, language, system) for x in texts], label_names)
    raw = Annotation(method, [label_names[i] for i in probs.argmax(1)], probs, entropy(probs),
                     tokens=_tokens(t.ledger)[0], tokens_spent=_tokens(t.ledger)[1])
    if content_free is None:
        return raw, None
    cf = score_probs(t, [build_prompt(x, label_names, shots, task, language, system) for x in content_free],
                     label_names).mean(0)
    cal = calibrate(probs, cf)
    calibrated = Annotation(method + "+cal", [label_names[i] for i in cal.argmax(1)], cal, entropy(cal),
                            tokens=_tokens(t.ledger)[0], tokens_spent=_tokens(t.ledger)[1])
    return raw, calibrated


def annotate_score_ensemble(teacher, texts: Sequence[str], label_names: Sequence[str],
                            shots: Sequence[tuple[str, str]] = (), variants: Sequence[tuple[str, Sequence[str]]] = (),
                            task: str = "", method: str = "score ensemble") -> Annotation:
    """Calibrated label scoring averaged over prompt variants: an instruction/verbalizer ensemble.

    Each variant is (instruction template, label words): the template takes ``{what}`` (the text kind) and
    ``{labels}`` (the words, comma-separated), "" keeps the default instruction; the words, one per label in
    `label_names` order, are what the teacher is asked to answer and what is scored (the demonstrations are
    shown with them too), empty keeps the label names. Each variant's probabilities are calibrated on its own
    content-free inputs (`calibrate`) before the mean, so a variant's bias towards a word does not leak into
    the average. Tokens are the sum of the variants'.
    """
    if not variants:
        raise ValueError("an ensemble needs at least one (instruction, label words) variant")
    words_of = [list(words) if words else list(label_names) for _, words in variants]
    for words in words_of:
        if len(words) != len(label_names) or len(set(words)) != len(words):
            raise ValueError(f"label words {words} must name each of {list(label_names)} once, in order")
    probs, tokens, spent = [], 0, 0
    for (template, _), words in zip(variants, words_of):
        to_word = dict(zip(label_names, words))
        system = template.format(what=task or "the text", labels=", ".join(words)) if template else ""
        _, cal = annotate_score(teacher, texts, words, [(x, to_word[y]) for x, y in shots], task, system=system)
        probs.append(cal.probs)
        tokens, spent = tokens + cal.tokens, spent + cal.tokens_spent
    mean = np.mean(probs, axis=0)
    return Annotation(method, [label_names[i] for i in mean.argmax(1)], mean, entropy(mean), tokens=tokens,
                      tokens_spent=spent)


def calibrate(probs, content_free_probs) -> np.ndarray:
    r"""Contextual calibration (Zhao et al., 2021, "Calibrate Before Use").

    With p̂ the label probabilities of an input and p̂_cf those of a content-free input
    ("N/A", "", "[MASK]", averaged) under the same prompt,

        W = diag(p̂_cf)^{-1},   q̂ = normalise(W p̂),   i.e.  q̂_c = (p̂_c / p̂_cf,c) / Σ_j p̂_j / p̂_cf,j

    so a prompt that already leans towards label c with no content is corrected by 1/p̂_cf,c.
    (The paper writes softmax(W p̂ + b) with b = 0; its code, like this function, renormalises.
    Both give the same argmax.) Shapes: probs (n, C) or (C,), content_free_probs (C,).
    """
    p = np.asarray(probs, dtype=np.float64)
    cf = np.asarray(content_free_probs, dtype=np.float64)
    if cf.ndim != 1 or p.shape[-1] != cf.shape[0]:
        raise ValueError(f"content_free_probs must have shape ({p.shape[-1]},), got {cf.shape}")
    if np.any(cf <= 0):
        raise ValueError("content_free_probs must be > 0 for every label")
    q = p / cf
    return q / q.sum(axis=-1, keepdims=True)


# ----------------------------------------------------------------------------- co-annotation

def route(uncertainty, budget_fraction: float) -> np.ndarray:
    """Boolean mask of the round(budget_fraction * n) most uncertain items (ties: earlier item first)."""
    if not 0.0 <= budget_fraction <= 1.0:
        raise ValueError(f"budget_fraction must be in [0, 1], got {budget_fraction}")
    u = np.asarray(uncertainty, dtype=np.float64)
    k = int(round(budget_fraction * len(u)))
    mask = np.zeros(len(u), dtype=bool)
    mask[np.argsort(-u, kind="stable")[:k]] = True
    return mask


def random_route(n: int, budget_fraction: float, seed: int = 0) -> np.ndarray:
    """The baseline: the same number of items as `route`, chosen at random."""
    if not 0.0 <= budget_fraction <= 1.0:
        raise ValueError(f"budget_fraction must be in [0, 1], got {budget_fraction}")
    mask = np.zeros(n, dtype=bool)
    mask[np.random.default_rng(seed).permutation(n)[:int(round(budget_fraction * n))]] = True
    return mask


def coannotate(cheap: Sequence[str | None], expensive: Sequence[str], mask) -> list[str | None]:
    """The expensive label where `mask` is True, the cheap one elsewhere."""
    return [e if m else c for c, e, m in zip(cheap, expensive, np.asarray(mask, dtype=bool))]


def routing_curve(cheap: Sequence[str | None], uncertainty, expensive: Sequence[str], gold: Sequence[str],
                  reference: Sequence[str], label_names: Sequence[str], fractions: Sequence[float],
                  cost: Callable[[int], float], seed: int = 0, repeats: int = 5):
    """Co-annotation swept over routed fractions: label accuracy when the most uncertain items go to the
    expensive annotator, against the same number routed at random (mean of `repeats` draws). One row per
    fraction and routing, with the uncertainty threshold and `cost(n_routed)`."""
    import pandas as pd

    unc, rows = np.asarray(uncertainty, dtype=np.float64), []
    for f in sorted(set(fractions)):
        mask = route(unc, f)
        shared = {"fraction": f, "threshold": float(unc[mask].min()) if mask.any() else float("inf"),
                  "cost": cost(int(mask.sum()))}
        acc = label_quality(coannotate(cheap, expensive, mask), gold, reference, label_names)["accuracy"]
        rand = [label_quality(coannotate(cheap, expensive, random_route(len(gold), f, seed=seed + r)), gold, reference,
                              label_names)["accuracy"] for r in range(repeats)]
        rows += [{**shared, "routing": "by uncertainty", "label_accuracy": acc},
                 {**shared, "routing": "random", "label_accuracy": float(np.mean(rand))}]
    return pd.DataFrame(rows)


# ----------------------------------------------------------------------------- comparing strategies

def compare_strategies(teacher, texts: Sequence[str], label_names: Sequence[str], shots, strategies: Sequence[str],
                       *, gold: Sequence[str], reference: Sequence[str], n_votes: int = 5, temperature: float = 0.7,
                       max_new_tokens: int = 5, seed: int = 0, task: str = ""):
    """Label `texts` under each named decoding strategy (`kdlib.teachers.decoding`; sampled ones vote over `n_votes`,
    "[structured]" ones answer within the label set). Returns (annotations by strategy, quality table with
    tokens and wall time, {strategy: why it was skipped}) — a strategy the backend refuses is skipped, not fatal."""
    import pandas as pd

    from kdlib.studies.experiment import run_each
    from kdlib.teachers import decoding

    def run(name):
        knobs = decoding.strategy(name, temperature)
        return annotate_generate(teacher, texts, label_names, shots, n=1 if knobs["temperature"] == 0 else n_votes,
                                 seed=seed, max_new_tokens=max_new_tokens, task=task, method=name, decoding=knobs,
                                 structured=decoding.is_structured(name))

    anns, wall, skipped = run_each(strategies, run)
    rows = [{"strategy": m, **_quality_row(a.labels, gold, reference, label_names), "tokens": a.tokens, "wall_s": wall[m]}
            for m, a in anns.items()]
    return anns, pd.DataFrame(rows, columns=None if rows else ["strategy", "tokens"]), skipped


def annotate_methods(teacher, texts: Sequence[str], label_names: Sequence[str], shots, *, n_votes: int = 5,
                     temperature: float = 0.7, max_new_tokens: int = 5, task: str = "", seed: int = 0,
                     scoring: bool = True) -> tuple[dict, dict]:
    """The annotation methods of notebook 01 on the same texts: zero-shot and few-shot generation (greedy),
    self-consistency (`n_votes` sampled few-shot answers), and, with `scoring`, zero- and few-shot log-likelihood
    scoring with and without contextual calibration. Returns ({method: Annotation}, {method: wall seconds})."""
    import time

    anns, wall = {}, {}
    gen = {"zero-shot gen": dict(shots=(), n=1), "few-shot gen": dict(shots=shots, n=1),
           "self-consistency": dict(shots=shots, n=n_votes, seed=seed, temperature=temperature)}
    for method, kw in gen.items():
        start = time.monotonic()
        anns[method] = annotate_generate(teacher, texts, label_names, kw.pop("shots"), max_new_tokens=max_new_tokens,
                                         task=task, method=method, **kw)
        wall[method] = time.monotonic() - start
    for method, shot_set in (("zero-shot score", ()), ("few-shot score", shots)) if scoring else ():
        start = time.monotonic()
        raw, cal = annotate_score(teacher, texts, label_names, shot_set, task, method=method)
        anns[raw.method], anns[cal.method] = raw, cal
        wall[raw.method] = wall[cal.method] = time.monotonic() - start
    return anns, wall


def _quality_row(labels, gold, reference, label_names) -> dict:
    row = {k: v for k, v in label_quality(labels, gold, reference, label_names).items() if not k.startswith("share/")}
    return {**row, "parse_rate": 1 - row["rejection_rate"]}


def quality_row(name: str, labels, gold, reference, label_names, tokens: int = 0) -> dict:
    """One row of a strategy quality table for labels that cost no teacher call (e.g. the few-shot student)."""
    return {"strategy": name, **_quality_row(labels, gold, reference, label_names), "tokens": tokens, "wall_s": 0.0}


# ----------------------------------------------------------------------------- quality

def label_quality(labels: Sequence[str | None], gold: Sequence[str], reference: Sequence[str],
                  label_names: Sequence[str]) -> dict:
    """Agreement of annotations with the hidden gold labels and with the reference classifier.

    `accuracy` counts a rejected item as wrong (it is lost to the student); `accuracy_kept`
    and `fidelity` (agreement with the full-data reference) are over kept items only.
    `balance` is the normalised entropy of the kept labels (1 = all classes equally often).
    """
    kept = [i for i, lab in enumerate(labels) if lab is not None]
    n = len(labels)
    counts = np.array([sum(labels[i] == name for i in kept) for name in label_names], dtype=np.float64)
    out = {
        "accuracy": sum(labels[i] == gold[i] for i in kept) / n if n else 0.0,
        "accuracy_kept": sum(labels[i] == gold[i] for i in kept) / len(kept) if kept else 0.0,
        "fidelity": sum(labels[i] == reference[i] for i in kept) / len(kept) if kept else 0.0,
        "rejection_rate": 1 - len(kept) / n if n else 0.0,
        "balance": float(entropy(counts / counts.sum()) / np.log(len(label_names))) if kept else 0.0,
    }
    out.update({f"share/{name}": c / max(len(kept), 1) for name, c in zip(label_names, counts)})
    return out


def training_rows(texts: Sequence[str], labels: Sequence[str | None]) -> list[dict]:
    """{"text", "label"} rows for the student, rejected items dropped."""
    return [{"text": t, "label": lab} for t, lab in zip(texts, labels) if lab is not None]
