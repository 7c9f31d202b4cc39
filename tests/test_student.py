"""Student trainer: config validation, input handling, tag alignment, and short real training runs."""

import numpy as np
import pytest

from kdlib.students import encoder, fit, student
from kdlib.students.encoder import StudentConfig

# ----------------------------------------------------------------------------- config


@pytest.mark.parametrize("field, value", [
    ("batch_size", 0), ("max_length", -1), ("max_length", 1000), ("epochs", 0), ("epochs", 1.5),
    ("lr", 0.0), ("lr", -1e-5), ("head_lr", 2.0), ("warmup_ratio", 1.0), ("dropout", -0.1),
    ("weight_decay", float("nan")), ("patience", 0), ("eval_every", 0), ("max_steps", 0),
    ("min_steps", -1), ("max_grad_norm", 0.0), ("seed", "zero"), ("model", ""), ("batch_size", True),
])
def test_bad_config_value_names_the_field(field, value):
    with pytest.raises(ValueError, match=f"StudentConfig.{field} "):
        StudentConfig(**{field: value})


def test_max_steps_below_min_steps_names_both():
    with pytest.raises(ValueError, match="max_steps .* min_steps"):
        StudentConfig(max_steps=10, min_steps=20)


def test_replace_validates_again():
    cfg = StudentConfig().replace(epochs=5)
    assert cfg.epochs == 5 and StudentConfig().epochs != 5
    with pytest.raises(ValueError, match="StudentConfig.epochs"):
        cfg.replace(epochs=0)


def test_step_plan_respects_min_and_max_steps():
    # 10 examples at batch 4 -> 3 steps per epoch
    assert fit._plan(10, StudentConfig(batch_size=4, epochs=2, min_steps=0)) == (3, 6, 3)
    assert fit._plan(10, StudentConfig(batch_size=4, epochs=2, min_steps=50))[1] == 50
    assert fit._plan(10, StudentConfig(batch_size=4, epochs=20, min_steps=0, max_steps=7))[1] == 7
    # automatic evaluation: per epoch, but at most MAX_AUTO_EVALS times
    assert fit._plan(4, StudentConfig(batch_size=4, epochs=1, min_steps=100))[2] == 100 // fit.MAX_AUTO_EVALS


def test_schedule_covers_each_epoch_then_stops_at_total():
    import torch

    steps = list(fit._schedule(5, StudentConfig(batch_size=2), 7, torch.Generator().manual_seed(0)))
    assert [len(idx) for _, idx in steps] == [2, 2, 1, 2, 2, 1, 2]
    assert sorted(i for _, idx in steps[:3] for i in idx) == [0, 1, 2, 3, 4]
    assert [e for e, _ in steps[:4]] == pytest.approx([0.4, 0.8, 1.0, 1.4])


def test_best_state_keeps_the_best_weights():
    import torch

    net = torch.nn.Linear(2, 1)
    best = fit._BestState()
    for step, score in enumerate([0.5, 0.7, 0.6, 0.7], 1):
        with torch.no_grad():
            net.weight.fill_(step)
        best.update(net, step, score)
    assert (best.step, best.score, best.stale) == (2, 0.7, 2)  # a tie does not replace the best
    best.restore(net)
    assert net.weight.tolist() == [[2.0, 2.0]]


# ----------------------------------------------------------------------------- inputs (no model needed)


def test_unknown_string_label_is_named():
    rows = [{"text": "great", "label": "positive"}, {"text": "meh", "label": "neutral"}]
    with pytest.raises(ValueError, match=r"train, example 1: label 'neutral' is not one of .*'negative'"):
        student.train_classifier(rows, None, StudentConfig(), label_names=["negative", "positive"])


def test_unknown_tag_is_named():
    rows = [{"tokens": ["Paris"], "tags": ["B-CITY"]}]
    with pytest.raises(ValueError, match="label 'B-CITY'"):
        student.train_tagger(rows, None, StudentConfig(), label_names=["O", "B-LOC", "I-LOC"])


def test_classification_examples_remap_classlabel_by_name():
    import datasets

    ds = datasets.Dataset.from_dict({"text": ["x", "y"], "label": [0, 1]},
                                    features=datasets.Features({"text": datasets.Value("string"),
                                                                "label": datasets.ClassLabel(names=["neg", "pos"])}))
    texts, labels = student._classification_examples(ds, ["pos", "neg"], "train")
    assert texts == ["x", "y"] and labels == [1, 0]


def test_sample_weights_are_checked():
    assert student._check_weights(None, 3) is None
    assert student._check_weights([1, 0.5, 0], 3) == [1.0, 0.5, 0.0]
    for bad in ([1.0, 2.0], [1.0, -1.0, 1.0], [0, 0, 0], [1.0, float("inf"), 1.0]):
        with pytest.raises(ValueError, match="sample_weights"):
            student._check_weights(bad, 3)


def test_align_tags_first_wordpiece_only():
    # [CLS] eu rejects british ##ness lamb . [SEP]; word 3 ("\u200b") produces no wordpiece
    word_ids = [None, 0, 1, 2, 2, 4, 5, None]
    tags = [3, 0, 7, 0, 0, 0]
    assert encoder.align_tags(word_ids, tags) == [-100, 3, 0, 7, -100, 0, 0, -100]


def test_align_tags_with_the_real_tokenizer():
    from kdlib.registry.models import ENCODER_ID, load_tokenizer

    tok = load_tokenizer(ENCODER_ID)
    words = ["EU", "rejects", "Britishness", "\u200b", "lamb", "."]
    tags = [1, 0, 3, 0, 0, 0]  # B-ORG O B-MISC O O O
    ids, word_ids = encoder._encode_words(tok, [words], 64)
    pieces = tok.convert_ids_to_tokens(ids[0])
    assert pieces == ["[CLS]", "eu", "rejects", "british", "##ness", "lamb", ".", "[SEP]"]
    assert encoder.align_tags(word_ids[0], tags) == [-100, 1, 0, 3, -100, 0, 0, -100]


def test_weighted_loss_matches_manual_weighting():
    import torch
    import torch.nn.functional as F

    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    labels = torch.tensor([0, 0, 1])
    weights = torch.tensor([1.0, 0.0, 2.0])
    per = F.cross_entropy(logits, labels, reduction="none")
    assert fit._weighted_loss(logits, labels, weights).item() == pytest.approx(((per[0] + 2 * per[2]) / 3).item())
    # tagging: ignored wordpieces neither count nor weigh
    tag_logits = logits.unsqueeze(0)
    tag_labels = torch.tensor([[0, -100, 1]])
    expected = (per[0] + per[2]) / 2
    assert fit._weighted_loss(tag_logits, tag_labels, torch.tensor([1.0])).item() == pytest.approx(expected.item())


# ----------------------------------------------------------------------------- training (real model and data)


def _need_mirror():
    from kdlib.lab.paths import data_mirror_dir

    path = data_mirror_dir()
    if path is None or not path.is_dir():
        pytest.skip("no dataset mirror (set KDLIB_DATA_DIR or put shared/data beside the checkout)")


@pytest.fixture(scope="module")
def sst2():
    from kdlib.registry import data

    _need_mirror()
    dd = data.load("sst2")
    return {"train": dd["train"].shuffle(seed=0).select(range(256)),
            "validation": dd["validation"].shuffle(seed=0).select(range(64)),
            "test": dd["test"].shuffle(seed=0).select(range(200))}


@pytest.fixture(scope="module")
def sst2_student(sst2):
    return student.train_classifier(sst2["train"], sst2["validation"], StudentConfig(epochs=2, min_steps=0))


@pytest.mark.slow
def test_classifier_beats_majority_class(sst2, sst2_student):
    labels = np.asarray(sst2["test"]["label"])
    majority = max(np.mean(labels == c) for c in (0, 1))
    scores = sst2_student.evaluate(sst2["test"])
    assert scores["accuracy"] > max(0.7, majority + 0.15), scores
    assert set(scores) == {"accuracy", "macro_f1", "f1/negative", "f1/positive"}
    history = sst2_student.history
    assert len(history.loss) == history.total_steps == 16 and history.evals and history.best_step


@pytest.mark.slow
def test_classifier_outputs(sst2_student):
    texts = ["a gorgeous, moving film", "tedious and badly acted", "ok"]
    proba = sst2_student.predict_proba(texts)
    assert proba.shape == (3, 2) and np.allclose(proba.sum(1), 1.0, atol=1e-5)
    assert sst2_student.predict(texts).tolist() == proba.argmax(1).tolist()
    assert sst2_student.predict_labels(texts[:2]) == ["positive", "negative"]
    emb = sst2_student.embed(texts, normalize=True)
    assert emb.shape == (3, 384) and np.allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    assert sst2_student.predict([]).shape == (0,)


@pytest.mark.slow
def test_same_seed_same_run_bit_for_bit(sst2):
    small, val = sst2["train"].select(range(24)), sst2["validation"].select(range(16))
    cfg = StudentConfig(batch_size=8, max_steps=3, min_steps=0, seed=3)
    a = student.train_classifier(small, val, cfg.replace(eval_every=2))
    b = student.train_classifier(small, val, cfg.replace(eval_every=2))
    c = student.train_classifier(small, None, cfg.replace(seed=4))
    texts = sst2["test"]["text"][:20]
    assert a.history.loss == b.history.loss and a.history.evals == b.history.evals
    assert np.array_equal(a.predict_proba(texts), b.predict_proba(texts))
    assert a.history.loss != c.history.loss
    with pytest.raises(ValueError, match="StudentConfig.metric 'auc'"):
        student.train_classifier(small, val, cfg.replace(max_steps=1, metric="auc"))


@pytest.mark.slow
def test_early_stopping_restores_the_best_evaluation(sst2):
    # a vanishing learning rate leaves the validation score flat: no improvement after step 1
    cfg = StudentConfig(batch_size=8, lr=1e-12, head_lr=1e-12, min_steps=0, max_steps=10, eval_every=1, patience=2)
    s = student.train_classifier(sst2["train"].select(range(16)), sst2["validation"].select(range(8)), cfg)
    h = s.history
    assert h.stopped_early and len(h.loss) == 3 and [e["step"] for e in h.evals] == [1, 2, 3]
    assert h.best_step == 1 and h.best_score == h.evals[0]["macro_f1"]


@pytest.mark.slow
def test_list_of_dicts_with_string_labels_and_weights(tmp_path):
    rows = [{"text": t, "label": lab} for t, lab in [
        ("an absolute delight", "pos"), ("dreadful and dull", "neg"), ("I loved every minute", "pos"),
        ("a waste of time", "neg")]]
    cfg = StudentConfig(batch_size=4, min_steps=3, max_steps=3)
    s = student.train_classifier(rows, rows, cfg, label_names=["neg", "pos"], sample_weights=[1, 1, 0.5, 0.5])
    assert s.label_names == ["neg", "pos"] and len(s.history.loss) == 3
    assert set(s.evaluate(rows)) >= {"accuracy", "macro_f1", "f1/neg", "f1/pos"}
    inferred = student.train_classifier(rows, None, cfg.replace(max_steps=1, min_steps=1))
    assert inferred.label_names == ["neg", "pos"]  # sorted distinct train labels
    loaded = student.load_student(s.save(tmp_path / "s"), device="cpu")
    assert np.array_equal(loaded.predict_proba(["fine"]), s.predict_proba(["fine"]))
    assert loaded.history.loss == s.history.loss


@pytest.mark.slow
def test_full_data_reference_is_cached(tmp_path, monkeypatch):
    import datasets

    monkeypatch.setenv("KDLIB_CACHE_DIR", str(tmp_path))
    rows = {"text": ["good", "bad", "great", "awful"], "label": [1, 0, 1, 0]}
    features = datasets.Features({"text": datasets.Value("string"), "label": datasets.ClassLabel(names=["neg", "pos"])})
    ds = datasets.Dataset.from_dict(rows, features=features)
    dd = datasets.DatasetDict({"train": ds, "validation": ds, "test": ds})
    cfg = StudentConfig(min_steps=2, max_steps=2)
    first = student.full_data_reference(dd, cfg)
    saved = list((tmp_path / "students").glob("dataset-*/student.json"))
    assert len(saved) == 1
    second = student.full_data_reference(dd, cfg)
    assert np.array_equal(first.predict_proba(["nice"]), second.predict_proba(["nice"]))
    student.full_data_reference(dd, cfg.replace(seed=1))  # another seed, another entry
    assert len(list((tmp_path / "students").glob("dataset-*/student.json"))) == 2


@pytest.mark.slow
def test_tagger_learns_conll_entities(mirror):
    from kdlib.registry import data

    dd = data.load("conll2003")
    train = dd["train"].shuffle(seed=0).select(range(320))
    test = dd["validation"].shuffle(seed=0).select(range(200))
    # 20 steps; entity F1 was 0.40, 0.40 and 0.46 for seeds 0-2 (train subsets and init)
    s = student.train_tagger(train, None, StudentConfig(batch_size=16, epochs=1, min_steps=0, lr=2e-4))
    scores = s.evaluate(test)
    assert scores["entity_f1"] > 0.3, scores
    assert {"precision", "recall", "f1/PER", "f1/LOC", "f1/ORG", "f1/MISC"} <= set(scores)
    sentence = ["John", "Smith", "lives", "in", "Berlin", "."]
    tags = s.predict([sentence, []])
    assert len(tags[0]) == len(sentence) and tags[1] == []
    assert all(t in s.label_names for t in tags[0])
