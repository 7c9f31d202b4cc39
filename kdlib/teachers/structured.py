"""Structured generation: constrain a local teacher's tokens to a JSON schema or a Lark grammar, per row.

A small teacher asked for `{"text": ..., "label": ...}` often writes prose, copies the prompt or forgets
a field, and the parser rightly rejects it. Here the grammar decides which tokens may come next, so every
finished answer parses: decoding picks among allowed tokens only, and end-of-sequence is allowed only
where the grammar may end.

Library: llguidance (the Rust engine behind llama.cpp's and vLLM's guidance backend). Measured here
against xgrammar 0.2.9 on SmolLM2's 49,152-token vocabulary, a {text, label} schema, 32 rows, one CPU
thread (measured by hand once while choosing, not a benchmark of record): computing the 32 allowed-token bitmasks took 0.74 ms per step
with llguidance and 0.43 ms with xgrammar — both negligible beside a ~100 ms decode step — but xgrammar
requires torch, transformers and triton (hundreds of MB of CUDA tooling on a CPU box) while llguidance is
one dependency-free wheel. Neither library's CPU "apply the bitmask to the logits" is cheap (llguidance's
78 ms, xgrammar's 2.7 ms, an unpack in torch 8.7 ms per step at batch 32), so `fastgen` does not apply
masks by default: it picks tokens as usual, checks each constrained row's pick against its bitmask (one
bit), and only rows whose pick is not allowed are masked and picked again. For greedy decoding that is
exactly the argmax over allowed tokens; for sampling, "draw once from q, else draw from q restricted to
the allowed set A" gives P(t) = q(t) + (1 - q(A)) q(t) / q(A) = q(t) / q(A): exactly the constrained
distribution. So an answer the grammar allows anyway costs one bit test per row and step, and greedy
constrained output equals unconstrained greedy output whenever the grammar allows the latter.

    grammar = json_schema({"type": "object", ...})        # canonical text; part of cache keys
    constraint = Constraint.for_tokenizer(tokenizer, grammar)
    fastgen.generate(model, prompts, params, constraints=[constraint] * len(prompts))
"""

from __future__ import annotations

import functools
import json
import threading
from collections.abc import Sequence
from dataclasses import dataclass

_KINDS = ("json_schema", "lark")


def json_schema(schema: dict | str, compact: bool = False, string_max_tokens: int = 0) -> str:
    """A grammar spec (canonical JSON text) from a JSON schema; malformed schemas fail here, by name.

    `compact` fixes the layout to one line with ", " and ": " separators (llguidance's x-guidance options):
    a small model given free whitespace can spend its token budget on newlines and indentation, and an
    answer cut by the token limit loses its last items. Servers get the schema without these options.

    `string_max_tokens` > 0 also caps every string at that many tokens (then the layout is compact too): the
    local grammar ends a string once it has used its tokens, so an answer of n strings always closes within
    its budget (`string_budget`), whatever the characters-per-token of what the model writes. llguidance's
    JSON-schema compiler has no such cap but its Lark dialect has (`rule[max_tokens=N]`), so such a schema is
    compiled through `schema_lark` (the subset of JSON schema our recipes use)."""
    if isinstance(schema, str):
        try:
            schema = json.loads(schema)
        except json.JSONDecodeError as exc:
            raise ValueError(f"json_schema is not valid JSON: {exc}") from None
    if not isinstance(schema, dict) or not schema:
        raise ValueError(f"a JSON schema must be a non-empty object, got {schema!r}")
    if string_max_tokens:
        if string_max_tokens < 1:
            raise ValueError(f"string_max_tokens must be >= 1 (0: no cap), got {string_max_tokens}")
        schema_lark(schema, string_max_tokens)  # refuses, by keyword, what the converter does not cover
        schema = {**schema, _TOKEN_CAP: int(string_max_tokens)}
    if compact:
        schema = {**schema, "x-guidance": {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}}
    return json.dumps({"json_schema": schema}, sort_keys=True, ensure_ascii=False)


_TOKEN_CAP = "x-kdlib-string-max-tokens"
# one JSON string character: anything but a quote, a backslash or a control character, or a simple escape
# (not \\/, whose slash would end the Lark regex literal; JSON never needs it)
_JSON_CHAR = r'([^"\\\x00-\x1f]|\\["\\bfnrt])'


def schema_lark(schema: dict, string_max_tokens: int) -> str:
    """A Lark grammar (llguidance's dialect) for the answers `schema` allows, in compact layout, each string
    at most `string_max_tokens` tokens long. Covers objects whose properties are all required (in the
    order of `required`, no others), arrays with item bounds, strings with length bounds, enum and const; any
    other keyword is refused by name rather than silently ignored. The token cap wins over minLength: a string
    cut at its cap may be shorter (the parsers' `min_chars` then rejects it as ``too_short``)."""
    rules: list[str] = []

    def lit(text: str) -> str:
        return json.dumps(text, ensure_ascii=False)

    def expr(node: dict) -> str:
        known = {"type", "properties", "required", "additionalProperties", "items", "minItems", "maxItems",
                 "minLength", "maxLength", "enum", "const", "x-guidance", _TOKEN_CAP, "description", "title"}
        unknown = sorted(set(node) - known)
        if unknown:
            raise ValueError(f"string_max_tokens covers a subset of JSON schema; not {unknown}")
        if "enum" in node or "const" in node:
            values = node["enum"] if "enum" in node else [node["const"]]
            return "(" + " | ".join(lit(json.dumps(v, ensure_ascii=False)) for v in values) + ")"
        kind = node.get("type")
        if kind == "string":
            name = f"string{len(rules)}"
            lo, hi = int(node.get("minLength", 0)), node.get("maxLength")
            rules.append(f"{name}[max_tokens={int(string_max_tokens)}]: /{_JSON_CHAR}{{{lo},{'' if hi is None else int(hi)}}}/")
            return f'"\\"" {name} "\\""'
        if kind == "object":
            props, required = node.get("properties", {}), node.get("required", [])
            if set(required) != set(props) or node.get("additionalProperties", True) is not False:
                raise ValueError("string_max_tokens needs objects whose properties are all required and "
                                 "additionalProperties: false")
            # in `required` order (a list survives the spec's sorted keys; a dict's order does not)
            parts = [f"{lit(json.dumps(key, ensure_ascii=False) + ': ')} {expr(props[key])}" for key in required]
            return '"{" ' + ' ", " '.join(parts) + ' "}"'
        if kind == "array":
            item = expr(node.get("items", {}))
            lo, hi = int(node.get("minItems", 0)), node.get("maxItems")
            rest = f'(", " {item}){{{max(lo - 1, 0)},{"" if hi is None else int(hi) - 1}}}'
            body = f"{item} {rest}" if lo >= 1 else f"({item} {rest})?"
            return f'"[" {body} "]"'
        raise ValueError(f"string_max_tokens covers types string, object and array (and enum/const); "
                         f"not {kind!r}")

    start = expr(schema)
    return "\n".join([f"start: {start}", *rules]) + "\n"


def string_budget(max_new_tokens: int, strings: int, overhead_tokens: int = 4) -> int:
    """Tokens each of `strings` strings may use so that all of them, with `overhead_tokens` of JSON
    punctuation and keys each, fit in `max_new_tokens` (the `string_max_tokens` of `json_schema`)."""
    return max(4, max_new_tokens // max(strings, 1) - overhead_tokens)


def lark(grammar: str) -> str:
    """A grammar spec from a Lark grammar (llguidance's dialect; `start` is the start rule)."""
    if not isinstance(grammar, str) or "start" not in grammar:
        raise ValueError("a Lark grammar must be a string defining the rule 'start'")
    return json.dumps({"lark": grammar}, sort_keys=True, ensure_ascii=False)


def check_spec(spec: str) -> None:
    """Raise ValueError unless `spec` is a grammar spec made by `json_schema` or `lark`."""
    try:
        parsed = json.loads(spec)
    except json.JSONDecodeError:
        parsed = None
    if not isinstance(parsed, dict) or len(parsed) != 1 or next(iter(parsed)) not in _KINDS:
        raise ValueError(f"not a grammar spec: {spec[:80]!r}; make one with kdlib.teachers.structured.json_schema(...) "
                         f"or kdlib.teachers.structured.lark(...)")


def schema_of(spec: str) -> dict | None:
    """The JSON schema inside a grammar spec (what an HTTP server's response_format takes), else None."""
    schema = json.loads(spec).get("json_schema") if spec else None
    return {k: v for k, v in schema.items() if not k.startswith("x-")} if schema else schema


def chars_within(max_new_tokens: int, items: int, overhead_tokens: int = 4, chars_per_token: float = 2.5) -> int:
    """Most characters each of `items` texts may have so that all of them, with their JSON punctuation
    (`overhead_tokens` each), fit in `max_new_tokens`: a schema that allows longer texts lets the answer be
    cut off by the token limit, and a cut answer loses its last items. 2.5 characters per token is on the safe
    side for English subword vocabularies (~4 on average)."""
    return max(16, int(chars_per_token * (max_new_tokens / max(items, 1) - overhead_tokens)))


def sample_schema(label_names: Sequence[str], *, items: int = 0, min_chars: int = 10, max_chars: int = 400,
                  text_key: str = "text", label_key: str = "label") -> dict:
    """The schema of labelled samples: {"text", "label" from the label set}, or a list of `items` of them.

    With items > 0 the answer is {"samples": [...]} of exactly that many (an object at the top: OpenAI's
    structured outputs want one)."""
    one = {"type": "object", "additionalProperties": False, "required": [text_key, label_key],
           "properties": {text_key: {"type": "string", "minLength": min_chars, "maxLength": max_chars},
                          label_key: {"enum": list(label_names)}}}
    if items <= 0:
        return one
    return {"type": "object", "additionalProperties": False, "required": ["samples"],
            "properties": {"samples": {"type": "array", "items": one, "minItems": items, "maxItems": items}}}


def texts_schema(n: int, *, min_chars: int = 10, max_chars: int = 400) -> dict:
    """{"texts": [n strings]}: a list of texts whose label the request already fixed."""
    return {"type": "object", "additionalProperties": False, "required": ["texts"],
            "properties": {"texts": {"type": "array", "minItems": n, "maxItems": n,
                                     "items": {"type": "string", "minLength": min_chars, "maxLength": max_chars}}}}


def markup_grammar(entity_types: Sequence[str], lines: int = 1, max_words: int = 40,
                   require_entity: bool = False, line_max_tokens: int = 0) -> str:
    """A Lark grammar spec for NER markup: `lines` sentences of 3..max_words pieces, each a plain word or
    an entity "[words](TYPE)" with TYPE one of `entity_types` (what `kdlib.parsing.parse_ner` reads).
    `require_entity` makes every line hold at least one entity (for writing new examples, where a line
    with no mark cannot be told from prose; not for marking up a given sentence, which may have none).

    `line_max_tokens` > 0 caps every line at that many tokens, so that `lines` lines always fit in
    lines * (line_max_tokens + 1) tokens, whatever the model writes (a word-count bound cannot promise that:
    a small model's made-up words cost many tokens each; measured on CoNLL-style requests, 4 lines of up
    to 31 words used 231 of 256 tokens on average and a quarter of the requested lines were lost to the cut).
    A capped line is one lexeme (its markup is a regular language), and llguidance ends a lexeme at its
    cap: a line cut inside an entity leaves it unclosed, which `kdlib.parsing.parse_ner` drops with the words after it.
    With `require_entity` the first entity opens after at most as many words as the cap surely holds, so every
    capped line carries markup (a line cut before its first mark would read as prose and be lost)."""
    if not entity_types or lines < 1 or max_words < 3:
        raise ValueError("markup_grammar needs at least one entity type, one line and max_words >= 3")
    if line_max_tokens < 0:
        raise ValueError(f"line_max_tokens must be >= 0 (0: no cap), got {line_max_tokens}")
    sentence = " \"\\n\" ".join(["sentence"] * lines)
    if line_max_tokens:
        # a word starts with a letter or digit (or is a run of at most two punctuation marks: ".", ",", "--");
        # an entity's words start with a letter or digit: "[:::](LOC)" is debris, not an entity
        name = r"[\p{L}\p{N}][^\s\[\]()\/]{0,19}"
        word = rf"({name}|[^\s\[\]()\/\p{{L}}\p{{N}}]{{1,2}})"
        entity = rf"\[{name}( {name}){{0,3}}\]\(({'|'.join(_regex_literal(t) for t in entity_types)})\)"
        piece = f"({word}|{entity})"
        if require_entity:  # the entity opens within the cap even after the longest words (<= 21 tokens each
            lead = max(0, min(3, (max_words - 1) // 2, (line_max_tokens - 2) // 21))  # with their space)
            body = f"({piece} ){{0,{lead}}}{entity}( {piece}){{2,{max_words - 1 - lead}}}"
        else:
            body = f"{piece}( {piece}){{2,{max_words - 1}}}"
        return lark(f"start: {sentence}\nsentence[max_tokens={int(line_max_tokens)}]: /{body}/\n")
    types = " | ".join(json.dumps(t) for t in entity_types)
    if require_entity:
        half = (max_words - 1) // 2
        body = f'(piece " "){{0,{half}}} entity (" " piece){{1,{max_words - 1 - half}}}'
    else:
        body = f'piece (" " piece){{2,{max_words - 1}}}'
    grammar = rf"""start: {sentence}
sentence: {body}
piece: WORD | entity
entity: "[" WORD (" " WORD){{0,5}} "](" etype ")"
etype: {types}
WORD: /[^\s\[\]()]{{1,30}}/
"""
    return lark(grammar)


def _regex_literal(text: str) -> str:
    """`text` matched literally inside a Lark regex (Rust regex syntax; "/" escaped for the Lark literal)."""
    if "\n" in text:
        raise ValueError(f"an entity type cannot hold a newline: {text!r}")
    return "".join("\\" + c if c in r"\.+*?()|[]{}^$#&-~/" else c for c in text)


def copy_markup_grammar(tokens: Sequence[str], entity_types: Sequence[str]) -> str:
    """A Lark grammar spec for marking up one given sentence: all its tokens in order, space-separated, any
    run of consecutive tokens optionally wrapped as "[tokens](TYPE)". Every answer it allows projects back
    onto the tokens (`kdlib.synthesis.labeling_ner`), so a constrained markup copy always parses.

    Rules per position i < n-1 (the last drops the continuation):
        p_i = w_i " " p_{i+1}  |  "[" e_i                             (outside an entity)
        e_i = w_i "](" etype ")" " " p_{i+1}  |  w_i " " e_{i+1}        (inside one: close it, or extend it)
    so the grammar has O(n) rules."""
    if not tokens or not entity_types:
        raise ValueError("copy_markup_grammar needs a non-empty sentence and at least one entity type")
    n = len(tokens)
    words = [json.dumps(str(t), ensure_ascii=False) for t in tokens]
    rules = ["start: p0", f"etype: {' | '.join(json.dumps(t) for t in entity_types)}"]
    for i, w in enumerate(words):
        if i + 1 < n:
            rules.append(f'p{i}: {w} " " p{i + 1} | "[" e{i}')
            rules.append(f'e{i}: {w} "](" etype ")" " " p{i + 1} | {w} " " e{i + 1}')
        else:
            rules.append(f'p{i}: {w} | "[" e{i}')
            rules.append(f'e{i}: {w} "](" etype ")"')
    return lark("\n".join(rules) + "\n")


# ----------------------------------------------------------------------------- compiled constraints

_TOKENIZERS: dict[int, object] = {}
_LOCK = threading.Lock()


def _ll_tokenizer(tokenizer):
    """llguidance's view of an HF fast tokenizer, built once per tokenizer object (~0.5 s)."""
    import llguidance.hf

    with _LOCK:
        key = id(tokenizer)
        entry = _TOKENIZERS.get(key)
        if entry is None or entry[0] is not tokenizer:
            entry = (tokenizer, llguidance.hf.from_tokenizer(tokenizer))
            _TOKENIZERS[key] = entry
        return entry[1]


@functools.lru_cache(maxsize=256)
def _compiled(spec: str) -> str:
    """llguidance's grammar text for a spec (pure: compiled once per spec, not once per generation batch)."""
    import llguidance

    parsed = json.loads(spec)
    kind = next(iter(parsed))
    if kind == "json_schema" and _TOKEN_CAP in parsed[kind]:
        return llguidance.LLMatcher.grammar_from_lark(schema_lark(parsed[kind], parsed[kind][_TOKEN_CAP]))
    if kind == "json_schema":
        return llguidance.LLMatcher.grammar_from_json_schema(json.dumps(parsed[kind]))
    if kind == "lark":
        return llguidance.LLMatcher.grammar_from_lark(parsed[kind])
    raise ValueError(f"unknown grammar kind {kind!r}; known: {', '.join(_KINDS)}")


@dataclass(frozen=True)
class Constraint:
    """A grammar bound to one tokenizer; `matcher()` makes the per-row state."""
    spec: str
    tokenizer: object       # llguidance.LLTokenizer
    grammar: str            # llguidance's compiled grammar text
    vocab_size: int

    @classmethod
    def for_tokenizer(cls, hf_tokenizer, spec: str) -> Constraint:
        import llguidance

        lt = _ll_tokenizer(hf_tokenizer)
        grammar = _compiled(spec)
        message = llguidance.LLMatcher.validate_grammar(grammar, lt)  # "" when valid
        if message:
            raise ValueError(f"the grammar does not compile: {message}")
        return cls(spec, lt, grammar, lt.vocab_size)

    def matcher(self) -> RowMatcher:
        import llguidance

        return RowMatcher(llguidance.LLMatcher(self.tokenizer, self.grammar), self.vocab_size)


class RowMatcher:
    """One row's grammar state: which tokens may come next, and the tokens consumed so far."""

    def __init__(self, matcher, vocab_size: int):
        self.matcher, self.vocab_size = matcher, vocab_size
        self.words = (vocab_size + 31) // 32
        self._mask = None  # numpy int32 words, computed on first use per step
        self.failure = ""  # why the grammar gave up mid-row (the row then stops; its text fails to parse)

    def allowed_bits(self):
        """The packed allowed-token bitmask for the next token (int32 words, bit i of word w = token 32w+i)."""
        if self._mask is None:
            import numpy as np

            self._mask = np.frombuffer(self.matcher.compute_bitmask(), dtype=np.uint8).view(np.int32)
        return self._mask

    def allows(self, token: int) -> bool:
        if token >= self.vocab_size:
            return False
        return bool((int(self.allowed_bits()[token >> 5]) >> (token & 31)) & 1)

    def allowed(self, width: int):
        """Bool tensor [width] of allowed tokens (ids past the grammar's vocabulary are never allowed)."""
        import numpy as np
        import torch

        bits = np.unpackbits(self.allowed_bits().view(np.uint8), bitorder="little")[:width]
        out = torch.zeros(width, dtype=torch.bool)
        out[:len(bits)] = torch.from_numpy(bits.astype(bool))
        return out

    def consume(self, token: int) -> None:
        """Advance by `token`. If the grammar cannot (its parser gave up, e.g. llguidance's Earley row limit on
        a huge grammar), the row is stopped, not the batch: its unfinished text is rejected by the parser like
        any malformed answer, and a warning names the cause once per row."""
        self._mask = None
        if self.failure:
            return
        if not self.matcher.consume_token(token):
            import warnings

            self.failure = f"the grammar refused token {token}: {(self.matcher.get_error() or '').splitlines()[0][:300]}"
            warnings.warn(f"structured generation stopped one row early: {self.failure}", RuntimeWarning, stacklevel=2)

    @property
    def done(self) -> bool:
        """The grammar allows nothing more, or gave up (the row must stop)."""
        return bool(self.failure) or self.matcher.is_stopped()

    @property
    def error(self) -> str:
        return self.matcher.get_error() or ""


def constrain(logits, picked, matchers: Sequence[RowMatcher | None], repick):
    """Tokens per row that obey each row's grammar: a row whose `picked` token is allowed keeps it; the
    others get `repick(rows, masked_logits)` over their allowed tokens only (see the module docstring for
    why this is exactly constrained decoding). Consumes the final token in every matcher.
    Shapes: logits [rows, vocab], picked [rows]; returns [rows]."""
    import torch

    tokens = picked.tolist()
    misses = [i for i, m in enumerate(matchers) if m is not None and not m.allows(tokens[i])]
    if misses:
        masks = torch.stack([matchers[i].allowed(logits.shape[-1]) for i in misses]).to(logits.device)
        rows = torch.tensor(misses, device=logits.device)
        masked = logits.index_select(0, rows).masked_fill(~masks, float("-inf"))
        for i, tok in zip(misses, repick(misses, masked, masks).tolist()):
            tokens[i] = int(tok)
    for m, tok in zip(matchers, tokens):
        if m is not None:
            m.consume(tok)
    return torch.tensor(tokens, dtype=picked.dtype, device=picked.device)
