"""`python -m kdlib.distillation.train`: recipe checks, a real single-process run, and a real 2-process DDP run on CPU."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from kdlib.distillation import train

ROOT = Path(__file__).resolve().parents[1]
PAIRS = [{"instruction": f"Count from 1 to {n}.", "response": ", ".join(str(i) for i in range(1, n + 1))}
         for n in range(2, 22)]


def recipe(tmp_path, **over):
    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps(p) + "\n" for p in PAIRS))
    r = {"method": "word_kd", "teacher": "HuggingFaceTB/SmolLM2-135M-Instruct", "student": "truncate:2",
         "data": str(data), "eval_pairs": 2, "eval_max_new_tokens": 8, "output_dir": str(tmp_path / "out"),
         "dtype": "float32", "train": {"loss": "rkl", "batch_size": 2, "max_steps": 2, "max_length": 64}}
    r.update(over)
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(r))
    return path


def test_recipe_mistakes_are_named(tmp_path):
    with pytest.raises(ValueError, match="did you mean 'teacher'"):
        train.load_recipe(recipe(tmp_path, teachr="x"))
    with pytest.raises(ValueError, match="method must be one of"):
        train.load_recipe(recipe(tmp_path, method="distil"))
    with pytest.raises(ValueError, match="did you mean 'lr'"):
        train.train_config("word_kd", {"lrr": 1e-4}, tmp_path)
    with pytest.raises(FileNotFoundError):
        train.load_recipe(tmp_path / "missing.yaml")
    assert train.main(["--config", str(tmp_path / "missing.yaml")]) == 2


def test_single_process_run_writes_model_and_metrics(tmp_path):
    from transformers import AutoModelForCausalLM

    metrics = train.run(train.load_recipe(recipe(tmp_path)))
    out = tmp_path / "out"
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["history"]["steps"] == 2 and saved["train_pairs"] == len(PAIRS) - 2 and saved["eval_pairs"] == 2
    assert 0 <= saved["student_rouge_l"] <= 1 and 0 <= saved["teacher_rouge_l"] <= 1
    assert metrics["student_rouge_l"] == saved["student_rouge_l"]
    model = AutoModelForCausalLM.from_pretrained(out)
    assert model.config.num_hidden_layers == 2
    assert not (out / "checkpoint" / "state.pt").exists()


@pytest.mark.slow
def test_ddp_on_two_cpu_processes(tmp_path):
    path = recipe(tmp_path, method="minillm", train={"batch_size": 2, "max_steps": 2, "max_length": 64,
                                                     "gen_max_new_tokens": 4})
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    launcher = Path(sys.executable).with_name("accelerate")
    proc = subprocess.run([str(launcher), "launch", "--cpu", "--num_processes", "2", "--num_machines", "1",
                           "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "kdlib.distillation.train",
                           "--config", str(path)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    saved = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert saved["history"]["steps"] == 2 and saved["method"] == "minillm"
