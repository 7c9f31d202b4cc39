"""Rule-based text augmentation (EDA, Wei & Zou 2019): pure, seeded transforms of one text.

The four operations, each changing about ``alpha * n_words`` words (at least one):
synonym replacement (SR), random insertion of a synonym of a word of the text (RI),
random swap of two words (RS), random deletion with probability ``alpha`` (RD).

Synonyms come from a `SynonymTable`, a plain ``word -> [synonyms]`` mapping, so every
transform is a pure function of (text, rng, table). Two sources build one:

- `embedding_synonyms`: nearest neighbours among whole-word tokens of an encoder's input
  embeddings (default: the student's MiniLM). It works offline, but embedding neighbours
  include antonyms and relatives ("good" -> "bad", "increase" -> "decrease"), so SR can flip
  a sentiment label; notebooks measure that as label fidelity rather than assume it away.
- `wordnet_synonyms`: WordNet lemmas through nltk, the original EDA source, for users who
  have the WordNet data (``python -m nltk.downloader wordnet``); it is not on PyPI, so not here.
"""

from __future__ import annotations

import random
import re
from collections.abc import Iterable, Mapping, Sequence

SynonymTable = Mapping[str, Sequence[str]]
OPS = ("sr", "ri", "rs", "rd")

_WORD = re.compile(r"^[a-z]+$")
# Function words carry grammar, not content: EDA leaves them alone (its own list is NLTK's stop words).
STOP_WORDS = frozenset("""a about above after again against all am an and any are as at be because been before
being below between both but by can did do does doing down during each few for from further had has have having
he her here hers herself him himself his how i if in into is it its itself just me more most my myself no nor not
now of off on once only or other our ours ourselves out over own same she should so some such than that the their
theirs them themselves then there these they this those through to too under until up very was we were what when
where which while who whom why will with you your yours yourself yourselves""".split())


def _n_changes(n_words: int, alpha: float) -> int:
    return max(1, int(alpha * n_words))


def _candidates(words: list[str], table: SynonymTable) -> list[int]:
    return [i for i, w in enumerate(words) if w.lower() not in STOP_WORDS and table.get(w.lower())]


def _match_case(new: str, old: str) -> str:
    return new.capitalize() if old[:1].isupper() else new


def synonym_replace(words: list[str], n: int, rng: random.Random, table: SynonymTable) -> list[str]:
    """Replace up to `n` distinct content words by a random synonym each."""
    out = list(words)
    for i in rng.sample(_candidates(words, table), min(n, len(_candidates(words, table)))):
        out[i] = _match_case(rng.choice(list(table[words[i].lower()])), words[i])
    return out


def random_insert(words: list[str], n: int, rng: random.Random, table: SynonymTable) -> list[str]:
    """Insert a synonym of a random content word at a random position, `n` times."""
    out = list(words)
    for _ in range(n):
        cands = _candidates(out, table)
        if not cands:
            break
        syn = rng.choice(list(table[out[rng.choice(cands)].lower()]))
        out.insert(rng.randint(0, len(out)), syn)
    return out


def random_swap(words: list[str], n: int, rng: random.Random) -> list[str]:
    """Swap two random positions, `n` times."""
    out = list(words)
    if len(out) < 2:
        return out
    for _ in range(n):
        i, j = rng.sample(range(len(out)), 2)
        out[i], out[j] = out[j], out[i]
    return out


def random_delete(words: list[str], p: float, rng: random.Random) -> list[str]:
    """Drop each word with probability `p`; one random word survives if all would go."""
    if len(words) <= 1:
        return list(words)
    kept = [w for w in words if rng.random() > p]
    return kept or [rng.choice(words)]


def eda(text: str, table: SynonymTable, *, alpha: float = 0.1, n_aug: int = 4, seed: int = 0,
        ops: Sequence[str] = OPS) -> list[str]:
    """`n_aug` augmented versions of `text`, cycling through `ops` (EDA's default mix), seeded.

    Words are whitespace tokens, punctuation stays attached (as in EDA's released code, which
    strips it instead). A version equal to the input is dropped, so fewer may come back.
    """
    if not 0 <= alpha <= 1:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    unknown = set(ops) - set(OPS)
    if unknown or not ops:
        raise ValueError(f"ops must be a non-empty subset of {OPS}, got {list(ops)}")
    rng = random.Random(f"{seed}\x00{text}")  # per text: results do not depend on the order of a corpus
    words = text.split()
    if not words:
        return []
    n = _n_changes(len(words), alpha)
    out = []
    for k in range(n_aug):
        op = ops[k % len(ops)]
        if op == "sr":
            new = synonym_replace(words, n, rng, table)
        elif op == "ri":
            new = random_insert(words, n, rng, table)
        elif op == "rs":
            new = random_swap(words, n, rng)
        else:
            new = random_delete(words, alpha, rng)
        joined = " ".join(new)
        if joined != text and joined not in out:
            out.append(joined)
    return out


def augment_rows(rows: Iterable[dict], table: SynonymTable, **kw) -> list[dict]:
    """EDA on labelled rows: every augmented text keeps its source's label (and says where it came from)."""
    return [{"text": t, "label": r["label"], "source": r["text"]} for r in rows for t in eda(r["text"], table, **kw)]


# ----------------------------------------------------------------------------- synonym sources

def embedding_synonyms(model: str | None = None, k: int = 5, min_similarity: float = 0.5,
                       vocabulary: Iterable[str] | None = None) -> dict[str, list[str]]:
    """word -> up to `k` nearest whole-word tokens by cosine of the encoder's input embeddings.

    Only lower-case alphabetic tokens of 3+ letters that are not stop words take part; with
    `vocabulary` (e.g. the words of a training set) only those words get entries, which keeps
    the table small. Neighbours that are inflections of the word (sharing its first 4 letters:
    "movie" -> "movies") are skipped: they change grammar, not wording.
    """
    import torch
    from transformers import AutoModel, AutoTokenizer

    from kdlib.registry.models import ENCODER_ID, resolve

    path = resolve(model or ENCODER_ID).path
    tokenizer = AutoTokenizer.from_pretrained(path)
    weights = AutoModel.from_pretrained(path).get_input_embeddings().weight.detach().float()
    tokens = tokenizer.convert_ids_to_tokens(list(range(weights.shape[0])))
    ids = [i for i, w in enumerate(tokens) if _WORD.match(w) and len(w) > 2 and w not in STOP_WORDS]
    words = [tokens[i] for i in ids]
    unit = torch.nn.functional.normalize(weights[ids], dim=1)
    wanted = set(words) if vocabulary is None else {w.lower() for w in vocabulary} & set(words)
    index = {w: j for j, w in enumerate(words)}
    rows = [index[w] for w in sorted(wanted)]
    table: dict[str, list[str]] = {}
    for start in range(0, len(rows), 1024):  # [1024, V] similarities at a time
        block = rows[start:start + 1024]
        sims, nbrs = (unit[block] @ unit.T).topk(k + 8, dim=1)
        for r, srow, nrow in zip(block, sims.tolist(), nbrs.tolist()):
            w = words[r]
            syn = [words[j] for s, j in zip(srow, nrow) if j != r and s >= min_similarity and words[j][:4] != w[:4]]
            if syn:
                table[w] = syn[:k]
    return table


def wordnet_synonyms(vocabulary: Iterable[str]) -> dict[str, list[str]]:
    """word -> WordNet synonyms (single-word lemmas of all its synsets), EDA's original source."""
    try:
        from nltk.corpus import wordnet

        wordnet.ensure_loaded()
    except LookupError as exc:
        raise LookupError("WordNet data is not installed: run `python -m nltk.downloader wordnet` "
                          "(needs network), or use embedding_synonyms()") from exc
    table = {}
    for w in {v.lower() for v in vocabulary if _WORD.match(v.lower())} - STOP_WORDS:
        syn = sorted({lemma.name().lower() for s in wordnet.synsets(w) for lemma in s.lemmas()} - {w})
        syn = [s for s in syn if _WORD.match(s)]
        if syn:
            table[w] = syn
    return table
