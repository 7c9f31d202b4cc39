"""Token and cost ledger of teacher calls: what a result cost, and what the cache saved.

Every `generate` or `score` call appends one `CallRecord`. Tokens of rows that
really ran (cache misses) are "spent"; tokens of cache hits are kept separately
so that a notebook can say both "this cost N tokens" and "without the cache it
would have cost M". Local models cost 0 USD but their tokens still count.

Prices are USD per 1M tokens, (prompt, completion), by model id. They change
often, so there is no built-in table: pass `prices={...}` or set one with
`Ledger(prices=...)`.
"""

from __future__ import annotations

import math
import os
import threading
from dataclasses import asdict, dataclass, field, fields


@dataclass(frozen=True)
class Price:
    """USD per 1M tokens."""
    prompt: float
    completion: float

    def __post_init__(self):
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value < 0:
                raise ValueError(f"Price.{f.name} must be a finite number >= 0 (USD per 1M tokens), got {value!r}")

    def cost(self, prompt_tokens: int, completion_tokens: int) -> float:
        return (prompt_tokens * self.prompt + completion_tokens * self.completion) / 1e6


def as_prices(table: dict | None) -> dict[str, Price]:
    """Accept {model: Price | (prompt, completion) | {'prompt':..,'completion':..}}."""
    out = {}
    for model, value in (table or {}).items():
        if isinstance(value, Price):
            out[model] = value
        elif isinstance(value, dict):
            out[model] = Price(**value)
        elif isinstance(value, tuple | list) and len(value) == 2:
            out[model] = Price(*value)
        else:
            raise TypeError(f"price of {model!r} must be Price, (prompt, completion) or a dict, got {value!r}")
    return out


@dataclass(frozen=True)
class CallRecord:
    """One teacher call. `*_tokens` are spent (misses); `cached_*_tokens` were served by the cache."""
    kind: str                 # 'generate' or 'score'
    backend: str              # 'local' or 'http'
    model: str
    notebook: str
    requests: int             # rows asked for (prompts x samples, or prompt-candidate pairs)
    cache_hits: int
    cache_misses: int
    prompt_tokens: int
    completion_tokens: int
    cached_prompt_tokens: int
    cached_completion_tokens: int
    wall_s: float
    cost_usd: float
    cost_without_cache_usd: float
    priced: bool              # False: a remote model with no price in the table (cost shown as 0)

    @property
    def tokens_spent(self) -> int:
        return self.prompt_tokens + self.completion_tokens


@dataclass
class Ledger:
    """Append-only list of CallRecords with totals; thread-safe."""
    prices: dict = field(default_factory=dict)
    notebook: str = field(default_factory=lambda: os.environ.get("KDLIB_NOTEBOOK", ""))
    records: list[CallRecord] = field(default_factory=list)

    def __post_init__(self):
        self.prices = as_prices(self.prices)
        self._lock = threading.Lock()

    def price_of(self, model: str, backend: str) -> Price | None:
        if model in self.prices:
            return self.prices[model]
        return Price(0.0, 0.0) if backend == "local" else None  # local compute is not billed per token

    def record(self, *, kind: str, backend: str, model: str, requests: int, hits: int, misses: int,
               spent: tuple[int, int], cached: tuple[int, int], wall_s: float) -> CallRecord:
        """Add one call; `spent` and `cached` are (prompt_tokens, completion_tokens)."""
        price = self.price_of(model, backend)
        unit = price or Price(0.0, 0.0)
        cost = unit.cost(*spent)
        rec = CallRecord(kind, backend, model, self.notebook, requests, hits, misses, spent[0], spent[1],
                         cached[0], cached[1], round(wall_s, 4), cost,
                         cost + unit.cost(*cached), price is not None)
        with self._lock:
            self.records.append(rec)
        return rec

    def tokens_spent(self) -> int:
        """Prompt + completion tokens of rows that really ran (cache hits excluded)."""
        return sum(r.tokens_spent for r in self.records)

    def summary(self) -> dict:
        """Totals over all calls, ready to print or `emit`."""
        rs = list(self.records)
        total = {name: sum(getattr(r, name) for r in rs) for name in (
            "requests", "cache_hits", "cache_misses", "prompt_tokens", "completion_tokens",
            "cached_prompt_tokens", "cached_completion_tokens", "wall_s", "cost_usd", "cost_without_cache_usd")}
        total["calls"] = len(rs)
        total["tokens_spent"] = total["prompt_tokens"] + total["completion_tokens"]
        total["tokens_without_cache"] = (total["tokens_spent"] + total["cached_prompt_tokens"]
                                         + total["cached_completion_tokens"])
        total["hit_rate"] = total["cache_hits"] / total["requests"] if total["requests"] else 0.0
        total["unpriced_models"] = sorted({r.model for r in rs if not r.priced})
        return total

    def frame(self):
        """One row per call (pandas DataFrame)."""
        import pandas as pd

        columns = [f.name for f in fields(CallRecord)]
        return pd.DataFrame([asdict(r) for r in self.records], columns=columns)

    def clear(self) -> None:
        with self._lock:
            self.records.clear()
