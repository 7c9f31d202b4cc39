"""Small pieces every notebook uses: emit, progress, setup."""

import math

import nbformat
import pytest

from kdlib.lab import emit, progress, setup


def test_emit_records_and_collects_from_a_notebook_node():
    rec = emit.emit("accuracy", 0.8125, std=0.01, unit="", higher_is_better=True)
    assert rec == {"name": "accuracy", "value": 0.8125, "std": 0.01, "higher_is_better": True}
    nb = nbformat.v4.new_notebook()
    cell = nbformat.v4.new_code_cell("")
    cell.outputs = [nbformat.v4.new_output("display_data", data={emit.METRIC_MIME: rec, "text/plain": "x"})]
    nb.cells = [cell]
    assert emit.collect(nb) == [rec]


@pytest.mark.parametrize("value", [math.nan, math.inf, None, [1.0], True])
def test_emit_refuses_values_that_are_not_finite_numbers(value):
    with pytest.raises((TypeError, ValueError), match="metric 'loss'"):
        emit.emit("loss", value)


def test_emit_refuses_bad_names():
    with pytest.raises(ValueError, match="metric name"):
        emit.emit("my metric!", 1)


def test_format_value():
    assert emit.format_value(0.123456, 0.0123) == "0.1235 ± 0.012"
    assert emit.format_value(7) == "7"


def test_headless_progress_prints_plain_lines(monkeypatch, capsys):
    monkeypatch.setenv("KDLIB_HEADLESS", "1")
    assert list(progress.track(range(5), desc="work", min_interval_s=0)) == [0, 1, 2, 3, 4]
    err = capsys.readouterr().err
    assert "work: 1/5" in err and "work: done 5/5" in err and "\r" not in err
    list(progress.track(range(200), desc="long", min_interval_s=0))
    lines = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("long")]
    assert len(lines) == 11 and lines[0].startswith("long: 20/200 (") and lines[-1].startswith("long: done 200/200")


def test_seed_everything_repeats_and_device_checks():
    import torch

    setup.seed_everything(3)
    a = torch.rand(3)
    setup.seed_everything(3)
    assert torch.equal(a, torch.rand(3))
    assert setup.pick_device("cpu") == "cpu"
    with pytest.raises(ValueError, match="unknown device 'tpu'"):
        setup.pick_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="CUDA is not available"):
            setup.pick_device("cuda")
    with pytest.raises(ValueError, match="unknown dtype"):
        setup.pick_dtype("cpu", "float8")


def test_metric_key_from_labels():
    from kdlib.lab.emit import metric_key

    assert metric_key("few-shot gen + gold") == "few_shot_gen_gold"
    assert metric_key("Self-LLMDA (selected)") == "self_llmda_selected"
    with pytest.raises(ValueError, match="no letter"):
        metric_key(" -- ")
