"""Word tokenisers for NER: a CoNLL-2003-style regex tokeniser, spaCy's rule-based one, and the alignment of
tokens with their character offsets (what projecting entity mentions onto tokens needs).
"""

from __future__ import annotations

import re
from collections.abc import Callable

# CoNLL-2003 style: clitics split off ("Germany 's", "do n't"), dates, numbers, hyphenated
# words and dotted abbreviations kept whole, any other symbol on its own.
_TOKEN = re.compile(r"""
    (?:[^\W\d_]\.){2,}                  # U.S. e.g.
  | (?:Mr|Mrs|Ms|Dr|Prof|St|Mt|Jr|Sr|Gen|Gov|Sen|Rep|Lt|Col|Inc|Ltd|Corp|Co|vs|etc
     |Jan|Feb|Aug|Sept?|Oct|Nov|Dec)\.(?!\w)
  | (?-i:[A-Z]\.(?=\s+[A-Z]))           # an initial: P. Simmons
  | (?-i:[A-Z]+&[A-Z]+|[A-Z]{1,3}\$)     # S&P AT&T C$ US$
  | (?<![\w.])[+-]?\.?\d+(?:[.,:/-]\d+)*(?![-\w])   # 1,000 3.5 .496 +3 1996-08-22 10:30 2-1
  | --+|\.\.\.+|\*\*+                    # -- ... **
  | [^\W_]+(?=n't\b)                    # do|n't
  | n't\b
  | ['’](?:s|re|ve|ll|d|m)\b            # Germany|'s
  | [^\W_]+(?:-[^\W_]+|['’](?!(?:s|re|ve|ll|d|m)\b)[^\W_]+)*   # long-term O'Neill
  | \S
""", re.VERBOSE | re.IGNORECASE)


def simple_tokenize(text: str) -> list[str]:
    """Regex word/punctuation tokeniser in the CoNLL-2003 style.

    >>> simple_tokenize("Germany's long-term plan, agreed on 1996-08-22, didn't cost $1,000.")
    ['Germany', "'s", 'long-term', 'plan', ',', 'agreed', 'on', '1996-08-22', ',', 'did', "n't", 'cost', '$', '1,000', '.']
    """
    return _TOKEN.findall(text)


def spacy_tokenizer(lang: str = "en") -> Callable[[str], list[str]]:
    """spaCy's rule-based tokeniser for `lang` (no model download: `spacy.blank`)."""
    import spacy  # lazily: spaCy takes seconds to import

    nlp = spacy.blank(lang)
    return lambda text: [t.text for t in nlp.tokenizer(text)]


def _tokens_with_offsets(text: str, tokenizer) -> list[tuple[str, int, int]] | None:
    if tokenizer is None:
        return [(m.group(), m.start(), m.end()) for m in _TOKEN.finditer(text)]
    out, pos = [], 0
    for tok in tokenizer(text):
        tok = getattr(tok, "text", tok)  # a spaCy tokenizer returns Token objects
        if not tok.strip():
            continue
        start = text.find(tok, pos)
        if start < 0:  # a tokeniser that rewrites text (PTB quotes) cannot be aligned
            return None
        out.append((tok, start, start + len(tok)))
        pos = start + len(tok)
    return out
