"""Self-Instruct (Wang et al., 2023): a model writes instructions and answers, and learns from them.

1. Tasks: from a few seed instructions, the model writes new ones (`instruction_pool.grow` with
   Self-Instruct's prompt and filters: ROUGE-L novelty < 0.7 against the pool, a keyword filter
   for tasks a text model cannot do (images, files, links), 3 to 150 words).
2. Answers: the same model answers each new instruction (greedy, cached).
3. Filters on the pairs, each rejection counted: empty or cut-off answers, answers that only
   repeat the instruction, answers too short to teach anything.
The surviving pairs fine-tune the model (`kdlib.distillation.sft`); the notebook evaluates on held-out real
instructions against their references.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from kdlib.parsing.dedup import rouge_l
from kdlib.parsing.parse import ParseReport
from kdlib.synthesis.instruction_pool import Pool, grow

# Self-Instruct's blacklist: tasks about images, files, links and the like cannot be done by a text model.
# Its "plot" is left out: "the plot of Hamlet" is a text task.
_EXCLUDE = re.compile(r"\b(image|images|picture|pictures|photo|graph|graphs|diagram|flowchart|file|files|draw|map|maps|"
                      r"video|audio|go to|url|link|http)\b", re.I)
_ECHO = re.compile(r"\b(new tasks?|numbered list|the examples above|instructions? of the same kind)\b", re.I)


def task_prompt(shown: Sequence[str], n: int) -> list[dict]:
    lines = ["Here are examples of tasks people ask an AI assistant to do:"]
    lines += [f"{i}. {' '.join(s.split())}" for i, s in enumerate(shown, 1)]
    lines.append(f"Come up with {n} new, diverse tasks, different from the examples. "
                 "Answer with a numbered list, one task per line, and nothing else.")
    return [{"role": "user", "content": "\n".join(lines)}]


def task_check(text: str) -> str | None:
    """Why a generated task is refused (a rejection reason), or None."""
    words = len(text.split())
    if words < 3 or words > 150:
        return "task_length"
    if _ECHO.search(text):
        return "echoes_the_request"
    if _EXCLUDE.search(text):
        return "needs_non_text_io"
    return None


def generate_tasks(teacher, seed_instructions: Sequence[str], size: int, **kw) -> Pool:
    """Grow a task pool from `seed_instructions` (shown 4 at a time, Self-Instruct shows 8)."""
    kw.setdefault("shown", 4)
    kw.setdefault("min_chars", 15)
    kw.setdefault("max_chars", 600)
    return grow(teacher, list(seed_instructions), size, make_prompt=task_prompt, check=task_check, **kw)


def answer(teacher, instructions: Sequence[str], max_new_tokens: int = 160, seed: int = 0) -> list[dict]:
    """The model's greedy answer to each instruction, with how it ended and what it cost."""
    outs = teacher.generate([[{"role": "user", "content": x}] for x in instructions], seed=seed,
                            temperature=0.0, max_new_tokens=max_new_tokens)
    return [{"instruction": x, "response": c.text.strip(), "finish_reason": c.finish_reason,
             "tokens": c.prompt_tokens + c.completion_tokens} for x, c in zip(instructions, outs)]


def filter_pairs(pairs: Sequence[dict], min_words: int = 3, max_overlap: float = 0.8, drop_unfinished: bool = True
                 ) -> tuple[list[dict], ParseReport]:
    """Keep pairs with a finished (unless `drop_unfinished` is off), non-trivial answer that does more
    than repeat its instruction."""
    report = ParseReport(n_inputs=len(pairs))
    for p in pairs:
        response = p["response"]
        if not response:
            report.reject(p["instruction"], "empty_response")
        elif drop_unfinished and p.get("finish_reason") == "length":
            report.reject(response, "unfinished_response")  # cut by max_new_tokens: it would teach rambling
        elif len(response.split()) < min_words:
            report.reject(response, "response_too_short")
        elif rouge_l(response, p["instruction"]) >= max_overlap:
            report.reject(response, "repeats_instruction")
        else:
            report.kept.append({"instruction": p["instruction"], "response": response})
    return report.kept, report


def study(lm, model_id: str, seed_pool, real_pool, seeds: Sequence[int], evaluate, sft_config, *, seed_tasks: int,
          task_pool_size: int, answer_max_new_tokens: int, keep_unfinished: bool = False, device: str = "cpu"):
    """Notebook 04's Self-Instruct comparison, per seed: grow a task pool from `seed_tasks` real instructions,
    let the model answer its own tasks, filter the pairs, then fine-tune a fresh copy of the model on them and,
    as the baseline, another on as many real pairs. `evaluate(model, tokenizer) -> (answers, rouge_l scores)`.
    Returns (one row per method and seed, {seed: what was generated and what it cost})."""
    import dataclasses

    import numpy as np
    import pandas as pd

    from kdlib.distillation import sft
    from kdlib.registry import data, models

    runs, generated = [], {}
    for s in seeds:
        shown = list(data.sample(seed_pool, seed_tasks, s)["instruction"])
        tasks = generate_tasks(lm, shown, task_pool_size, seed=s, max_new_tokens=200, requests_per_round=8, max_rounds=6)
        answered = answer(lm, tasks.generated, max_new_tokens=answer_max_new_tokens, seed=s)
        pairs, report = filter_pairs(answered, drop_unfinished=not keep_unfinished)
        generated[s] = {"pool": tasks, "answered": answered, "pairs": pairs, "report": report,
                        "tokens": tasks.tokens + sum(a["tokens"] for a in answered)}
        real = [{"instruction": r["instruction"], "response": r["response"]}
                for r in data.sample(real_pool, max(len(pairs), 1), s)]
        for method, train_pairs in (("Self-Instruct (own data)", pairs), ("real-data SFT (same size)", real)):
            if not train_pairs:
                print(f"seed {s}: {method} has no training pairs; skipped")
                continue
            model, tok = models.load_causal_lm(model_id, device=device)
            hist = sft.train_sft(model, tok, train_pairs, dataclasses.replace(sft_config, seed=s))
            answers, scores = evaluate(model, tok)
            runs.append({"method": method, "seed": s, "n_pairs": len(train_pairs), "steps": hist.steps,
                         "final_loss": hist.loss[-1], "rouge_l": float(np.mean(scores)),
                         "answer_words": float(np.mean([len(a.split()) for a in answers])), "train_s": hist.seconds})
            del model
    return pd.DataFrame(runs), generated
