"""The token and cost ledger."""

import pytest

from kdlib.teachers.ledger import Ledger, Price, as_prices


def _call(ledger, model="gpt-x", backend="http", spent=(1000, 200), cached=(0, 0), hits=0, misses=2):
    return ledger.record(kind="generate", backend=backend, model=model, requests=hits + misses, hits=hits,
                         misses=misses, spent=spent, cached=cached, wall_s=0.5)


def test_costs_and_savings_from_the_price_table():
    ledger = Ledger(prices={"gpt-x": (2.0, 8.0)}, notebook="01_labeling")
    rec = _call(ledger, spent=(1_000_000, 500_000), cached=(1_000_000, 0), hits=3, misses=2)
    assert rec.cost_usd == pytest.approx(2.0 + 4.0)
    assert rec.cost_without_cache_usd == pytest.approx(6.0 + 2.0)
    assert rec.tokens_spent == 1_500_000 and rec.notebook == "01_labeling"


def test_local_models_are_free_but_counted_and_unknown_remote_is_flagged():
    ledger = Ledger()
    _call(ledger, model="smol", backend="local", spent=(10, 5))
    _call(ledger, model="mystery", backend="http", spent=(7, 3), cached=(4, 4), hits=1, misses=1)
    s = ledger.summary()
    assert s["tokens_spent"] == 25 == ledger.tokens_spent()
    assert s["tokens_without_cache"] == 33
    assert s["cost_usd"] == 0.0 and s["unpriced_models"] == ["mystery"]
    assert s["calls"] == 2 and s["cache_hits"] == 1 and s["hit_rate"] == pytest.approx(1 / 4)


def test_frame_has_one_row_per_call():
    ledger = Ledger()
    assert list(ledger.frame().columns)[:3] == ["kind", "backend", "model"] and len(ledger.frame()) == 0
    _call(ledger)
    _call(ledger)
    frame = ledger.frame()
    assert len(frame) == 2 and frame["prompt_tokens"].sum() == 2000


def test_price_validation():
    assert as_prices({"a": Price(1, 2), "b": {"prompt": 0.5, "completion": 1}, "c": [1, 1]})["b"].prompt == 0.5
    with pytest.raises(ValueError, match="Price.prompt"):
        Price(-1, 0)
    with pytest.raises(TypeError, match="price of 'a'"):
        as_prices({"a": 3})
