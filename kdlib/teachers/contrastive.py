"""Contrastive decoding: an expert LM steered away from what a weaker amateur LM also finds likely.

Li et al. (2023) pick tokens by log p_expert - log p_amateur inside a plausibility set (tokens with
p_expert >= alpha * max p_expert), which removes the generic, repetitive continuations both models like.
We use the equivalent parametrisation of O'Brien & Lewis (2023):

    score = (1 + beta) * log p_expert - beta * log p_amateur,   implausible tokens at -inf

beta = 0 is the expert alone; beta -> inf approaches the original difference. The scores then go through
the usual token selection (greedy at temperature 0, or seeded sampling with the fastgen filters), so a
seed gives the same sample whatever the batch. The amateur must share the expert's tokenizer; a
layer-truncated copy of the expert (`kdlib.distillation.distill.truncated_student`) is the cheap default.
"""

from __future__ import annotations

import math

import torch

from kdlib.teachers import engine, fastgen, sampling


def contrastive_scores(expert_logits: torch.Tensor, amateur_logits: torch.Tensor, beta: float,
                       alpha: float) -> torch.Tensor:
    """[rows, vocab] contrastive scores; tokens outside the expert's plausibility set are -inf."""
    if beta < 0 or not 0 <= alpha <= 1:
        raise ValueError(f"contrastive decoding needs beta >= 0 and alpha in [0, 1], got beta={beta}, alpha={alpha}")
    if expert_logits.shape != amateur_logits.shape:
        raise ValueError(f"expert and amateur disagree on the vocabulary: logits {tuple(expert_logits.shape)} vs "
                         f"{tuple(amateur_logits.shape)}; contrastive decoding needs one shared tokenizer")
    lp_e = torch.log_softmax(expert_logits.float(), dim=-1)
    lp_a = torch.log_softmax(amateur_logits.float(), dim=-1)
    scores = (1 + beta) * lp_e - beta * lp_a
    if alpha > 0:
        cutoff = lp_e.max(dim=-1, keepdim=True).values + math.log(alpha)
        scores = scores.masked_fill(lp_e < cutoff, float("-inf"))
    return scores


def check_shared_vocab(expert, amateur) -> None:
    ve, va = expert.get_output_embeddings().weight.shape[0], amateur.get_output_embeddings().weight.shape[0]
    if ve != va:
        raise ValueError(f"the amateur's vocabulary ({va}) differs from the expert's ({ve}): contrastive "
                         "decoding needs one shared tokenizer (e.g. a layer-truncated copy of the expert)")


@torch.inference_mode()
def generate(expert, amateur, prompts: list[list[int]], params: fastgen.SamplingParams, beta: float,
             alpha: float = 0.1, seeds: list[int] | None = None, eos_token_ids=(), pad_token_id: int | None = None,
             batch_size: int = 16) -> list[fastgen.GenerationOutput]:
    """Contrastive decoding over token-id prompts, in batches of `batch_size` (halved on OOM)."""
    check_shared_vocab(expert, amateur)
    seeds = list(seeds) if seeds is not None else [0] * len(prompts)
    if len(seeds) != len(prompts):
        raise ValueError(f"got {len(seeds)} seeds for {len(prompts)} prompts")
    stop_ids = frozenset(eos_token_ids) | frozenset(params.stop_token_ids)
    pad = pad_token_id if pad_token_id is not None else (min(stop_ids) if stop_ids else 0)
    # Long prompts together: less padding per batch.
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    results: list[fastgen.GenerationOutput | None] = [None] * len(prompts)

    def run(size: int) -> None:
        todo = [i for i in order if results[i] is None]
        for k in range(0, len(todo), size):
            group = todo[k:k + size]
            outs = _generate_batch(expert, amateur, [prompts[i] for i in group], params, beta, alpha,
                                   [seeds[i] for i in group], stop_ids, pad)
            for i, out in zip(group, outs):
                results[i] = out

    fastgen.run_halving_on_oom(run, batch_size, engine._device_of(expert))
    return results  # type: ignore[return-value]


def _generate_batch(expert, amateur, prompts, params, beta, alpha, seeds, stop_ids, pad):
    device = engine._device_of(expert)
    width = max(len(p) for p in prompts)
    ids = torch.tensor([[pad] * (width - len(p)) + list(p) for p in prompts], device=device)
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts], device=device)
    gens = None if params.greedy else [torch.Generator(device=device).manual_seed(s) for s in seeds]
    out_ids: list[list[int]] = [[] for _ in prompts]
    finish = ["length"] * len(prompts)
    alive = torch.ones(len(prompts), dtype=torch.bool, device=device)
    caches = [None, None]
    step_ids, step_mask = ids, mask
    for _ in range(params.max_new_tokens):
        positions = (step_mask.cumsum(-1) - 1).clamp_min(0)[:, -step_ids.shape[1]:]
        logits = []
        for m, model in enumerate((expert, amateur)):
            out = model(input_ids=step_ids, attention_mask=step_mask, position_ids=positions,
                        past_key_values=caches[m], use_cache=True)
            caches[m] = out.past_key_values
            logits.append(out.logits[:, -1])
        scores = contrastive_scores(logits[0], logits[1], beta, alpha)
        if gens is None:
            tokens = scores.argmax(-1)
        else:
            tokens = sampling.select_tokens(scores, params, gens)
        tokens = torch.where(alive, tokens, torch.full_like(tokens, pad))
        for r, tok in enumerate(tokens.tolist()):
            if not alive[r]:
                continue
            out_ids[r].append(tok)
            if tok in stop_ids:
                finish[r] = "stop"
                alive[r] = False
        if not alive.any():
            break
        step_ids = tokens.unsqueeze(-1)
        step_mask = torch.cat([step_mask, torch.ones_like(step_ids)], dim=-1)
    return [fastgen.GenerationOutput(o, f, len(p)) for o, f, p in zip(out_ids, finish, prompts)]
