"""Notebook hygiene, and a smoke run of every notebook through the runner with metric checks."""

import json

import nbformat
import pytest

from kdlib.lab import params, runner

NOTEBOOKS = runner.discover()

# Sensible ranges for the headline numbers each notebook emits in the smoke profile: a notebook
# that runs but produces nonsense fails here. Every notebook must have an entry.
EXPECTED = {
    "00_environment": {
        "datasets_loaded": (1, 50),
        "teacher_tokens_per_s": (0.5, 10_000),
        # the multilingual teacher (six verified GGUF slices, converted once) answers a French prompt in French
        "second_teacher_tokens_per_s": (0.2, 10_000), "second_teacher_answers_in_french": (1, 1),
        "embedding_dim": (384, 384),
        "cos_paraphrase_minus_unrelated": (0.2, 2.0),
        "spacy_entities": (2, 10),
        "instruction_pairs": (1_000, 10**6),
    },
    "01_labeling_and_coannotation": {
        # the full-data reference must beat chance (0.5 on sst2) even when capped at 300 examples
        "full_data_test_accuracy": (0.6, 1.0),
        "full_data_test_macro_f1": (0.55, 1.0),
        "fewshot_student_macro_f1": (0.0, 1.0),
        "gold_pool_student_macro_f1": (0.0, 1.0),
        "label_accuracy/zero_shot_gen": (0.0, 1.0),
        "tokens/zero_shot_gen": (1, 10**8),
        "student_macro_f1/zero_shot_gen": (0.0, 1.0),
        "label_accuracy/few_shot_gen": (0.0, 1.0),
        "tokens/few_shot_gen": (1, 10**8),
        "student_macro_f1/few_shot_gen": (0.0, 1.0),
        "label_accuracy/self_consistency": (0.0, 1.0),
        "tokens/self_consistency": (1, 10**8),
        "student_macro_f1/self_consistency": (0.0, 1.0),
        "label_accuracy/zero_shot_score": (0.0, 1.0),
        "tokens/zero_shot_score": (1, 10**8),
        "student_macro_f1/zero_shot_score": (0.0, 1.0),
        "label_accuracy/zero_shot_score_cal": (0.0, 1.0),
        "tokens/zero_shot_score_cal": (1, 10**8),
        "student_macro_f1/zero_shot_score_cal": (0.0, 1.0),
        "label_accuracy/few_shot_score": (0.0, 1.0),
        "tokens/few_shot_score": (1, 10**8),
        "student_macro_f1/few_shot_score": (0.0, 1.0),
        "label_accuracy/few_shot_score_cal": (0.0, 1.0),
        "tokens/few_shot_score_cal": (1, 10**8),
        "student_macro_f1/few_shot_score_cal": (0.0, 1.0),
        "rejection_rate/self_consistency": (0.0, 1.0),
        "fidelity/few_shot_score_cal": (0.0, 1.0),
        # half the pool goes to the gold oracle in smoke, so at least half the labels are right
        "coannotation_label_accuracy_at_max_budget": (0.5, 1.0),
        "coannotation_routing_gain_over_random": (-0.5, 0.5),
        "coannotation_student_macro_f1_at_max_budget": (0.0, 1.0),
    },
    "02_reformation_and_self_llmda": {
        "full_data_macro_f1": (0.55, 1.0),
        **{f"student_macro_f1/{m}": (0.0, 1.0) for m in (
            "gold_few_shot", "eda", "paraphrase_auggpt", "counterfactual", "self_llmda_selected",
            "self_llmda_random_instructions")},
        **{f"fidelity/{m}": (0.0, 1.0) for m in ("eda", "paraphrase_auggpt", "counterfactual")},
        **{f"tokens/{m}": (20, 10**6) for m in ("paraphrase_auggpt", "counterfactual", "self_llmda_selected",
                                                 "self_llmda_random_instructions")},
        "pool_generated_instructions": (0, 2),
        "selection_overhead_tokens": (20, 10**6),
        "selection_gain_over_random": (-1.0, 1.0),
    },
    "03_model_distillation": {
        # references trained on 200 examples must beat chance on both datasets (0.5 and 1/3 macro-F1 at most)
        **{f"full_data_macro_f1/{d}": (lo, 1.0) for d, lo in (("sst2", 0.55), ("financial_phrasebank", 0.35))},
        **{f"student_macro_f1/{d}/{m}": (0.0, 1.0) for d in ("sst2", "financial_phrasebank")
           for m in ("gold_few_shot", "zerogen", "few_shot_gen", "few_shot_gen_gold")},
        # every recipe must keep some rows, bill some tokens and judge some of its rows
        **{f"{k}/{d}/{r}": rng for d in ("sst2", "financial_phrasebank") for r in ("zerogen", "few_shot_gen")
           for k, rng in (("tokens", (50, 10**6)), ("synthetic_rows", (1, 12)), ("fidelity", (0.0, 1.0)),
                          ("distinct2", (0.3, 1.0)), ("parse_rate", (0.0, 1.5)))},
        # the constrained recipes: their answers parse (only a cut-off answer can lose its tail)
        **{f"{k}/{d}/{r}_structured": rng for d in ("sst2", "financial_phrasebank") for r in ("zerogen", "few_shot_gen")
           for k, rng in (("tokens", (50, 10**6)), ("synthetic_rows", (1, 12)), ("parse_rate", (0.5, 1.0)))},
        "teacher_tokens_total": (200, 10**7),
    },
    "04_self_improvement": {
        "full_data_macro_f1": (0.55, 1.0),
        "selftrain_round0_macro_f1": (0.0, 1.0),
        "selftrain_final_macro_f1": (0.0, 1.0),
        # threshold 0.5 in smoke: every prediction qualifies, so pseudo-labels are added and measured
        "selftrain_first_pseudo_label_accuracy": (0.0, 1.0),
        # a chat model answering real instructions overlaps its references somewhat, never perfectly
        "selfinstruct_base_rouge_l": (0.01, 0.9),
        "selfinstruct_own_data_rouge_l": (0.0, 0.9),
        "selfinstruct_real_sft_rouge_l": (0.0, 0.9),
        "selfinstruct_kept_pairs": (1, 8),
        "selfinstruct_tokens": (50, 10**6),
    },
    "05_evokd": {
        "full_data_score/sst2": (0.55, 1.0),
        # 200 CoNLL sentences, 2 epochs: the tagger finds some entities, far from all
        "full_data_score/conll2003": (0.05, 1.0),
        **{f"score/sst2/1shot/{m}": (0.0, 1.0) for m in (
            "seed_only", "static_generation", "auggpt_paraphrase", "evokd", "evokd_w_o_analysis", "evokd_w_o_stances",
            "evokd_valuation", "static_generation_reference_labels", "evokd_reference_labels",
            "static_generation_evokd_s_tokens", "static_generation_structured", "evokd_structured")},
        **{f"score/conll2003/1shot/{m}": (0.0, 1.0) for m in (
            "seed_only", "static_generation", "evokd", "evokd_w_o_analysis", "evokd_w_o_stances",
            "static_generation_reference_labels", "evokd_reference_labels", "static_generation_evokd_s_tokens",
            "static_generation_structured", "evokd_structured")},
        # constrained answers parse (the grammar guarantees the format; a cut answer may still lose its tail)
        **{f"parse_rate/{d}/1shot/{m}": (lo, 1.0) for d in ("sst2", "conll2003")
           for m, lo in (("evokd", 0.0), ("evokd_structured", 0.5))},
        # AugGPT's paraphrases always parse in the smoke run: the reference judges some of their labels
        "label_agreement/sst2/1shot/auggpt_paraphrase": (0.0, 1.0),
        "tokens/sst2/1shot/evokd": (20, 10**6),
        "tokens/conll2003/1shot/evokd": (20, 10**6),
        "runs": (20, 20),  # 11 methods on sst2, the 9 that apply to NER on conll2003
    },
    "06_mode_seeking_vs_covering": {
        # two modes at +-2.5: forward KL covers both and fills the valley, reverse KL (started at mu=1) takes one
        "covered/fkl": (0.9, 1.0), "hallucinated/fkl": (0.1, 1.0),
        "covered/rkl": (0.3, 0.7), "hallucinated/rkl": (0.0, 0.1),
        **{f"{m}/{k}": (0.0, 1.0) for m in ("covered", "hallucinated") for k in ("jsd", "skew_fkl", "skew_rkl", "tvd", "sym_kl")},
        "rkl_starts_ending_on_a_mode": (0.3, 1.0),
        "wall_s": (0, 600),
    },
    "07_instruction_following": {
        "teacher_rouge_l": (0.0, 1.0),
        "untrained_student_rouge_l": (0.0, 1.0),
        **{f"{k}/{m}": rng for m in ("sft", "kd_forward_kl", "kd_reverse_kl", "kd_jsd", "seqkd", "minillm")
           for k, rng in (("rouge_l", (0.0, 1.0)), ("rkl_to_teacher", (0.0, 50.0)),
                          ("student_mass_in_teacher_nucleus", (0.0, 1.0)))},
    },
    "08_cheaper_annotation": {
        "full_data_test_macro_f1": (0.55, 1.0),
        "fewshot_student_macro_f1": (0.0, 1.0),
        "label_accuracy/few_shot_student": (0.0, 1.0),
        **{f"{k}/{m}": rng for m in ("greedy", "greedy_structured", "contrastive")
           for k, rng in (("label_accuracy", (0.0, 1.0)), ("tokens", (16, 10**8)), ("student_macro_f1", (0.0, 1.0)))},
        # constrained to the label set, every answer is a label
        "parse_rate/label/greedy_structured": (1.0, 1.0), "parse_rate/label/greedy": (0.0, 1.0),
        # half the pool goes to the teacher: the routed labels differ from the student's on some items or not at all
        "routing_label_accuracy_at_max_fraction": (0.0, 1.0),
        "routing_gain_over_random": (-1.0, 1.0),
        "routing_student_macro_f1_at_max_fraction": (0.0, 1.0),
        **{f"{k}/{m}": rng for m in ("greedy", "greedy_structured", "contrastive")
           for k, rng in (("ner_label_entity_f1", (0.0, 1.0)), ("ner_tokens", (6, 10**8)),
                          ("ner_rejection_rate", (0.0, 1.0)))},
        "ner_fewshot_student_entity_f1": (0.0, 1.0),
        **{f"synthesis_tokens/{m}": (20, 10**7) for m in ("sampling", "sampling_structured", "contrastive", "best_of_2")},
        **{f"synthesis_rows/{m}": (0, 4) for m in ("sampling", "sampling_structured", "contrastive", "best_of_2")},
        "parse_rate/synthesis/sampling_structured": (0.5, 1.0), "parse_rate/synthesis/sampling": (0.0, 1.5),
        **{f"spec_acceptance/{t}/{d}": (0.0, 1.0) for t in ("free_generation", "ner_copy")
           for d in ("undistilled_draft", "rkl_distilled_draft", "prompt_lookup")},
        # speculation never changes greedy outputs
        "spec_identical_to_plain": (1.0, 1.0),
        "teacher_tokens_total": (100, 10**8),
    },
    "09_question_answering_and_domains": {
        **{f"{k}/squad/{m}": (0.0, 1.0) for k in ("exact_match", "f1")
           for m in ("gold_few_shot", "synthetic_only", "synthetic_gold", "full_data_reference")},
        **{f"macro_f1/{d}/{m}": (0.0, 1.0) for d, methods in (
            ("pubmedqa", ("gold_few_shot", "in_domain_synthetic", "general_domain_synthetic",
                          "in_domain_synthetic_gold", "full_data_reference")),
            ("financial_phrasebank", ("gold_few_shot", "in_domain_synthetic", "general_domain_synthetic",
                                      "full_data_reference"))) for m in methods},
        # constrained, every requested pair parses, every extractive answer is a passage span and every
        # yes/no/maybe answer is one of the three
        "yield/extractive_qa/general/parsed": (1.0, 1.0), "yield/extractive_qa/general/answer_in_passage": (1.0, 1.0),
        "yield/extractive_qa/general/deduplicated": (0.3, 1.0), "yield/extractive_qa/general/round_trip": (0.0, 1.0),
        **{f"yield/yes_no_maybe/{s}/{stage}": (1.0, 1.0) for s in ("in_domain", "general")
           for stage in ("parsed", "valid_label")},
        **{f"yield/finance/{s}/kept": (0.3, 1.0) for s in ("in_domain", "general")},
        "teacher_tokens_total": (1000, 10**8),
    },
    "10_interpretability_and_evaluation": {
        **{f"{k}/{m}": (0.0, 1.0) for k in ("macro_f1", "ece", "ece_scaled", "cue_share")
           for m in ("gold_few_shot", "teacher_labels", "synthetic_zerogen", "synthetic_gold_few_shot",
                     "gold_labels_oracle", "full_data_reference")},
        **{f"flip_rate/{g}/{m}": (0.0, 1.0) for g in ("first_names", "pronouns", "nationality")
           for m in ("gold_few_shot", "synthetic_zerogen", "full_data_reference")},
        # the smoke pool has 16 items; greedy labels held to the label set always parse
        "label_error_flags/flagged": (0, 16), "label_error_flags/base_rate": (0.0, 1.0),
        "cue_share/chance_word_share": (0.0, 1.0),
        "pool_shift/label_tv": (0.0, 1.0), "pool_shift/p_value": (0.0, 1.0),
        **{f"data_map/{src}/{r}": (0.0, 1.0) for src in ("real", "synthetic")
           for r in ("easy_to_learn", "ambiguous", "hard_to_learn")},
        "tokens/teacher_labels": (500, 10**6), "tokens/synthetic_zerogen": (100, 10**6),
    },
    "11_multilingual_teachers": {
        **{f"label_accuracy/tweet_sentiment_fr/{t}/{m}": (0.0, 1.0) for t in ("smollm2_135m_instruct", "qwen2_5_coder_0_5b_instruct")
           for m in ("generate_en", "generate_fr", "translate_label_en")},
        **{f"tokens/labels/tweet_sentiment_fr/{t}/{m}": (100, 10**6) for t in ("smollm2_135m_instruct", "qwen2_5_coder_0_5b_instruct")
           for m in ("generate_en", "generate_fr", "translate_label_en")},
        # the multilingual teacher, asked in French, writes some French (3 of 6 texts in the smoke run); the
        # English-only one need not
        "in_language/tweet_sentiment_fr/qwen2_5_coder_0_5b_instruct": (0.3, 1.0),
        "in_language/tweet_sentiment_fr/smollm2_135m_instruct": (0.0, 1.0),
        **{f"macro_f1/tweet_sentiment_fr/{st}/{m}": (0.0, 1.0) for st in ("minilm", "char_n_gram")
           for m in ("gold_few_shot", "gold_labelled_pool_oracle", "labels_smollm2_135m_instruct",
                     "labels_qwen2_5_coder_0_5b_instruct", "full_data_reference")},
        "teacher_tokens_total": (1000, 10**7),
    },
    "12_prompting_methods": {
        **{f"macro_f1/sst2/{m}": (0.0, 1.0) for m in (
            "gold_bank_few_shot", "full_data_reference",
            *(f"labels_{s}" for s in ("zero_shot", "random_demos", "kate_demos", "chain_of_thought",
                                      "cot_self_consistency", "score_cal", "instruction_ensemble")),
            *(f"synthetic_{s}" for s in ("label_conditioned", "attrprompt", "self_refine", "hard_examples")))},
        **{f"label_accuracy/sst2/{s}": (0.0, 1.0) for s in ("zero_shot", "random_demos", "kate_demos",
                                                             "chain_of_thought", "cot_self_consistency")},
        # the ensemble scores four prompt variants of six texts: never fewer than 400 tokens
        "tokens/labelling/sst2/score_cal": (100, 10**6), "tokens/labelling/sst2/instruction_ensemble": (400, 10**7),
        **{f"tokens/synthesis/sst2/{s}": (50, 10**6) for s in ("label_conditioned", "attrprompt", "self_refine",
                                                                "hard_examples")},
        "fidelity/sst2/label_conditioned": (0.0, 1.0),
        "teacher_tokens_total": (1000, 10**7),
    },
}


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_committed_without_outputs_and_with_one_parameters_cell(path):
    nb = nbformat.read(path, as_version=4)
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert not cell.outputs and cell.execution_count is None, f"{path.name}: strip outputs before committing"
    tagged = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(tagged) == 1, f"{path.name}: want exactly one cell tagged 'parameters'"
    assert nb.cells[0].cell_type == "markdown", f"{path.name}: the first cell says what the notebook shows"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_parameters_are_typed_literals_with_help(path):
    for spec in params.notebook_params(path).values():
        assert spec.type_name not in ("None", ""), f"{path.name}: parameter {spec.name} needs a type annotation"
        assert spec.help, f"{path.name}: parameter {spec.name} needs a '# help' comment"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_cells_are_short_enough_to_read(path):
    """A notebook narrates and calls kdlib: median code cell <= 10 lines, none (parameters included) > 25."""
    import statistics

    lengths = [len(c.source.splitlines()) for c in nbformat.read(path, as_version=4).cells if c.cell_type == "code"]
    assert max(lengths) <= 25, f"{path.name}: a code cell has {max(lengths)} lines; move the logic into kdlib"
    assert statistics.median(lengths) <= 10, f"{path.name}: median code cell {statistics.median(lengths)} lines"


def test_every_notebook_has_expected_metrics():
    assert {p.stem for p in NOTEBOOKS} == set(EXPECTED), "add the notebook's metric ranges to EXPECTED"


@pytest.mark.slow
def test_smoke_profile_runs_every_notebook(tmp_path):
    records = runner.run_all("smoke", out_dir=tmp_path, write_record=False)
    failures = {r["notebook"]: r["error"] for r in records if r["status"] != "ok"}
    assert not failures, f"notebooks failed: {json.dumps(failures, indent=1)[:3000]}"
    for rec in records:
        got = {m["name"]: m["value"] for m in rec["metrics"]}
        for name, (lo, hi) in EXPECTED[rec["notebook"]].items():
            assert name in got, f"{rec['notebook']} did not emit {name}"
            assert lo <= got[name] <= hi, f"{rec['notebook']}: {name} = {got[name]} outside [{lo}, {hi}]"
    index = (tmp_path / "index.html").read_text()
    assert all(f"{r['notebook']}.html" in index for r in records)


SIX_TOPICS = {
    "sports": ["The striker scored twice in the final minutes of the match.", "Our team won the cup after extra time.",
               "The marathon runner broke the course record.", "The tennis final went to five sets."],
    "weather": ["Heavy rain is expected across the north tomorrow.", "A heatwave pushed temperatures past forty degrees.",
                "Snow closed the mountain roads overnight.", "Strong winds knocked down trees along the coast."],
    "food": ["This soup needs more salt and a little lemon.", "The bakery sells fresh bread every morning.",
             "Slow-roasted tomatoes make the sauce sweeter.", "The restaurant serves handmade pasta with truffles."],
    "music": ["The band released their third album on Friday.", "She played the violin solo without a single mistake.",
              "The festival lineup includes two jazz legends.", "His new single topped the charts in a week."],
    "travel": ["The night train to Vienna leaves at ten.", "We booked a small hotel near the old harbour.",
               "Passport queues at the airport were very long.", "The ferry to the islands runs twice a day."],
    "finance": ["The central bank raised interest rates again.", "Shares fell after the company cut its forecast.",
                "The startup raised forty million in new funding.", "Bond yields climbed to a ten-year high."],
}


def _write_six_class_set(folder):
    import random

    rng = random.Random(0)
    splits = {"train": [], "validation": [], "test": []}
    for label, texts in SIX_TOPICS.items():
        for i, text in enumerate(texts * 4):  # variants: a prefix makes the copies distinct texts
            row = {"text": f"{['', 'News: ', 'Today: ', 'Update: '][i // 4]}{text}", "label": label}
            splits["train" if i < 10 else "validation" if i < 13 else "test"].append(row)
    for name, rows in splits.items():
        rng.shuffle(rows)
        (folder / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return folder


@pytest.mark.slow
def test_labelling_notebook_runs_on_an_unseen_six_class_dataset(tmp_path):
    (tmp_path / "six_topics").mkdir()
    folder = _write_six_class_set(tmp_path / "six_topics")
    records = runner.run_all("smoke", only=["01"], overrides={"dataset": str(folder), "pool_size": "24",
                                                              "student_budget.full_data_max_train": "0"},
                             out_dir=tmp_path / "reports", write_record=False)
    rec = records[0]
    assert rec["status"] == "ok", rec["error"]
    got = {m["name"]: m["value"] for m in rec["metrics"]}
    assert 0.0 <= got["label_accuracy/zero_shot_gen"] <= 1.0 and got["tokens/zero_shot_gen"] > 0
    html = (tmp_path / "reports" / "01_labeling_and_coannotation.html").read_text()
    assert "six_topics" in html or str(folder) in html
