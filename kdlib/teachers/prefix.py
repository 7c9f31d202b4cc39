"""Shared prompt prefixes for batched prefill: prompts that start alike (one instruction, many inputs) prefill
their common prefix once and reuse its KV cache, when the saving beats the cost of one more forward.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

# Cost of one forward beyond its tokens, in prefill-token equivalents (every weight is read once per
# forward, plus Python per layer): measured ~20 for SmolLM2-135M on this 2-core CPU (150 ms per forward,
# 7 ms per prefill token, one thread). It steers which shared prefixes are worth caching and how prefill
# groups split to avoid padding; on a CPU neither choice is sensitive to it.
_FORWARD_OVERHEAD_TOKENS = 24
# On a GPU a forward is bound by the host (Python and kernel launches per layer), not by its tokens: on an
# H200 (reports/bench/gpu.json, profile of 16 new tokens at batch 64, 1.5B-shaped Qwen2) a forward cost
# ~28 ms of host time whatever its width, while a prefill token costs ~4 us of matrix work (2 x 1.5e9
# FLOP at ~780 TFLOP/s): ~7,000 tokens per forward. With the CPU value fastgen split that batch's prefill
# into 12 forwards where HF generate used one. 4096 keeps one forward until padding truly costs.
_CUDA_FORWARD_OVERHEAD_TOKENS = 4096


def forward_overhead_tokens(device) -> int:
    """The planners' forward cost for a model on `device` (a torch.device or its name)."""
    return _CUDA_FORWARD_OVERHEAD_TOKENS if str(device).startswith("cuda") else _FORWARD_OVERHEAD_TOKENS


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
