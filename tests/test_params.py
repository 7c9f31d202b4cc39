"""Parameters: checked against the notebooks' parameters cells before anything runs."""

import pytest

from kdlib.lab import params

SPECS = {
    "01_a": {"seed": params.ParamSpec("seed", "int", "0", "seed"),
             "lr": params.ParamSpec("lr", "float", "0.1", "learning rate"),
             "dataset": params.ParamSpec("dataset", "str", "'sst2'", "dataset"),
             "shots": params.ParamSpec("shots", "list[int]", "[1]", "k values"),
             "fast": params.ParamSpec("fast", "bool", "False", "")},
    "02_b": {"seed": params.ParamSpec("seed", "int", "0", "seed")},
}


def test_profile_then_notebook_then_cli_layers():
    profile = {"parameters": {"seed": 1}, "notebooks": {"01_a": {"lr": 2}}}
    out = params.resolve(SPECS, profile, {"seed": "5", "shots": "[1, 5]", "fast": "true", "dataset": "123"})
    assert out["01_a"] == {"seed": 5, "lr": 2.0, "shots": [1, 5], "fast": True, "dataset": "123"}
    assert isinstance(out["01_a"]["lr"], float)
    assert out["02_b"] == {"seed": 5}


def test_profile_wide_value_declared_elsewhere_in_the_lab_is_no_error():
    only_b = {"02_b": SPECS["02_b"]}
    profile = {"parameters": {"lr": 0.5}}
    with pytest.raises(params.ParameterError, match="profile parameters"):
        params.resolve(only_b, profile, {})
    assert "lr" not in params.resolve(only_b, profile, {}, lab_names={"lr", "seed"})["02_b"]
    with pytest.raises(params.ParameterError, match="profile parameters"):
        params.resolve(only_b, {"parameters": {"lrr": 0.5}}, {}, lab_names={"lr", "seed"})


def test_misspelt_parameter_is_refused_with_a_suggestion():
    with pytest.raises(params.ParameterError, match=r"unknown parameter 'sed' \(command line\)\. Did you mean 'seed'"):
        params.resolve(SPECS, {}, {"sed": "1"})
    with pytest.raises(params.ParameterError, match=r"unknown parameter 'learning_rate' \(profile, 01_a\)"):
        params.resolve(SPECS, {"notebooks": {"01_a": {"learning_rate": 1}}}, {})


@pytest.mark.parametrize("name, value", [("seed", "1.5"), ("seed", "abc"), ("lr", "fast"), ("shots", "[1, 'x']"),
                                         ("fast", "maybe"), ("seed", "true")])
def test_ill_typed_values_name_the_parameter(name, value):
    with pytest.raises(params.ParameterError, match=f"parameter '{name}' \\(command line\\) must be"):
        params.resolve(SPECS, {}, {name: value})


def test_overrides_must_be_key_value():
    assert params.parse_overrides(["a=1", "b=x=y"]) == {"a": "1", "b": "x=y"}
    with pytest.raises(params.ParameterError, match="key=value"):
        params.parse_overrides(["seed"])


def test_unknown_profile_and_profile_keys(tmp_path):
    with pytest.raises(params.ParameterError, match="unknown profile 'fast'; available: .*smoke"):
        params.load_profile("fast")
    (tmp_path / "x.yaml").write_text("paramters: {seed: 1}\n")
    with pytest.raises(params.ParameterError, match="unknown top-level keys"):
        params.load_profile("x", tmp_path)
    with pytest.raises(params.ParameterError, match="unknown notebook '03_c'"):
        params.check_profile_notebooks({"notebooks": {"03_c": {}}}, set(SPECS), "x")


BUDGET = {"03_c": {"student_budget": params.ParamSpec(
    "student_budget", "dict", '{"epochs": 5, "max_steps": 80, "lr": 5e-5, "note": "x"}', "budget")}}


def test_dict_parameter_merges_parts_over_its_default():
    profile = {"notebooks": {"03_c": {"student_budget": {"max_steps": 40}}}}
    out = params.resolve(BUDGET, profile, {"student_budget.epochs": "2", "student_budget.lr": "1"})
    assert out["03_c"]["student_budget"] == {"epochs": 2, "max_steps": 40, "lr": 1.0, "note": "x"}
    assert isinstance(out["03_c"]["student_budget"]["lr"], float)
    whole = params.resolve(BUDGET, {}, {"student_budget": "{max_steps: 7}"})
    assert whole["03_c"]["student_budget"] == {"epochs": 5, "max_steps": 7, "lr": 5e-5, "note": "x"}
    assert "student_budget" not in params.resolve(BUDGET, {}, {})["03_c"]  # the notebook's default applies


def test_dict_parameter_refuses_unknown_or_ill_typed_keys():
    with pytest.raises(params.ParameterError, match=r"unknown parameter 'student_budget.max_step' \(command line\)"
                                                    r"\. Did you mean 'student_budget.max_steps'"):
        params.resolve(BUDGET, {}, {"student_budget.max_step": "40"})
    with pytest.raises(params.ParameterError, match=r"'student_budget.epochs' \(profile, 03_c\) must be like 5"):
        params.resolve(BUDGET, {"notebooks": {"03_c": {"student_budget": {"epochs": "many"}}}}, {})
    with pytest.raises(params.ParameterError, match=r"parameter 'student_budget' \(command line\) must be dict"):
        params.resolve(BUDGET, {}, {"student_budget": "40"})
    with pytest.raises(params.ParameterError, match="unknown parameter 'budget'"):
        params.resolve(BUDGET, {}, {"budget.max_steps": "40"})
