"""Fast batched generation for Hugging Face decoder-only LMs: continuous batching on a per-row KV buffer.

`model.generate` runs a batch until its longest row stops: rows that hit end-of-sequence early sit idle
while their slot still costs a full row of compute, and the batch is left-padded to its longest prompt.
`generate` here keeps `batch_size` rows busy instead. A finished row leaves at once and the next waiting
prompt is prefilled and spliced into the freed row of a preallocated KV buffer, so every decode step
computes only live rows. Rows share one write column `end` of the buffer; a row's tokens sit in columns
`[start, end)` with its own `start`, and explicit `position_ids` and a 2D padding mask make each row see
exactly what it would see alone. Greedy outputs therefore match `model.generate(do_sample=False)` up to
float rounding from different batch shapes (see `bench/bench_generation.py` for the measured match rate).

`SamplingParams` is the whole decoding recipe: logits processors a model's `generation_config` may carry
(repetition penalty, suppressed tokens, ...) are not applied, so compare against `generate` with none.

Sampling draws from one `torch.Generator` per prompt seeded with `seeds[i]`, so a sample depends only on
(prompt, params, seed), never on which prompts shared its batch.

Works with any model whose `DynamicCache(config=...)` is made of plain full-attention `DynamicLayer`s
(Llama, GPT-2, Qwen2, Mistral without sliding window, ...). Sliding-window, linear-attention and other
hybrid caches keep tokens in layouts this buffer does not model, so they fall back to HF `generate`.
"""

from __future__ import annotations

import inspect
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

log = logging.getLogger(__name__)

# Spare buffer columns beyond the longest prompt plus max_new_tokens: the buffer shifts its columns left
# only when `end` reaches capacity, so this many decode steps pass between two shifts at the least.
_SLACK_COLUMNS = 64
# Cost of one forward beyond its tokens, in prefill-token equivalents (every weight is read once per
# forward, plus Python per layer): measured ~20 for SmolLM2-135M on this 2-core CPU (150 ms per forward,
# 7 ms per prefill token, one thread). It steers which shared prefixes are worth caching and how prefill
# groups split to avoid padding; neither choice is sensitive to it.
_FORWARD_OVERHEAD_TOKENS = 24


# ----------------------------------------------------------------------------- public types

@dataclass
class SamplingParams:
    """How to pick tokens. temperature 0 is greedy (argmax); the filters only apply when sampling."""

    max_new_tokens: int = 64
    temperature: float = 0.0        # 0 => greedy
    top_p: float = 1.0
    top_k: int = 0                  # 0 => off
    min_p: float = 0.0              # 0 => off
    typical_p: float = 1.0          # locally typical sampling (Meister et al. 2023); 1 => off
    adaptive_temperature: float = 0.0  # entropy exponent a: see `row_temperatures`; 0 => off
    stop_token_ids: tuple[int, ...] = ()   # in addition to the tokenizer's eos

    def __post_init__(self):
        _check_int("max_new_tokens", self.max_new_tokens, minimum=1)
        _check_float("temperature", self.temperature, "must be >= 0 (0 means greedy)", lambda v: v >= 0)
        _check_float("top_p", self.top_p, "must be in (0, 1]", lambda v: 0 < v <= 1)
        _check_int("top_k", self.top_k, minimum=0)
        _check_float("min_p", self.min_p, "must be in [0, 1]", lambda v: 0 <= v <= 1)
        _check_float("typical_p", self.typical_p, "must be in (0, 1]", lambda v: 0 < v <= 1)
        _check_float("adaptive_temperature", self.adaptive_temperature, "must be in [-4, 4]",
                     lambda v: -4 <= v <= 4)
        if isinstance(self.stop_token_ids, (str, bytes)) or not hasattr(self.stop_token_ids, "__iter__"):
            raise ValueError(f"stop_token_ids must be a sequence of token ids, got {self.stop_token_ids!r}")
        self.stop_token_ids = tuple(self.stop_token_ids)
        for tid in self.stop_token_ids:
            _check_int("stop_token_ids", tid, minimum=0)

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


@dataclass
class GenerationOutput:
    token_ids: list[int]      # generated ids, without the prompt, without trailing pad; includes the stop token if one was hit
    finish_reason: str        # "stop" or "length"
    prompt_tokens: int


def _check_int(name: str, value, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")


def _check_float(name: str, value, rule: str, ok: Callable[[float], bool]) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or not ok(value):
        raise ValueError(f"{name} {rule}, got {value!r}")


# ----------------------------------------------------------------------------- entry point

def generate(model, prompts: list[list[int]], params: SamplingParams, seeds: list[int] | None = None,
             batch_size: int = 32, eos_token_ids: list[int] | None = None, pad_token_id: int | None = None,
             stats: dict | None = None, share_prefix: bool = True, constraints: list | None = None
             ) -> list[GenerationOutput]:
    """Outputs in the order of `prompts`. Each prompt i with seeds[i] samples from its own torch.Generator,
    so a sample depends only on (prompt, params, seed), never on which other prompts shared its batch.

    `eos_token_ids` defaults to the model's generation config; `params.stop_token_ids` are added to it.
    `seeds` defaults to draws from torch's global generator (so `torch.manual_seed` fixes them); greedy
    decoding ignores seeds. Out-of-memory errors halve `batch_size` and carry on with the unfinished
    prompts. `stats`, if given, is filled with counters (forward passes, final batch size, fallback).
    `share_prefix` computes the prompts' common prefix (a chat template's system prompt) once instead of
    once per prompt. `constraints` (one `kdlib.teachers.structured.Constraint` or None per prompt) restricts a
    prompt's tokens to its grammar; a row ends when its grammar allows nothing more.
    """
    prompts = _check_prompts(prompts)
    _check_int("batch_size", batch_size, minimum=1)
    seeds = _resolve_seeds(seeds, len(prompts))
    stop_ids = _stop_ids(model, eos_token_ids, params)
    pad_id = _pad_id(model, pad_token_id, stop_ids)
    stats = {} if stats is None else stats
    if not prompts:
        return []
    stats.update(prefill_calls=0, decode_steps=0, batch_size=batch_size, fallback=not supports_fast_path(model))
    results: list[GenerationOutput | None] = [None] * len(prompts)
    if constraints is not None and len(constraints) != len(prompts):
        raise ValueError(f"constraints has {len(constraints)} entries for {len(prompts)} prompts; give one per prompt")
    if constraints is not None and all(c is None for c in constraints):
        constraints = None
    if stats["fallback"] and constraints is not None:
        raise ValueError("structured generation needs fastgen's engine; this model's cache layout falls back to "
                         "HF generate, which kdlib does not constrain")
    if stats["fallback"]:
        run = _fallback_runner(model, prompts, params, seeds, stop_ids, pad_id, results)
    else:
        run = _engine_runner(model, prompts, params, seeds, stop_ids, pad_id, results, stats, share_prefix,
                             constraints)
    stats["batch_size"] = run_halving_on_oom(run, batch_size, _device_of(model))
    return results


def _engine_runner(model, prompts, params, seeds, stop_ids, pad_id, results, stats,
                   share_prefix: bool, constraints=None) -> Callable[[int], None]:
    """A `run(batch_size)` that decodes every prompt without a result yet; safe to call again after OOM."""
    def run(batch_size: int) -> None:
        todo = [i for i in range(len(prompts)) if results[i] is None]
        # Sorted token-wise, prompts built from one template sit together: they share cached prefixes,
        # and prefill groups drawn from neighbours share the most.
        todo.sort(key=lambda i: prompts[i])
        engine = _Engine(model, prompts, todo, params, seeds, stop_ids, pad_id, batch_size, results, stats,
                         share_prefix, constraints)
        with torch.inference_mode():
            engine.run()
    return run


# ----------------------------------------------------------------------------- arguments

def _check_prompts(prompts) -> list[list[int]]:
    if isinstance(prompts, torch.Tensor):
        prompts = prompts.tolist()
    out = []
    for i, p in enumerate(prompts):
        p = p.tolist() if isinstance(p, torch.Tensor) else list(p)
        if not p:
            raise ValueError(f"prompt {i} is empty: generation needs at least one prompt token")
        out.append([int(t) for t in p])
    return out


def _resolve_seeds(seeds, n: int) -> list[int]:
    if seeds is None:  # drawn from the global generator so that torch.manual_seed makes runs repeatable
        return torch.randint(0, 2**62, (n,)).tolist()
    seeds = [int(s) for s in seeds]
    if len(seeds) != n:
        raise ValueError(f"seeds has {len(seeds)} entries for {n} prompts; give one seed per prompt")
    return seeds


def _as_list(ids) -> list[int]:
    if ids is None:
        return []
    return [int(ids)] if isinstance(ids, int) else [int(t) for t in ids]


def _stop_ids(model, eos_token_ids, params: SamplingParams) -> frozenset[int]:
    if eos_token_ids is None:
        gen_cfg = getattr(model, "generation_config", None)
        eos_token_ids = getattr(gen_cfg, "eos_token_id", None)
        if eos_token_ids is None:
            eos_token_ids = getattr(model.config, "eos_token_id", None)
    return frozenset(_as_list(eos_token_ids)) | frozenset(params.stop_token_ids)


def _pad_id(model, pad_token_id, stop_ids) -> int:
    """Id written into left padding of prefill groups; it is masked out, so any valid id will do."""
    if pad_token_id is not None:
        return int(pad_token_id)
    gen_pad = getattr(getattr(model, "generation_config", None), "pad_token_id", None)
    candidates = _as_list(gen_pad) or _as_list(getattr(model.config, "pad_token_id", None)) or sorted(stop_ids)
    return candidates[0] if candidates else 0


# ----------------------------------------------------------------------------- shared prefixes

@dataclass(eq=False)
class Anchor:
    """A prefix cached once and reused: prompts lo..hi (in sorted order) share their first `length` tokens."""

    length: int
    lo: int
    hi: int
    parent: Anchor | None = None
    kv: list | None = None   # per layer (keys, values) [1, heads, length, dim], computed on first use


def _common_len(a: list[int], b: list[int]) -> int:
    n, limit = 0, min(len(a), len(b))
    while n < limit and a[n] == b[n]:
        n += 1
    return n


def _lcp_intervals(prompts: list[list[int]]) -> list[Anchor]:
    """All maximal runs of sorted prompts sharing a prefix, as a tree: the LCP-interval tree known from
    enhanced suffix arrays, built in one stack pass. Parents come before children; the root (length 0,
    every prompt) first."""
    root = Anchor(0, 0, len(prompts) - 1)
    found, stack = [root], [root]
    for i in range(1, len(prompts) + 1):
        shared = _common_len(prompts[i - 1], prompts[i]) if i < len(prompts) else 0
        lo, child = i - 1, None
        while shared < stack[-1].length:
            child = stack.pop()
            child.hi, lo = i - 1, child.lo
            if shared <= stack[-1].length:
                child.parent, child = stack[-1], None
        if shared > stack[-1].length:
            node = Anchor(shared, lo, -1, parent=stack[-1])
            if child is not None:
                child.parent = node
            stack.append(node)
            found.append(node)
    return sorted(found, key=lambda node: node.length)  # a child is always longer than its parent


def prefix_anchors(prompts: list[list[int]], overhead: int | None = None) -> list[Anchor | None]:
    """For lexicographically sorted prompts, the deepest worthwhile cached prefix of each (or None).

    A prefix shared by `count` prompts saves count * new_tokens prefill tokens and costs one forward over
    its new tokens (`overhead` + new_tokens); kept only when that pays, measured from the nearest kept
    ancestor. Chat templates make the system prompt and each instruction such prefixes.
    """
    overhead = _FORWARD_OVERHEAD_TOKENS if overhead is None else overhead
    anchor_of: list[Anchor | None] = [None] * len(prompts)
    if not prompts:
        return anchor_of
    kept: dict[int, Anchor | None] = {}  # id(node) -> its nearest kept ancestor-or-self
    for node in _lcp_intervals(prompts):  # parents come before their children
        base = kept.get(id(node.parent)) if node.parent is not None else None
        new_tokens = node.length - (base.length if base else 0)
        count = node.hi - node.lo + 1
        worth = node.length > 0 and count > 1 and (count - 1) * new_tokens > overhead
        if worth:
            node.parent = base  # re-link to the kept ancestor: its keys/values are what gets extended
            for k in range(node.lo, node.hi + 1):
                anchor_of[k] = node
        kept[id(node)] = node if worth else base
    return anchor_of


def usable_anchor(anchor: Anchor | None, lo: int, hi: int, shortest: int) -> Anchor | None:
    """The deepest kept prefix shared by sorted prompts lo..hi that leaves each a token of its own
    (the last prompt token's logits start generation)."""
    while anchor is not None and not (anchor.lo <= lo and hi <= anchor.hi and anchor.length < shortest):
        anchor = anchor.parent
    return anchor


def plan_prefill(prompts: list[list[int]], lo: int, hi: int, anchor_of: list[Anchor | None],
                 overhead: int | None = None) -> list[tuple[int, int, Anchor | None]]:
    """Cut sorted prompts lo..hi-1 into runs (start, stop, anchor), each prefilled in one left-padded forward.

    A forward costs about `overhead` + rows * padded width, in token-equivalents (`overhead`: every weight
    is read once per forward however few tokens go through); the padded width counts only tokens after
    the run's shared anchor. A small dynamic programme over contiguous runs picks the cheapest cut.
    """
    overhead = _FORWARD_OVERHEAD_TOKENS if overhead is None else overhead
    best = [0.0] + [math.inf] * (hi - lo)   # best[i - lo]: cost of prompts lo..i-1
    choice: list[tuple[int, Anchor | None]] = [(lo, None)] * (hi - lo + 1)
    for i in range(lo + 1, hi + 1):
        longest, shortest = 0, math.inf
        for j in range(i - 1, lo - 1, -1):     # the last run is prompts j..i-1
            longest, shortest = max(longest, len(prompts[j])), min(shortest, len(prompts[j]))
            anchor = usable_anchor(anchor_of[j], j, i - 1, shortest)
            cost = best[j - lo] + overhead + (i - j) * (longest - (anchor.length if anchor else 0))
            if cost < best[i - lo]:
                best[i - lo], choice[i - lo] = cost, (j, anchor)
    runs, i = [], hi
    while i > lo:
        j, anchor = choice[i - lo]
        runs.append((j, i, anchor))
        i = j
    return runs[::-1]


def _device_of(model) -> torch.device:
    return next(model.parameters()).device


def supports_fast_path(model) -> bool:
    """True when the model's KV cache is all plain full-attention layers and it takes position_ids.

    Raises ValueError for encoder-decoder models, which neither path here serves.
    """
    from transformers import DynamicCache
    from transformers.cache_utils import DynamicLayer

    config = model.config
    if getattr(config, "is_encoder_decoder", False):
        raise ValueError("fastgen.generate is for decoder-only models; this one is an encoder-decoder")
    try:
        layers = DynamicCache(config=config).layers
    except Exception:  # configs the cache factory does not understand: let HF generate handle them
        return False
    takes_positions = "position_ids" in inspect.signature(model.forward).parameters
    return takes_positions and len(layers) > 0 and all(type(layer) is DynamicLayer for layer in layers)


# ----------------------------------------------------------------------------- out of memory

def is_oom(exc: BaseException) -> bool:
    """CUDA's OutOfMemoryError, or any RuntimeError whose message says 'out of memory' (CPU, MPS, XPU)."""
    oom_type = getattr(torch.cuda, "OutOfMemoryError", ())
    return isinstance(exc, oom_type) or (isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower())


def run_halving_on_oom(run: Callable[[int], None], batch_size: int, device: torch.device | None = None) -> int:
    """Call `run(batch_size)`, halving the batch after each out-of-memory error; return the size that ran.

    `run` must resume where it stopped (finished prompts keep their outputs). A batch of 1 that still
    runs out of memory re-raises: nothing smaller is left to try.
    """
    while True:
        try:
            run(batch_size)
            return batch_size
        except Exception as exc:
            if not is_oom(exc) or batch_size == 1:
                raise
            batch_size //= 2
            log.warning("fastgen: out of memory (%s); retrying unfinished prompts with batch_size=%d",
                        str(exc).splitlines()[0][:200], batch_size)
            if device is not None and device.type == "cuda":
                torch.cuda.empty_cache()


# ----------------------------------------------------------------------------- token selection

def select_tokens(logits: torch.Tensor, params: SamplingParams, generators: list[torch.Generator]) -> torch.Tensor:
    """Next token per row of `logits` [rows, vocab]: argmax, or one draw from each row's own generator."""
    if params.greedy:
        return logits.argmax(-1)
    return draw(sampling_probs(logits, params), generators)


def draw(probs: torch.Tensor, generators: list[torch.Generator]) -> torch.Tensor:
    """One token per row of unnormalised `probs` [rows, vocab], each from its row's own generator."""
    # One uniform per row from that row's generator, then inverse-CDF sampling: the draw a row consumes
    # does not depend on the other rows, which is what makes samples independent of batch composition.
    u = torch.stack([torch.rand((), generator=g, device=probs.device) for g in generators])
    cdf = probs.double().cumsum(-1)  # float64: the last entry is a faithful total over a large vocabulary
    target = (u.double() * cdf[:, -1]).unsqueeze(-1)
    # right=True returns the first index whose cdf exceeds the target: never a zero-probability token.
    picked = torch.searchsorted(cdf, target, right=True).squeeze(-1)
    return picked.clamp_(max=probs.shape[-1] - 1)


def select_constrained(logits: torch.Tensor, params: SamplingParams, rows: list) -> torch.Tensor:
    """`select_tokens`, then rows with a grammar whose pick it does not allow pick again among the allowed
    tokens (`kdlib.teachers.structured.constrain`: exactly constrained greedy / sampling). Rows: `_Row`s."""
    picked = select_tokens(logits, params, [r.generator for r in rows])
    matchers = [r.matcher for r in rows]
    if all(m is None for m in matchers):
        return picked
    from kdlib.teachers.structured import constrain

    def repick(idx: list[int], masked: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
        if params.greedy:
            return masked.argmax(-1)
        probs = sampling_probs(logits.index_select(0, torch.tensor(idx, device=logits.device)), params) * allowed
        empty = probs.sum(-1) == 0   # the filters (top-p, min-p, ...) cut every allowed token: filter the masked ones
        if empty.any():
            probs[empty] = sampling_probs(masked[empty], params)
        return draw(probs, [rows[i].generator for i in idx])

    return constrain(logits, picked, matchers, repick)


def sampling_probs(logits: torch.Tensor, params: SamplingParams) -> torch.Tensor:
    """Unnormalised probabilities after temperature, top-k, top-p, min-p and typical-p (HF's order);
    filtered tokens are 0."""
    scores = logits.float() / row_temperatures(logits, params)
    if params.top_k and params.top_k < scores.shape[-1]:
        kth = torch.topk(scores, params.top_k, dim=-1).values[:, -1:]
        scores = scores.masked_fill(scores < kth, float("-inf"))
    probs = torch.softmax(scores, dim=-1)
    if params.top_p < 1.0:
        sorted_p, order = probs.sort(dim=-1, descending=True)
        mass_before = sorted_p.cumsum(-1) - sorted_p
        drop_sorted = mass_before >= params.top_p  # keep tokens until the kept mass reaches top_p; the top one always
        probs = probs.masked_fill(drop_sorted.scatter(-1, order, drop_sorted), 0.0)
    if params.min_p > 0:
        floor = params.min_p * probs.max(dim=-1, keepdim=True).values
        probs = probs.masked_fill(probs < floor, 0.0)
    if params.typical_p < 1.0:
        probs = typical_filter(probs, params.typical_p)
    return probs


# Entropy (nats) at which the adaptive temperature equals the base one, and the clamp on H / H_REF: an
# answer-like next token sits well under 1 nat, free text around 2-4 nats for a small instruct model.
ADAPTIVE_H_REF = 1.0
_ADAPTIVE_RATIO = (1 / 16, 4.0)


def row_temperatures(logits: torch.Tensor, params: SamplingParams) -> torch.Tensor | float:
    """Per-row temperature [rows, 1]: T * clamp(H / 1 nat, 1/16, 4) ** a, H the row's entropy at T=1.

    a > 0 sharpens where the model is confident (low entropy) and frees it where it is unsure, like
    entropy-based dynamic temperature (EDT, Zhang et al. 2024); a < 0 is the reverse: it explores more
    where the model is confident and commits where it is unsure. a = 0 is plain temperature T.
    """
    if params.adaptive_temperature == 0:
        return params.temperature
    logp = torch.log_softmax(logits.float(), dim=-1)
    plogp = torch.where(logp > float("-inf"), logp.exp() * logp, torch.zeros_like(logp))  # masked tokens add 0
    h = -plogp.sum(-1, keepdim=True)
    ratio = (h / ADAPTIVE_H_REF).clamp(*_ADAPTIVE_RATIO)
    return params.temperature * ratio ** params.adaptive_temperature


def typical_filter(probs: torch.Tensor, mass: float) -> torch.Tensor:
    """Keep the tokens whose surprisal is closest to the row's entropy until they hold `mass`."""
    total = probs.sum(-1, keepdim=True)
    p = probs / total
    logp = torch.log(p.clamp_min(1e-30))
    h = -(p * logp).sum(-1, keepdim=True)
    distance = (-logp - h).abs().masked_fill(p == 0, float("inf"))
    order = distance.argsort(dim=-1)
    sorted_p = p.gather(-1, order)
    mass_before = sorted_p.cumsum(-1) - sorted_p
    drop_sorted = mass_before >= mass  # the most typical token is always kept
    return probs.masked_fill(drop_sorted.scatter(-1, order, drop_sorted), 0.0)


# ----------------------------------------------------------------------------- KV buffer

@dataclass
class _Window:
    """Shared by all layers: rows [0, rows) are live, columns [lo, end) hold their keys and values."""

    rows: int = 0
    lo: int = 0
    end: int = 0


def _slot_cache(window: _Window, buffers: list[tuple[torch.Tensor, torch.Tensor]]):
    """A transformers `Cache` whose layers write into preallocated [rows, heads, capacity, dim] buffers."""
    from transformers.cache_utils import Cache, DynamicLayer

    class SlotLayer(DynamicLayer):
        """A layer that writes new keys at column `window.end` and returns the live window as a view.

        No torch.cat per step (DynamicLayer reallocates the whole cache every token), and rows can be
        replaced in place. The base class only contributes the flags the model code reads.
        """

        def __init__(self, kbuf: torch.Tensor, vbuf: torch.Tensor):
            super().__init__()
            self.kbuf, self.vbuf = kbuf, vbuf
            self.dtype, self.device = kbuf.dtype, kbuf.device
            self.is_initialized = True

        def update(self, key_states, value_states, *args, **kwargs):
            w, q = window, key_states.shape[-2]
            self.kbuf[:w.rows, :, w.end:w.end + q] = key_states
            self.vbuf[:w.rows, :, w.end:w.end + q] = value_states
            self.keys = self.kbuf[:w.rows, :, w.lo:w.end + q]
            self.values = self.vbuf[:w.rows, :, w.lo:w.end + q]
            return self.keys, self.values

        def get_seq_length(self) -> int:
            return window.end - window.lo

        def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
            return window.end - window.lo + query_length, 0

    return Cache(layers=[SlotLayer(k, v) for k, v in buffers])


# ----------------------------------------------------------------------------- the engine

@dataclass
class _Row:
    prompt: int                        # index into prompts
    generator: torch.Generator | None  # None when greedy
    matcher: object | None = None      # kdlib.teachers.structured.RowMatcher when the row follows a grammar
    tokens: list[int] = field(default_factory=list)


class _Engine:
    """Continuous batching: admit prompts into free rows, decode all live rows, retire finished ones.

    Prompts are admitted in `todo` order (sorted), tracked by position: `self.next` is the first
    position not yet admitted.
    """

    def __init__(self, model, prompts, todo, params, seeds, stop_ids, pad_id, batch_size, results, stats,
                 share_prefix=True, constraints=None):
        self.model, self.prompts, self.params, self.seeds = model, prompts, params, seeds
        self.constraints = constraints
        self.stop_ids, self.pad_id, self.max_rows = stop_ids, pad_id, batch_size
        self.results, self.stats = results, stats
        self.device = _device_of(model)
        self.keep_last_logits = "logits_to_keep" in inspect.signature(model.forward).parameters
        self.order = todo
        self.sorted_prompts = [prompts[i] for i in todo]
        self.anchor_of = prefix_anchors(self.sorted_prompts) if share_prefix else [None] * len(todo)
        self.live_anchors: list[Anchor] = []
        # longest_from[k]: the longest prompt at positions >= k, i.e. still to be admitted at `next` = k
        self.longest_from = [0] * (len(todo) + 1)
        for k in range(len(todo) - 1, -1, -1):
            self.longest_from[k] = max(len(self.sorted_prompts[k]), self.longest_from[k + 1])
        self.next = 0
        self.window = _Window()
        self.buffers: list[tuple[torch.Tensor, torch.Tensor]] = []
        self.cache = None
        self.rows: list[_Row] = []
        self.starts: list[int] = []          # first buffer column of each live row
        self.next_tokens = torch.empty(0, dtype=torch.long, device=self.device)  # sampled, not yet fed

    def run(self) -> None:
        while self.next < len(self.order) or self.rows:
            free = self.max_rows - len(self.rows)
            if self.next < len(self.order) and free:
                stop = min(self.next + free, len(self.order))
                for lo, hi, anchor in plan_prefill(self.sorted_prompts, self.next, stop, self.anchor_of):
                    self.next = hi
                    self._admit(lo, hi, anchor)
                self._release_anchors()
            if self.rows:
                self._decode_step()

    # -- admission: prefill a run of prompts and splice their keys/values into the buffer

    def _admit(self, lo: int, hi: int, anchor: Anchor | None) -> None:
        """Prefill sorted prompts lo..hi-1, record rows finished by their first token, place the rest."""
        logits, cache, width = self._prefill(lo, hi, anchor)
        rows = [_Row(self.order[k], self._generator(self.order[k]), self._matcher(self.order[k]))
                for k in range(lo, hi)]
        tokens = select_constrained(logits, self.params, rows)
        alive = self._record(rows, tokens.tolist())
        if not alive:
            return
        self._ensure_buffers(cache, incoming=max(len(self.sorted_prompts[lo + j]) for j in alive))
        w, n_prefix = self.window, anchor.length if anchor else 0
        for j in alive:
            length = len(self.sorted_prompts[lo + j])
            slot, mid, own = len(self.rows), w.end - length + n_prefix, length - n_prefix
            for (kbuf, vbuf), layer in zip(self.buffers, cache.layers):
                # The cache row is [prefix | left padding | suffix]; the buffer row gets [prefix | suffix].
                kbuf[slot, :, w.end - length:mid] = layer.keys[j, :, :n_prefix]
                vbuf[slot, :, w.end - length:mid] = layer.values[j, :, :n_prefix]
                kbuf[slot, :, mid:w.end] = layer.keys[j, :, n_prefix + width - own:]
                vbuf[slot, :, mid:w.end] = layer.values[j, :, n_prefix + width - own:]
            self.rows.append(rows[j])
            self.starts.append(w.end - length)
        keep = torch.tensor(alive, device=self.device)
        self.next_tokens = torch.cat([self.next_tokens, tokens.index_select(0, keep)])

    def _prefill(self, lo: int, hi: int, anchor: Anchor | None):
        """One forward over the prompts' tokens after their shared anchor, left-padded.

        Returns the last-position logits, the run's DynamicCache (anchor columns first, then the padded
        suffixes) and the padded suffix width.
        """
        from transformers import DynamicCache

        n_prefix, rows = (anchor.length if anchor else 0), hi - lo
        suffixes = [p[n_prefix:] for p in self.sorted_prompts[lo:hi]]
        width = max(len(s) for s in suffixes)
        ids = torch.full((rows, width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((rows, width), dtype=torch.long)
        for r, suffix in enumerate(suffixes):
            ids[r, width - len(suffix):] = torch.tensor(suffix)
            mask[r, width - len(suffix):] = 1
        ids, mask = ids.to(self.device), mask.to(self.device)
        # Positions count real tokens only, as HF generate does; pad positions get 1 and are masked anyway.
        positions = (mask.cumsum(-1) - 1 + n_prefix).masked_fill_(mask == 0, 1)
        cache = DynamicCache(config=self.model.config)
        for layer_idx, (k, v) in enumerate(self._anchor_kv(anchor)):
            cache.update(k.expand(rows, -1, -1, -1), v.expand(rows, -1, -1, -1), layer_idx)
        full_mask = torch.cat([mask.new_ones(rows, n_prefix), mask], dim=1)
        out = self._forward(ids, full_mask, positions, cache, last_only=True)
        self.stats["prefill_calls"] += 1
        self.stats["prefill_tokens"] = self.stats.get("prefill_tokens", 0) + ids.numel()
        return out.logits[:, -1, :], out.past_key_values, width

    def _anchor_kv(self, anchor: Anchor | None) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Keys/values of a shared prefix: computed once, by extending its parent's, and kept until the
        last prompt sharing it is admitted."""
        from transformers import DynamicCache

        if anchor is None:
            return []
        if anchor.kv is None:
            base = anchor.parent.length if anchor.parent else 0
            cache = DynamicCache(config=self.model.config)
            for layer_idx, (k, v) in enumerate(self._anchor_kv(anchor.parent)):
                cache.update(k, v, layer_idx)
            ids = torch.tensor([self.sorted_prompts[anchor.lo][base:anchor.length]], device=self.device)
            positions = torch.arange(base, anchor.length, device=self.device).unsqueeze(0)
            out = self._forward(ids, torch.ones((1, anchor.length), dtype=torch.long, device=self.device),
                                positions, cache, last_only=True)
            anchor.kv = [(layer.keys, layer.values) for layer in out.past_key_values.layers]
            self.live_anchors.append(anchor)
            self.stats["prefix_calls"] = self.stats.get("prefix_calls", 0) + 1
            self.stats["prefix_tokens"] = self.stats.get("prefix_tokens", 0) + anchor.length - base
        return anchor.kv

    def _release_anchors(self) -> None:
        """Free prefixes no prompt still to be admitted starts with (admission goes in sorted order)."""
        for anchor in [a for a in self.live_anchors if a.hi < self.next]:
            anchor.kv = None
            self.live_anchors.remove(anchor)

    def _forward(self, ids, mask, positions, cache, last_only: bool = False):
        extra = {"logits_to_keep": 1} if last_only and self.keep_last_logits else {}
        return self.model(input_ids=ids, attention_mask=mask, position_ids=positions,
                          past_key_values=cache, use_cache=True, **extra)

    def _matcher(self, prompt: int):
        constraint = self.constraints[prompt] if self.constraints is not None else None
        return constraint.matcher() if constraint is not None else None

    def _generator(self, prompt: int) -> torch.Generator | None:
        if self.params.greedy:
            return None
        gen = torch.Generator(device=self.device)
        gen.manual_seed(self.seeds[prompt])
        return gen

    def _ensure_buffers(self, cache, incoming: int) -> None:
        """Allocate the buffers on first use; when no row is live, restart the columns for the next prompts.

        Invariant: `end` >= every prompt still to be admitted, so its tokens fit in columns [end - len, end).
        """
        longest = max(incoming, self.longest_from[self.next])
        if not self.buffers:
            capacity = longest + self.params.max_new_tokens + _SLACK_COLUMNS
            for layer in cache.layers:
                _, heads, _, dim = layer.keys.shape
                # zeros, not empty: masked columns still enter the attention product, and NaN garbage there
                # would poison rows even with zero weights.
                shape = (self.max_rows, heads, capacity, dim)
                self.buffers.append((layer.keys.new_zeros(shape), layer.values.new_zeros(shape)))
            self.cache = _slot_cache(self.window, self.buffers)
        if not self.rows:  # nothing live to keep: start over at the left edge, postponing the next shift
            self.window.end = longest

    # -- decoding

    def _decode_step(self) -> None:
        self._make_room()
        w = self.window
        w.rows, w.lo = len(self.rows), min(self.starts)
        starts = torch.tensor(self.starts, device=self.device)
        columns = torch.arange(w.lo, w.end + 1, device=self.device)
        mask = columns.unsqueeze(0) >= starts.unsqueeze(1)          # [rows, window]: a row's own columns only
        positions = (w.end - starts).unsqueeze(1)                   # tokens already cached for the row
        out = self._forward(self.next_tokens.unsqueeze(1), mask, positions, self.cache)
        w.end += 1
        self.stats["decode_steps"] += 1
        tokens = select_constrained(out.logits[:, -1, :], self.params, self.rows)
        alive = self._record(self.rows, tokens.tolist())
        self._retire(alive, tokens)

    def _record(self, rows: list[_Row], tokens: list[int]) -> list[int]:
        """Append each row's new token; store finished rows' outputs; return indices of rows still going."""
        alive = []
        for j, (row, tok) in enumerate(zip(rows, tokens)):
            row.tokens.append(tok)
            # A grammar that allows nothing more ends the row as end-of-sequence would.
            stopped = tok in self.stop_ids or (row.matcher is not None and row.matcher.done)
            if stopped or len(row.tokens) >= self.params.max_new_tokens:
                reason = "stop" if stopped else "length"
                self.results[row.prompt] = GenerationOutput(row.tokens, reason, len(self.prompts[row.prompt]))
            else:
                alive.append(j)
        return alive

    def _retire(self, alive: list[int], tokens: torch.Tensor) -> None:
        """Drop finished rows: the last live rows move into the holes, so only moved rows are copied."""
        n_alive = len(alive)
        dead = sorted(set(range(len(self.rows))) - set(alive))
        movers = [j for j in alive if j >= n_alive]   # live rows beyond the new end fill the holes below it
        holes = [j for j in dead if j < n_alive]
        lo, end = self.window.lo, self.window.end
        for src, dst in zip(movers, holes):
            for kbuf, vbuf in self.buffers:
                kbuf[dst, :, lo:end] = kbuf[src, :, lo:end]
                vbuf[dst, :, lo:end] = vbuf[src, :, lo:end]
            self.rows[dst], self.starts[dst] = self.rows[src], self.starts[src]
        del self.rows[n_alive:], self.starts[n_alive:]
        order = list(range(n_alive))
        for src, dst in zip(movers, holes):
            order[dst] = src
        self.next_tokens = tokens.index_select(0, torch.tensor(order, dtype=torch.long, device=self.device))

    def _make_room(self) -> None:
        """Before writing column `end`: if the buffer is full, shift live columns left.

        The shift keeps `end` >= the longest waiting prompt (it must fit left of `end` when admitted).
        Rows hold at most longest prompt + max_new_tokens - 1 tokens, so the capacity's slack columns
        guarantee a shift of at least that slack: shifts are rare and the buffer never grows.
        """
        w = self.window
        capacity = self.buffers[0][0].shape[2]
        if w.end < capacity:
            return
        longest_waiting = self.longest_from[self.next]
        shift = min(min(self.starts), w.end - longest_waiting)
        lo, rows = min(self.starts), len(self.rows)
        for kbuf, vbuf in self.buffers:
            kbuf[:rows, :, lo - shift:w.end - shift] = kbuf[:rows, :, lo:w.end].clone()
            vbuf[:rows, :, lo - shift:w.end - shift] = vbuf[:rows, :, lo:w.end].clone()
        self.starts = [s - shift for s in self.starts]
        w.end -= shift
        self.stats["buffer_shifts"] = self.stats.get("buffer_shifts", 0) + 1


# ----------------------------------------------------------------------------- fallback: HF generate

def _fallback_runner(model, prompts, params, seeds, stop_ids, pad_id, results) -> Callable[[int], None]:
    """HF `generate` for caches the buffer cannot model (sliding-window, linear-attention hybrids).

    Greedy runs batched; sampling runs one prompt at a time under its own seed, because HF draws all rows
    of a batch from one global generator and per-seed samples would then depend on the batch.
    """
    # With no stop ids at all, HF would fall back to the model's own eos; fine for these rare models.
    kwargs = dict(max_new_tokens=params.max_new_tokens, eos_token_id=sorted(stop_ids) or None,
                  pad_token_id=pad_id, do_sample=not params.greedy)
    if not params.greedy:
        if params.adaptive_temperature:
            raise NotImplementedError(
                f"adaptive_temperature needs kdlib's fast decoding path, which {type(model).__name__} "
                "does not support (sliding-window or hybrid cache); use a plain temperature")
        kwargs.update(temperature=params.temperature, top_p=params.top_p, top_k=params.top_k or None,
                      min_p=params.min_p or None, typical_p=params.typical_p)
    device = _device_of(model)

    def run(batch_size: int) -> None:
        todo = [i for i in range(len(prompts)) if results[i] is None]
        step = batch_size if params.greedy else 1
        for k in range(0, len(todo), step):
            group = todo[k:k + step]
            with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
                torch.manual_seed(seeds[group[0]])
                rows = _hf_generate_group(model, [prompts[i] for i in group], pad_id, device, kwargs)
            for i, row in zip(group, rows):
                results[i] = _trim(row, stop_ids, params.max_new_tokens, len(prompts[i]))
    return run


def _hf_generate_group(model, group: list[list[int]], pad_id: int, device, kwargs) -> list[list[int]]:
    width = max(len(p) for p in group)
    ids = torch.tensor([[pad_id] * (width - len(p)) + p for p in group], device=device)
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in group], device=device)
    with torch.inference_mode():
        out = model.generate(input_ids=ids, attention_mask=mask, **kwargs)
    return out[:, width:].tolist()


def _trim(row: list[int], stop_ids, max_new_tokens: int, prompt_tokens: int) -> GenerationOutput:
    """Cut a padded HF output row after its first stop token (padding may equal eos, so cut, don't strip)."""
    for j, tok in enumerate(row[:max_new_tokens]):
        if tok in stop_ids:
            return GenerationOutput(row[:j + 1], "stop", prompt_tokens)
    return GenerationOutput(row[:max_new_tokens], "length", prompt_tokens)
