"""Prompts in the data's language, language identification and the multilingual grid's bookkeeping."""

import pytest

from kdlib.studies import multilingual_study as ml
from kdlib.synthesis import labeling, languages


def test_an_unseen_french_dataset_is_asked_for_in_french():
    from types import SimpleNamespace

    from kdlib.synthesis import synth

    names = ["negative", "neutral", "positive"]
    unseen = SimpleNamespace(names=names, spec=synth.TaskSpec.for_dataset("my_french_reviews", names))
    spec = ml.spec_in(unseen, "fr")
    assert spec.language == "fr" and spec.label_descriptions["neutral"] == "appartiennent à la catégorie « neutre »"
    assert synth.generation_prompt(spec, "neutral", 2)[0]["content"].startswith("Écris 2 exemples différents de textes")
    assert ml.spec_in(unseen, "en") is unseen.spec and ml.spec_in(unseen, "xx") is unseen.spec


def test_french_prompts_translate_the_instruction_and_the_label_words_and_english_is_unchanged():
    words = languages.label_words(["negative", "positive", "sports"], "fr")
    assert words == ["négatif", "positif", "sports"]  # an unknown label keeps its name
    fr = labeling.build_prompt("Quel navet.", words[:2], [("Superbe.", "positif")], language="fr")
    assert fr[0]["content"].startswith("Classe le texte") and fr[-1]["content"] == "Texte : Quel navet."
    en = labeling.build_prompt("What a dud.", ["negative", "positive"])
    assert en[0]["content"] == ("Classify the text into exactly one of these labels: negative, positive. "
                                "Answer with the label only.") and en[-1]["content"] == "Text: What a dud."
    with pytest.raises(ValueError, match="no prompts in language 'xx'"):
        labeling.build_prompt("x", ["a", "b"], language="xx")
    with pytest.raises(ValueError, match="not distinct"):
        languages.label_words(["positive", "positif"], "fr")


def test_languages_are_identified_from_the_texts():
    texts = ["Ce film est une merveille, je le recommande.", "Une histoire lente et sans intérêt.",
             "This film is wonderful."]
    assert languages.identify(texts + [" "]) == ["fr", "fr", "en", ""]
    assert languages.data_language(texts) == "fr" and languages.language_share(texts, "fr") == pytest.approx(2 / 3)
    with pytest.raises(ValueError, match="every text is empty"):
        languages.data_language(["", " "])


def test_annotators_and_the_students_labels_follow_the_data_language():
    assert [m for m, _, _ in ml.annotators("en")] == ["score+cal [en]", "generate [en]"]
    assert [m for m, _, _ in ml.annotators("fr", ["generate", "translate→label"])] == [
        "generate [en]", "generate [fr]", "translate→label [en]"]
    assert ml.student_method("generate", "fr") == "generate [fr]"
    assert ml.student_method("translate→label", "en") == "generate [en]"
    with pytest.raises(ValueError, match="not among the recipes run"):
        ml.student_method("score+cal", "fr", ["generate"])
    with pytest.raises(ValueError, match="unknown labelling recipes"):
        ml.annotators("fr", ["vote"])
    q = ml.label_quality(["positive", None, "negative", "positive"], ["positive", "negative", "negative", "negative"],
                         ["negative", "positive"])
    assert q["accuracy"] == 0.5 and q["parsed"] == 0.75 and q["label_tv"] == pytest.approx(0.5)
