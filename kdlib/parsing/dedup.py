"""Drop exact and near-duplicate examples, and count leaks into a reference set.

Greedy and order-preserving: an example is kept unless it matches a reference example
(reason ``test_leak`` by default), an earlier kept example after normalisation
(``duplicate_exact``), or is near an earlier kept one (``duplicate_near``). "Near" is
one of two measures:

- ``rougeL``: ROUGE-L F1 = 2·LCS/(|a|+|b|) over words (the `rouge-score` library) —
  the Self-Instruct novelty measure. Every kept pair is a candidate, so the cost is
  O(n²) LCS computations, cut down by a cheap bag-of-words bound; fine up to a few
  thousand examples (and a reference set of similar size).
- ``minhash``: Jaccard similarity of word n-gram sets, with MinHash LSH (`datasketch`)
  to find candidates in ~O(n); for tens of thousands of examples or a large test split.
  Candidates are verified with the exact Jaccard, so nothing is dropped by hash
  accident, but LSH may miss a few pairs near the threshold (recall is probabilistic).

A pair is "near" when its similarity is >= `near_threshold` (up to 1e-9, so that a
score computed as 0.7999999 for an exact 0.8 is not let through by float noise).
Words are lower-cased Unicode ``\\w+`` runs: unlike rouge-score's default tokeniser,
accented letters count, so French data works.
"""

from __future__ import annotations

import math
import re
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable

from kdlib.parsing.parse import ParseReport, normalise_text

_EPS = 1e-9
METHODS = ("rougeL", "minhash")


def words(text: str) -> list[str]:
    """Lower-cased word tokens used for both exact keys and similarity.

    >>> words("  It's a GREAT film -- Très bien!")
    ['it', 's', 'a', 'great', 'film', 'très', 'bien']
    """
    return re.findall(r"\w+", normalise_text(text).casefold())


def _text_of(example, key) -> str:
    if callable(key):
        value = key(example)
    elif isinstance(example, dict):
        value = example.get(key, example.get("tokens"))  # NER examples: the token sequence
    else:
        value = example
    if isinstance(value, list | tuple):
        value = " ".join(map(str, value))
    return value if isinstance(value, str) else ("" if value is None else str(value))


def _exact_key(toks: list[str], text: str) -> str:
    # Case, whitespace and punctuation do not make a new example; "!!!" still keys as itself.
    return " ".join(toks) if toks else normalise_text(text).casefold()


_SCORER = None


def rouge_l(a: str, b: str) -> float:
    """ROUGE-L F1 of two texts over `words`, through the rouge-score library.

    >>> rouge_l("the cat sat on the mat", "the cat sat on a mat")
    0.8333333333333334
    """
    return _rouge_tokens(words(a), words(b))


def _rouge_tokens(a: list[str], b: list[str]) -> float:
    global _SCORER
    if _SCORER is None:  # built on first use: rouge-score pulls in nltk at import
        from rouge_score import rouge_scorer, tokenizers

        class _Presplit(tokenizers.Tokenizer):
            def tokenize(self, text):
                return text.split()  # already `words`, joined by spaces

        _SCORER = rouge_scorer.RougeScorer(["rougeL"], tokenizer=_Presplit())
    if not a or not b:
        return 0.0
    return _SCORER.score(" ".join(a), " ".join(b))["rougeL"].fmeasure


def _shared(a: Counter, b: Counter) -> int:
    """Size of the multiset intersection (what Counter's & computes, without building it)."""
    if len(a) > len(b):
        a, b = b, a
    return sum(min(c, b[w]) for w, c in a.items() if w in b)


class _RougeIndex:
    """Texts seen so far; `near(item)` says whether any has ROUGE-L F1 >= threshold.

    F1 = 2·LCS/(n+m) and LCS <= shared words, so a match shares at least
    need = t·n/(2-t) of the query's n words, hence one of its n-need+1 rarest words:
    an inverted index over those finds the candidates, a shared-word bound prunes
    them, and only the rest go to rouge-score's pure-Python, quadratic LCS.
    """

    def __init__(self, threshold: float):
        self.threshold, self.items, self.postings = threshold - _EPS, [], defaultdict(list)

    @staticmethod
    def prepare(toks: list[str]):
        return toks, Counter(toks)

    def add(self, item) -> None:
        for word in item[1]:
            self.postings[word].append(len(self.items))
        self.items.append(item)

    def near(self, item) -> bool:
        (toks, bag), t = item, self.threshold
        n = len(toks)
        if not n or not self.items:
            return False
        need = math.ceil(t * n / (2 - t))
        rare_first = sorted(toks, key=lambda w: (len(self.postings.get(w, ())), w))
        candidates = {j for w in rare_first[:max(n - need + 1, 1)] for j in self.postings.get(w, ())}
        for j in sorted(candidates):  # sorted: the same pairs are scored in the same order every run
            other, other_bag = self.items[j]
            if 2 * _shared(bag, other_bag) / (n + len(other)) >= t and _rouge_tokens(toks, other) >= t:
                return True
        return False


class _MinHashIndex:
    """MinHash LSH over word n-gram sets; `near` verifies candidates with exact Jaccard."""

    def __init__(self, threshold: float, ngram: int = 1, num_perm: int = 128):
        from datasketch import MinHash, MinHashLSH  # optional dependency, only for method="minhash"

        self.threshold, self.ngram, self.num_perm = threshold - _EPS, ngram, num_perm
        # One seeded set of permutations for every text: drawing them per text dominates run time.
        self.template = MinHash(num_perm=num_perm, seed=1)
        # A lower LSH threshold than the verified one trades a little speed for recall.
        self.lsh = MinHashLSH(threshold=min(max(threshold - 0.1, 0.1), 0.95), num_perm=num_perm)
        self.sets: list[set] = []

    def prepare(self, toks: list[str]):
        from datasketch import MinHash

        n = min(self.ngram, len(toks))
        shingles = {" ".join(toks[i:i + n]) for i in range(len(toks) - n + 1)} if toks else set()
        m = MinHash(num_perm=self.num_perm, seed=1, permutations=self.template.permutations,
                    scheme=self.template.scheme)
        m.update_batch([s.encode("utf-8") for s in sorted(shingles)])
        return shingles, m

    def add(self, item) -> None:
        shingles, m = item
        if shingles:
            self.lsh.insert(len(self.sets), m)
        self.sets.append(shingles)

    def near(self, item) -> bool:
        shingles, m = item
        if not shingles or not self.sets:
            return False
        for j in sorted(self.lsh.query(m)):
            other = self.sets[j]
            if len(shingles & other) / len(shingles | other) >= self.threshold:
                return True
        return False


def _index(method: str, threshold: float, ngram: int):
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    return _RougeIndex(threshold) if method == "rougeL" else _MinHashIndex(threshold, ngram)


def _filter(examples: list, key, threshold: float | None, method: str, against: Iterable | None,
            reasons: dict, ngram: int) -> tuple[list, ParseReport]:
    if threshold is not None and not 0 < threshold <= 1:
        raise ValueError(f"near_threshold must be in (0, 1] or None, got {threshold}")
    near = threshold is not None
    # Both indexes are built alike, so one prepared item (tokens, MinHash) serves both.
    refs, kept = (_index(method, threshold, ngram), _index(method, threshold, ngram)) if near else (None, None)
    report = ParseReport(n_inputs=len(examples))
    ref_keys, seen = set(), set()
    for ref in against or []:
        text = _text_of(ref, key)
        toks = words(text)
        ref_keys.add(_exact_key(toks, text))
        if near:
            refs.add(refs.prepare(toks))
    for ex in examples:
        text = _text_of(ex, key)
        if not text.strip():  # nothing to compare: not an example (and not a duplicate of one)
            report.reject(ex, "empty_text")
            continue
        toks = words(text)
        k = _exact_key(toks, text)
        item = kept.prepare(toks) if near and k not in ref_keys and k not in seen else None
        if k in ref_keys or (item and refs.near(item)):
            reason = reasons["leak"]  # checked first: a leak matters more than a repeat
        elif k in seen:
            reason = reasons["exact"]
        elif item and kept.near(item):
            reason = reasons["near"]
        else:
            seen.add(k)
            if item:
                kept.add(item)
            report.kept.append(ex)
            continue
        report.reject(text, reason)
    return report.kept, report


def dedup(examples: Iterable, key: str | Callable = "text", near_threshold: float | None = 0.8,
          method: str = "rougeL", against: Iterable | None = None, against_reason: str = "test_leak",
          ngram: int = 1) -> tuple[list, ParseReport]:
    """Keep the first of each group of exact/near duplicates; drop and count matches to `against`.

    `key` names the text field (NER examples fall back to their tokens) or is a function
    of the example; `near_threshold=None` drops exact duplicates only. `against` is a
    reference set (the test split, or the seeds with ``against_reason="seed_copy"``).
    Returns ``(kept, report)``; chain it after parsing with ``parse_report.then(report)``.

    >>> kept, rep = dedup([{"text": "A great film!"}, {"text": "a great film."},
    ...                    {"text": "A truly great film!"}, {"text": "Dull."}],
    ...                   against=[{"text": "dull"}])
    >>> [ex["text"] for ex in kept], rep.summary()["reasons"]
    (['A great film!'], {'duplicate_exact': 1, 'duplicate_near': 1, 'test_leak': 1})
    """
    reasons = {"leak": against_reason, "exact": "duplicate_exact", "near": "duplicate_near"}
    return _filter(list(examples), key, near_threshold, method, against, reasons, ngram)


def novelty_filter(candidates: Iterable, pool: Iterable, threshold: float = 0.7, key: str | Callable = "text",
                   method: str = "rougeL") -> tuple[list, ParseReport]:
    """Self-Instruct's filter: keep a candidate only if its ROUGE-L F1 to the pool and to every
    candidate kept before it is below `threshold`; the rest are counted as ``not_novel``.

    >>> kept, rep = novelty_filter(["Write a poem about the sea.", "Write a poem about the sea!",
    ...                             "List three prime numbers."], pool=["Write a poem about cats."])
    >>> kept, rep.summary()["reasons"]
    (['List three prime numbers.'], {'not_novel': 2})
    """
    reasons = {"leak": "not_novel", "exact": "not_novel", "near": "not_novel"}
    return _filter(list(candidates), key, threshold, method, pool, reasons, 1)
