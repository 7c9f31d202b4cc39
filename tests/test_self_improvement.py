"""kdlib.synthesis.self_training, kdlib.distillation.sft and kdlib.synthesis.self_instruct: the pure pieces, and small real runs."""

import numpy as np
import pytest

from kdlib.distillation import sft
from kdlib.synthesis import self_instruct, self_training


def test_pick_confident_thresholds_caps_and_orders():
    probs = np.array([[0.95, 0.05], [0.2, 0.8], [0.99, 0.01], [0.6, 0.4], [0.03, 0.97], [0.91, 0.09]])
    assert self_training.pick_confident(probs, 0.9, 2) == [(0, 0), (2, 0), (4, 1)]  # 5 (0.91) is third of class 0
    assert self_training.pick_confident(probs, 0.5, 10) == [(0, 0), (1, 1), (2, 0), (3, 0), (4, 1), (5, 0)]
    with pytest.raises(ValueError, match="shape"):
        self_training.pick_confident([0.5, 0.5], 0.5, 1)


def test_task_check_and_pair_filters():
    assert self_instruct.task_check("Summarise the plot of Hamlet in two sentences.") is None
    assert self_instruct.task_check("Draw a picture of a cat.") == "needs_non_text_io"
    assert self_instruct.task_check("Hi there") == "task_length"
    assert self_instruct.task_check("Come up with 5 new tasks for me please") == "echoes_the_request"
    pairs = [{"instruction": "Name three primes.", "response": "2, 3 and 5 are primes.", "finish_reason": "stop"},
             {"instruction": "Name three primes.", "response": "", "finish_reason": "stop"},
             {"instruction": "Tell a long story.", "response": "Once upon a time there", "finish_reason": "length"},
             {"instruction": "Say yes.", "response": "Yes.", "finish_reason": "stop"},
             {"instruction": "Explain how tides work on Earth.", "response": "Explain how tides work on Earth.",
              "finish_reason": "stop"}]
    kept, report = self_instruct.filter_pairs(pairs)
    assert kept == [{"instruction": "Name three primes.", "response": "2, 3 and 5 are primes."}]
    assert report.counts == {"empty_response": 1, "unfinished_response": 1, "response_too_short": 1,
                             "repeats_instruction": 1}
    assert len(self_instruct.filter_pairs(pairs, drop_unfinished=False)[0]) == 2


def test_sft_config_validation():
    with pytest.raises(ValueError, match="batch_size"):
        sft.SFTConfig(batch_size=0)
    with pytest.raises(ValueError, match="lr"):
        sft.SFTConfig(lr=2.0)


@pytest.fixture(scope="module")
def lm():
    import torch

    from kdlib.registry.models import load_causal_lm

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield load_causal_lm("HuggingFaceTB/SmolLM2-135M-Instruct")
    torch.set_num_threads(threads)


@pytest.mark.slow
def test_encode_pairs_masks_the_prompt_and_ends_with_eos(lm):
    _, tok = lm
    ids, labels = sft.encode_pairs(tok, [{"instruction": "Say hi", "response": "Hi there!"}], 256)[0]
    prompt = sft.chat_prompt(tok, "Say hi")
    assert ids[:len(prompt)] == prompt and all(t == sft.IGNORE_INDEX for t in labels[:len(prompt)])
    assert labels[len(prompt):] == ids[len(prompt):] and ids[-1] == tok.eos_token_id
    assert tok.decode(ids[len(prompt):-1]) == "Hi there!"
    assert sft.encode_pairs(tok, [{"instruction": "Say hi", "response": "Hi"}], len(prompt)) == [], \
        "a pair whose prompt fills max_length teaches nothing"


@pytest.mark.slow
def test_sft_lowers_the_loss_on_its_data_and_changes_the_answer(lm):
    import copy

    model, tok = lm
    model = copy.deepcopy(model)
    pair = {"instruction": "What is the secret word?", "response": "The secret word is pumpernickel."}
    hist = sft.train_sft(model, tok, [pair] * 4, sft.SFTConfig(epochs=6, batch_size=4, lr=1e-4, warmup_ratio=0.0))
    assert hist.steps == 6 and hist.loss[-1] < hist.loss[0] / 2 and hist.tokens > 0
    answer = sft.generate_responses(model, tok, ["What is the secret word?"], max_new_tokens=12)[0]
    assert "pumpernickel" in answer.lower()
    assert sft.rouge_l_scores([answer], [pair["response"]])[0] > 0.5


@pytest.mark.slow
def test_self_training_adds_confident_pseudo_labels(mirror):
    from kdlib.registry import data
    from kdlib.students.encoder import StudentConfig

    dd = data.load("sst2")
    names = data.label_names(dd)
    gold = [{"text": t, "label": names[y]} for t, y in zip(*data.k_shot(dd["train"], 4, seed=0)[:].values())]
    pool = dd["train"].select(range(100, 164))
    cfg = StudentConfig(epochs=1, min_steps=4, max_steps=4, seed=0)
    _, hist = self_training.self_train(gold, pool["text"], names, cfg, rounds=1, threshold=0.5, per_class_per_round=5,
                                       evaluate_on=dd["test"].select(range(32)),
                                       pool_gold=[names[y] for y in pool["label"]])
    assert [h.round for h in hist] == [0, 1] and hist[0].n_train == 8 and hist[1].n_train == 8 + hist[0].n_added
    assert 0 < hist[0].n_added <= 10 and hist[0].added_accuracy is not None and hist[1].n_added == 0
    assert set(hist[1].scores) >= {"accuracy", "macro_f1"}
