import json

from kdlib.registry import instructions


def test_truncated_json_array_yields_complete_records_only():
    text = json.dumps([{"id": 1}, {"id": 2}, {"id": 3}])[:-12]  # cut inside the third record
    assert [r["id"] for r in instructions.iter_json_array(text)] == [1, 2]


def test_first_turn_pairs_skip_conversations_not_starting_with_a_human():
    recs = [{"id": "a", "conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "hello"}]},
            {"id": "b", "conversations": [{"from": "gpt", "value": "x"}, {"from": "human", "value": "y"}]},
            {"id": "c", "conversations": [{"from": "human", "value": "only one turn"}]}]
    pairs = instructions.first_turn_pairs(recs)
    assert [(p["id"], p["instruction"], p["response"]) for p in pairs] == [("a", "hi", "hello")]


def test_offline_sharegpt_loads_with_dolly_columns():
    ds = instructions.load_instructions("sharegpt")
    assert {"instruction", "context", "response", "category"} <= set(ds.column_names)
    assert len(ds) > 10_000
