"""Prompts in the data's language, and which language a text is in.

A teacher can be asked about French data in English (the instruction, the label words and the answer stay
English) or in French (instruction, turn prefix and label words translated). Which serves it better is an
empirical question of the multilingual notebook, so the wording lives here, one table per language, and the
labelling and synthesis recipes take a `language` code. English is the lab's default; its strings are the ones
every other notebook has always sent (byte for byte, so cached teacher answers stay valid).

Languages are identified with `py3langid` (a maintained, numpy-only fork of Lui & Baldwin's langid.py, 97
languages, model inside the wheel): a naive-Bayes classifier over byte n-grams that needs no download and
labels a short text in well under a millisecond here. Only the language code is used; on very short texts
(one or two words) any identifier is unreliable, so `language_share` is read as a rate over a pool.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

ENGLISH = "en"

# Per language: the labelling instruction ({what}: the text kind, {labels}: the allowed answers), the prefix of a
# text to label, what a text is called when the task gives no kind, the synthesis request and its answer formats.
PROMPTS: dict[str, dict[str, str]] = {
    "en": {
        "classify": "Classify {what} into exactly one of these labels: {labels}. Answer with the label only.",
        "turn": "Text: {text}",
        "the_text": "the text",
        "write": "Write {n} different examples of {kind} that {description}.",
        "examples": "Here are real examples of such texts:",
        "no_copy": "Write new texts: do not copy the examples.",
        "json": 'Answer with a JSON object {"texts": [...]} holding the texts as strings, and nothing else.',
        "list": "Answer with a numbered list, one text per line, and nothing else.",
        "any_kind": "a short text",
        "any_label": "belongs to the category '{label}'",
    },
    "fr": {
        "classify": "Classe {what} dans exactement une de ces étiquettes : {labels}. Réponds uniquement par "
                    "l'étiquette.",
        "turn": "Texte : {text}",
        "the_text": "le texte",
        "write": "Écris {n} exemples différents de {kind} qui {description}.",
        "examples": "Voici de vrais exemples de tels textes :",
        "no_copy": "Écris de nouveaux textes : ne copie pas les exemples.",
        "json": 'Réponds par un objet JSON {"texts": [...]} contenant les textes sous forme de chaînes, et rien '
                "d'autre.",
        "list": "Réponds par une liste numérotée, un texte par ligne, et rien d'autre.",
        "any_kind": "textes courts en français",
        "any_label": "appartiennent à la catégorie « {label} »",
    },
}

# Translating a text to English (translate-then-label), asked in English: the teacher's strongest language.
TRANSLATE = ("Translate the following text into English. Answer with the translation only, on one line.\n\n"
             "{text}")

# Label words in another language; a label without a word here keeps its name (an unseen dataset's labels).
LABEL_WORDS: dict[str, dict[str, str]] = {
    "fr": {"negative": "négatif", "positive": "positif", "neutral": "neutre"},
}

# What a text of a known non-English dataset is, and what each label means, in the data's language.
KNOWN_TASKS: dict[str, tuple[str, str, dict[str, str]]] = {
    "allocine_fr": ("fr", "critiques de films en français (une ou deux phrases)", {
        "negative": "expriment une opinion négative sur le film",
        "positive": "expriment une opinion positive sur le film"}),
    "tweet_sentiment_fr": ("fr", "tweets en français", {
        "negative": "expriment un sentiment négatif", "neutral": "sont neutres, sans sentiment marqué",
        "positive": "expriment un sentiment positif"}),
}


def prompts(language: str) -> dict[str, str]:
    """The wording table of `language`, or a clear error naming the languages that have one."""
    try:
        return PROMPTS[language]
    except KeyError:
        raise ValueError(f"no prompts in language {language!r}; available: {', '.join(PROMPTS)} "
                         "(add a table to kdlib.synthesis.languages.PROMPTS)") from None


def label_words(label_names: Sequence[str], language: str) -> list[str]:
    """The words a prompt in `language` uses for each label (the names themselves in English or when unknown).
    Distinct words are required: two labels sharing a word could not be told apart in the answer."""
    table = LABEL_WORDS.get(language, {})
    words = [table.get(name, name) for name in label_names]
    if len(set(words)) != len(words):
        raise ValueError(f"label words {words} in {language!r} are not distinct for labels {list(label_names)}")
    return words


def identify(texts: Sequence[str]) -> list[str]:
    """The ISO 639-1 code py3langid gives each text ("" for an empty one)."""
    import py3langid

    return [py3langid.classify(t)[0] if t.strip() else "" for t in texts]


def language_share(texts: Sequence[str], language: str) -> float:
    """Share of `texts` identified as `language` (NaN for no texts)."""
    found = identify(texts)
    return sum(code == language for code in found) / len(found) if found else float("nan")


def data_language(texts: Sequence[str]) -> str:
    """The most common language of a sample of a dataset's texts: what its prompts should be written in."""
    counts = Counter(code for code in identify(texts) if code)
    if not counts:
        raise ValueError("cannot tell the data's language: every text is empty")
    return counts.most_common(1)[0][0]


def generic_descriptions(label_names: Sequence[str], language: str) -> tuple[str, dict[str, str]]:
    """(text kind, label descriptions) for a dataset nobody described, worded in `language` (with its label
    words), so that a teacher is asked for data in the data's language even on a dataset it has never seen."""
    words = prompts(language)
    return words["any_kind"], {name: words["any_label"].format(label=word)
                               for name, word in zip(label_names, label_words(label_names, language))}
