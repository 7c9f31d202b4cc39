"""The continuous-batching engine behind `kdlib.teachers.fastgen.generate`: a preallocated per-row KV buffer
(rows share one write column, each with its own start, explicit position ids and a 2D padding mask), prefill of
waiting prompts into freed rows, and one decode step over the live rows only.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field

import torch

from kdlib.teachers.prefix import Anchor, forward_overhead_tokens, plan_prefill, prefix_anchors
from kdlib.teachers.sampling import GenerationOutput, select_constrained

# Spare buffer columns beyond the longest prompt plus max_new_tokens: the buffer shifts its columns left
# only when `end` reaches capacity, so this many decode steps pass between two shifts at the least.
_SLACK_COLUMNS = 64


def _device_of(model) -> torch.device:
    return next(model.parameters()).device


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
        self.overhead = forward_overhead_tokens(self.device)
        self.anchor_of = (prefix_anchors(self.sorted_prompts, self.overhead) if share_prefix
                          else [None] * len(todo))
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
                for lo, hi, anchor in plan_prefill(self.sorted_prompts, self.next, stop, self.anchor_of,
                                                  self.overhead):
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
