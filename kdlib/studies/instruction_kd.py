"""Notebook 07's comparison: generative distillation methods on instruction following, at one step budget.

Every (method, seed) trains a fresh copy of the teacher's first `layers` blocks: SFT on the real responses,
word-level KD with forward KL, reverse KL or JSD (`kdlib.distillation.distill`), SeqKD (SFT on the teacher's greedy
answers) or MiniLLM (`kdlib.distillation.minillm`); each is then scored by `evaluate` (ROUGE-L of greedy answers on the
held-out split, answer length, teacher-forced KL and nucleus-mass diagnostics).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

METHODS = ("SFT", "KD (forward KL)", "KD (reverse KL)", "KD (JSD)", "SeqKD", "MiniLLM")
_KD_LOSS = {"KD (forward KL)": "fkl", "KD (reverse KL)": "rkl", "KD (JSD)": "jsd"}


def check_methods(methods: Sequence[str]) -> None:
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise ValueError(f"unknown methods {unknown} (known: {list(METHODS)})")


@dataclass
class Budget:
    """What every method gets: the same optimiser steps, batch, learning rate and sequence length."""
    steps: int
    batch_size: int
    lr: float
    max_length: int
    jsd_beta: float = 0.5
    minillm_mix_alpha: float = 0.2
    gen_max_new_tokens: int = 48
    checkpoint_root: str | None = None   # per-run checkpoints (resume after a kill), or None
    checkpoint_every: int = 0

    def common(self, method: str, seed: int) -> dict:
        out = dict(max_steps=self.steps, epochs=10_000, batch_size=self.batch_size, lr=self.lr,
                   max_length=self.max_length, seed=seed)
        if self.checkpoint_root and self.checkpoint_every:
            from kdlib.lab.emit import metric_key

            out.update(checkpoint_dir=f"{self.checkpoint_root}/{metric_key(method)}-seed{seed}",
                       checkpoint_every=self.checkpoint_every)
        return out


def evaluate(model, teacher, tokenizer, pairs: Sequence[dict], *, max_new_tokens: int, batch_size: int,
             max_length: int) -> tuple[list[str], dict]:
    """Greedy answers to the pairs' instructions and the scores: ROUGE-L against the responses, answer words,
    and the teacher-forced diagnostics against the teacher."""
    from kdlib.distillation import distill, sft

    answers = sft.generate_responses(model, tokenizer, [p["instruction"] for p in pairs], max_new_tokens=max_new_tokens,
                                     batch_size=batch_size)
    diag = distill.teacher_forced_diagnostics(model, teacher, tokenizer, pairs, max_length=max_length)
    return answers, {"rouge_l": float(np.mean(sft.rouge_l_scores(answers, [p["response"] for p in pairs]))),
                     "answer_words": float(np.mean([len(a.split()) for a in answers])), **diag}


def train(method: str, student, teacher, tokenizer, pairs: Sequence[dict], seqkd_pairs: Sequence[dict],
          budget: Budget, seed: int):
    """Train `student` in place with one method; returns its history (`.loss` per step)."""
    from kdlib.distillation import distill, minillm, sft

    common = budget.common(method, seed)
    if method in ("SFT", "SeqKD"):
        return sft.train_sft(student, tokenizer, pairs if method == "SFT" else seqkd_pairs, sft.SFTConfig(**common))
    if method in _KD_LOSS:
        return distill.train_word_kd(student, teacher, tokenizer, pairs,
                                     distill.KDConfig(loss=_KD_LOSS[method], beta=budget.jsd_beta, **common))
    return minillm.train_minillm(student, teacher, tokenizer, pairs, minillm.MiniLLMConfig(
        mix_alpha=budget.minillm_mix_alpha, gen_max_new_tokens=budget.gen_max_new_tokens, warmup_ratio=0.0, **common))


def compare(methods: Sequence[str], seeds: Sequence[int], teacher, tokenizer, layers: int, pairs: Sequence[dict],
            seqkd_pairs: Sequence[dict], budget: Budget, score, progress: bool = True):
    """Every (method, seed) from a fresh truncated student; `score(model) -> (answers, scores)`.
    Returns (runs frame with train_s, final_loss and the scores; answers by (method, seed); losses by (method, seed))."""
    import pandas as pd

    from kdlib.distillation.distill import truncated_student

    check_methods(methods)
    jobs = [(m, s) for m in methods for s in seeds]
    if progress:
        from kdlib.lab.progress import track

        jobs = track(jobs, desc="students")
    runs, answers_of, losses = [], {}, {}
    for method, s in jobs:
        student = truncated_student(teacher, layers).train()
        start = time.monotonic()
        hist = train(method, student, teacher, tokenizer, pairs, seqkd_pairs, budget, s)
        train_s = time.monotonic() - start
        answers_of[method, s], scores = score(student)
        losses[method, s] = hist.loss
        runs.append({"method": method, "seed": s, "train_s": train_s, "final_loss": hist.loss[-1], **scores})
        del student
    return pd.DataFrame(runs), answers_of, losses


def loss_curves(histories: dict, seed: int, window: int = 5):
    """Training losses of one seed as a long frame (method, step, loss), smoothed by a rolling mean of `window`
    steps; `histories` maps (method, seed) to the per-step losses `compare` returns."""
    import pandas as pd

    frames = [pd.DataFrame({"method": m, "step": range(len(losses)),
                            "loss": pd.Series(losses, dtype=float).rolling(window, min_periods=1).mean()})
              for (m, s), losses in histories.items() if s == seed]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=["method", "step", "loss"])
