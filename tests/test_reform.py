"""kdlib.synthesis.reform: rewrite prompts and targets; a real paraphrase/counterfactual run of the offline teacher."""

import random

import pytest

from kdlib.synthesis import reform, synth

SPEC = synth.TaskSpec("a one-sentence movie review", {"negative": "is negative", "positive": "is positive"})
ROWS = [{"text": "A dull and lifeless film.", "label": "negative"},
        {"text": "A warm, funny and moving story.", "label": "positive"}]


def test_prompts_and_targets():
    msg = reform.rewrite_prompt(reform.PARAPHRASE, "Great film.", 3)[0]["content"]
    assert msg.startswith(reform.PARAPHRASE) and "Text: Great film." in msg and "Write 3 different versions" in msg
    assert "is positive" in reform.counterfactual_instruction(SPEC, "positive")
    rng = random.Random(0)
    assert {reform.counterfactual_target("negative", ["negative", "neutral", "positive"], rng)
            for _ in range(50)} == {"neutral", "positive"}
    with pytest.raises(ValueError, match="two labels"):
        reform.counterfactual_target("a", ["a"], rng)
    with pytest.raises(ValueError, match="n must be"):
        reform.rewrite_prompt("x", "y", 0)


@pytest.mark.slow
def test_real_rewrites_keep_sources_labels_and_cache(tmp_path):
    import torch

    from kdlib.teachers.teacher import make_teacher

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        teacher = make_teacher(batch_size=4, cache_path=tmp_path / "c.sqlite", progress=False)
        para = reform.paraphrase(teacher, SPEC, ROWS, n=2, max_new_tokens=40, seed=1)
        assert para.tokens > 0 and len(para.raw) == 2
        sources = {r["text"]: r["label"] for r in ROWS}
        assert all(r["source"] in sources and r["label"] == sources[r["source"]] for r in para.rows)
        assert not {r["text"] for r in para.rows} & set(sources), "a copy of the source is no augmentation"
        cf = reform.counterfactuals(teacher, SPEC, ROWS, n=2, max_new_tokens=40, seed=1)
        assert all(r["label"] != sources[r["source"]] for r in cf.rows), "counterfactuals carry the other label"
        again = reform.paraphrase(teacher, SPEC, ROWS, n=2, max_new_tokens=40, seed=1)
        assert again.tokens_spent == 0 and again.rows == para.rows
    finally:
        torch.set_num_threads(threads)


@pytest.mark.slow
def test_sentence_embeddings_are_unit_and_meaningful():
    import numpy as np

    from kdlib.registry.models import sentence_embeddings

    e = sentence_embeddings(["I loved this film.", "What a great movie!", "Interest rates rose again."])
    assert e.shape == (3, 384) and np.allclose(np.linalg.norm(e, axis=1), 1, atol=1e-5)
    assert e[0] @ e[1] > e[0] @ e[2] + 0.2
