"""Train an instruction-following student from a YAML recipe, on one device or under `accelerate launch`.

    python -m kdlib.distillation.train --config configs/train/smollm2_truncated_minillm.yaml
    accelerate launch --config_file configs/accelerate/ddp.yaml -m kdlib.distillation.train --config configs/train/minillm_dolly_gpt2.yaml

A recipe names the method, the models and the data; the `train` block holds the method's config fields
(`kdlib.distillation.sft.SFTConfig`, `kdlib.distillation.distill.KDConfig`, `kdlib.distillation.minillm.MiniLLMConfig`), checked by name:

    method: minillm                # sft | word_kd | seqkd | minillm
    teacher: gpt2-xl               # HF id or folder (a fine-tuned teacher for KD methods)
    student: gpt2                  # HF id or folder, or "truncate:N" = the teacher's first N blocks
    data: dolly                    # dolly (hub; offline: the ShareGPT dump) | sharegpt | a .jsonl of instruction/response
    max_pairs: 0                   # 0 = all after filtering
    max_prompt_chars: 1500         # drop longer prompts (and responses over max_response_chars)
    max_response_chars: 1500
    eval_pairs: 500                # held out before anything else; never trained on
    eval_max_new_tokens: 256
    output_dir: runs/minillm-gpt2
    dtype: auto                    # auto | float32 | bfloat16 | float16
    train: {lr: 5.0e-6, batch_size: 8, epochs: 10, checkpoint_every: 200}

The run writes the student (`save_pretrained`), its tokenizer and `metrics.json` (ROUGE-L of greedy answers
on the held-out pairs, the teacher's too, and the history) into `output_dir`; `checkpoint_dir` defaults to
`output_dir/checkpoint`, so re-running the same command after a kill resumes exactly.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import json
import random
import sys
from pathlib import Path

METHODS = ("sft", "word_kd", "seqkd", "minillm")
_TOP = {"method", "teacher", "student", "data", "max_pairs", "max_prompt_chars", "max_response_chars", "eval_pairs",
        "eval_max_new_tokens", "output_dir", "dtype", "seed", "train"}


def load_recipe(path: str | Path) -> dict:
    import yaml

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"recipe {path} does not exist")
    recipe = yaml.safe_load(path.read_text()) or {}
    if not isinstance(recipe, dict):
        raise ValueError(f"{path}: a recipe is a mapping of settings, got {type(recipe).__name__}")
    for key in recipe:
        if key not in _TOP:
            near = difflib.get_close_matches(key, sorted(_TOP), n=1)
            raise ValueError(f"{path}: unknown setting {key!r}" + (f"; did you mean {near[0]!r}?" if near else
                                                                      f" (known: {', '.join(sorted(_TOP))})"))
    for key in ("method", "teacher", "output_dir"):
        if not recipe.get(key):
            raise ValueError(f"{path}: {key!r} is required")
    if recipe["method"] not in METHODS:
        raise ValueError(f"{path}: method must be one of {METHODS}, got {recipe['method']!r}")
    if recipe["method"] != "sft" and not recipe.get("student"):
        raise ValueError(f"{path}: {recipe['method']} needs a student (an id/folder, or truncate:N)")
    return recipe


def train_config(method: str, fields: dict | None, output_dir: Path):
    from kdlib.distillation.distill import KDConfig
    from kdlib.distillation.minillm import MiniLLMConfig
    from kdlib.distillation.sft import SFTConfig

    cls = {"sft": SFTConfig, "seqkd": SFTConfig, "word_kd": KDConfig, "minillm": MiniLLMConfig}[method]
    fields = dict(fields or {})
    known = [f.name for f in dataclasses.fields(cls)]
    for key in fields:
        if key not in known:
            near = difflib.get_close_matches(key, known, n=1)
            raise ValueError(f"train.{key} is not a {cls.__name__} field" + (f"; did you mean {near[0]!r}?" if near
                                                                            else f" (fields: {', '.join(known)})"))
    fields.setdefault("checkpoint_dir", str(output_dir / "checkpoint"))
    return cls(**fields)


def instruction_pairs(recipe: dict) -> tuple[list[dict], list[dict]]:
    """(train pairs, held-out eval pairs) after length filtering; the split is seeded and made first."""
    from kdlib.registry import data
    from kdlib.registry.instructions import load_instructions

    source = recipe.get("data", "dolly")
    if str(source).endswith((".jsonl", ".jsonl.gz", ".json")):
        rows = data.read_records(source)
    else:
        rows = list(load_instructions(source))
    pairs = []
    for r in rows:
        prompt = str(r.get("instruction", "")).strip()
        if str(r.get("context") or "").strip():  # Dolly: the context follows the instruction, as in MiniLLM
            prompt = f"{prompt}\n\n{str(r['context']).strip()}"
        response = str(r.get("response", "")).strip()
        if prompt and response and len(prompt) <= recipe.get("max_prompt_chars", 1500) \
                and len(response) <= recipe.get("max_response_chars", 1500):
            pairs.append({"instruction": prompt, "response": response})
    if not pairs:
        raise ValueError(f"no instruction/response pair in {source!r} passes the length filters")
    random.Random(recipe.get("seed", 0)).shuffle(pairs)
    n_eval = min(recipe.get("eval_pairs", 500), len(pairs) // 5)
    evals, train = pairs[:n_eval], pairs[n_eval:]
    if recipe.get("max_pairs"):
        train = train[:recipe["max_pairs"]]
    return train, evals


def _dtype(name: str, device):
    import torch

    if name in ("auto", None):
        return torch.bfloat16 if device.type == "cuda" and torch.cuda.is_bf16_supported() else torch.float32
    try:
        return getattr(torch, name)
    except AttributeError:
        raise ValueError(f"dtype must be auto, float32, bfloat16 or float16, got {name!r}") from None


def run(recipe: dict) -> dict:
    """Train as the recipe says; returns the metrics written to output_dir/metrics.json."""
    from accelerate import Accelerator

    from kdlib.distillation import distill, minillm, sft
    from kdlib.registry import models

    out = Path(recipe["output_dir"])
    method = recipe["method"]
    config = train_config(method, recipe.get("train"), out)
    accelerator = Accelerator(cpu=not _has_accelerator())
    device = accelerator.device
    dtype = _dtype(recipe.get("dtype", "auto"), device)
    train_pairs, eval_pairs = instruction_pairs(recipe)
    if method == "minillm" and config.lm_weight:
        raise ValueError("train.lm_weight > 0 needs a pre-training corpus, which the CLI does not load: set it to 0, "
                         "or call kdlib.distillation.minillm.train_minillm(..., lm_texts=...) from Python")
    teacher, tok = models.load_causal_lm(recipe["teacher"], str(device), dtype)
    spec = recipe.get("student")
    if method == "sft" and not spec:  # plain SFT fine-tunes the named model itself
        student, teacher = teacher, None
    elif str(spec).startswith("truncate:"):
        student = distill.truncated_student(teacher, int(str(spec).split(":", 1)[1]))
    else:
        student, s_tok = models.load_causal_lm(spec, str(device), dtype)
        distill.check_same_tokenizer(tok, s_tok)
    student.train()
    if method == "seqkd":  # the teacher's greedy answers replace the references
        train_pairs = distill.seqkd_pairs(teacher, tok, [p["instruction"] for p in train_pairs],
                                          max_new_tokens=recipe.get("eval_max_new_tokens", 256))
    if method in ("sft", "seqkd"):
        history = sft.train_sft(student, tok, train_pairs, config, accelerator=accelerator)
    elif method == "word_kd":
        history = distill.train_word_kd(student, teacher, tok, train_pairs, config, accelerator=accelerator)
    else:
        history = minillm.train_minillm(student, teacher, tok, train_pairs, config, accelerator=accelerator)
    metrics = {"method": method, "train_pairs": len(train_pairs), "eval_pairs": len(eval_pairs),
               "history": {k: v for k, v in dataclasses.asdict(history).items() if k != "parts"}}
    if accelerator.is_main_process:
        out.mkdir(parents=True, exist_ok=True)
        student.save_pretrained(out)
        tok.save_pretrained(out)
        refs = [p["response"] for p in eval_pairs]
        n_new = recipe.get("eval_max_new_tokens", 256)
        for name, model in (("student", student), ("teacher", teacher)):
            if model is None:
                continue
            answers = sft.generate_responses(model, tok, [p["instruction"] for p in eval_pairs], max_new_tokens=n_new)
            scores = sft.rouge_l_scores(answers, refs)
            metrics[f"{name}_rouge_l"] = sum(scores) / max(len(scores), 1)
        (out / "metrics.json").write_text(json.dumps(metrics, indent=1))
        teacher_note = f", teacher {metrics['teacher_rouge_l']:.4f}" if "teacher_rouge_l" in metrics else ""
        print(f"[kdlib.distillation.train] {method}: student ROUGE-L {metrics['student_rouge_l']:.4f}{teacher_note} on "
              f"{len(eval_pairs)} held-out pairs; saved to {out}")
    accelerator.wait_for_everyone()
    return metrics


def _has_accelerator() -> bool:
    import torch

    return torch.cuda.is_available()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m kdlib.distillation.train", description=__doc__.split("\n")[0])
    parser.add_argument("--config", required=True, help="a YAML recipe (see configs/train/)")
    parser.add_argument("--output-dir", default=None, help="override the recipe's output_dir")
    args = parser.parse_args(argv)
    try:
        recipe = load_recipe(args.config)
    except (FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.output_dir:
        recipe["output_dir"] = args.output_dir
    run(recipe)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
