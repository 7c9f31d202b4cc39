"""MiniLLM (Gu et al., ICLR 2024): distil a generative LM by minimising the *reverse* KL with policy gradient.

The objective is KL(q_theta || p) over whole responses y ~ q_theta(.|x). Its gradient (the paper's Eq. 5-7),
with r_t = log p(y_t|y<t, x) - log q(y_t|y<t, x) (sampled per-token log-ratio):

- **single-step part**: for each position the exact expectation over the next token,
  sum_t grad KL(q_theta(.|y<t) || p(.|y<t)), i.e. the token-level reverse KL of `kdlib.distillation.losses` on the
  sampled prefixes, low variance;
- **long-term part**: policy gradient on the future reward R_{t+1} = sum_{t' > t} r_{t'}, here with
  **length normalisation** (divided by the number of future tokens, so long answers are not favoured);
- **teacher-mixed sampling**: responses are sampled from p~ = alpha p + (1 - alpha) q_old, which keeps
  the student from reward-hacking with degenerate text; every term is reweighted by the importance
  weight q_theta(y_t) / p~(y_t);
- **PPO-style clipping** of that ratio (relative to the sampling-time value) bounds each update.
- optionally the LM loss on a pre-training corpus (``lm_weight``), which the paper adds to keep the
  student's general ability.

`sample_mixed` draws the responses (two models decoded side by side with their KV caches), `minillm_loss`
computes the loss of one sampled batch, `train_minillm` alternates them. Teacher and student must share
the tokenizer (`kdlib.distillation.distill.check_same_tokenizer`).
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from kdlib.distillation.sft import IGNORE_INDEX, SFTConfig, encode_pairs
from kdlib.distillation.train_state import Runtime, epoch_batches


@dataclass
class MiniLLMConfig(SFTConfig):
    mix_alpha: float = 0.2            # teacher share of the sampling distribution
    clip: float = 0.2                 # PPO ratio clipping (epsilon)
    gen_max_new_tokens: int = 64
    gen_temperature: float = 1.0
    length_norm: bool = True
    single_step: bool = True          # ablation switch: the exact next-token reverse KL term
    long_term: bool = True            # ablation switch: the policy-gradient term
    lm_weight: float = 0.0            # weight of the LM loss on `lm_texts`

    def __post_init__(self):
        super().__post_init__()
        if not 0 <= self.mix_alpha <= 1 or self.clip <= 0 or self.gen_temperature <= 0 or self.lm_weight < 0:
            raise ValueError("MiniLLMConfig: mix_alpha in [0, 1], clip > 0, gen_temperature > 0, lm_weight >= 0")
        if not (self.single_step or self.long_term):
            raise ValueError("MiniLLMConfig: at least one of single_step and long_term must be on")


@dataclass
class Samples:
    """A batch of sampled responses, right-padded, with what was known at sampling time."""
    input_ids: object        # [B, L] prompt + response (left part per row), pad after
    attention_mask: object   # [B, L]
    response_mask: object    # [B, L] True at response token positions
    logq_old: object         # [B, L] log q_old(y_t) at response positions (0 elsewhere)
    log_mix: object          # [B, L] log p~(y_t) at response positions (0 elsewhere)


def _mixed_logprobs(t_logits, s_logits, alpha: float, temperature: float):
    import torch

    logq = torch.log_softmax(s_logits.float() / temperature, -1)
    logp = torch.log_softmax(t_logits.float() / temperature, -1)
    if alpha == 0:
        return logq, logq
    if alpha == 1:
        return logp, logq
    mix = torch.logaddexp(logp + math.log(alpha), logq + math.log(1 - alpha))
    return mix, logq


def sample_mixed(student, teacher, prompts: Sequence[list[int]], eos_id: int, pad_id: int, *, alpha: float,
                 max_new_tokens: int, temperature: float = 1.0, seed: int = 0) -> Samples:
    """Sample one response per prompt from alpha p + (1 - alpha) q, both models decoded step by step."""
    import torch

    device = next(student.parameters()).device
    gen = torch.Generator(device="cpu").manual_seed(seed)
    n, width = len(prompts), max(len(p) for p in prompts)
    # left-pad prompts for decoding; the result is re-packed right-padded below
    ids = torch.full((n, width), pad_id, dtype=torch.long)
    attn = torch.zeros((n, width), dtype=torch.long)
    for i, p in enumerate(prompts):
        ids[i, width - len(p):], attn[i, width - len(p):] = torch.tensor(p), 1
    ids, attn = ids.to(device), attn.to(device)
    out_tokens, out_logq, out_mix = [], [], []
    done = torch.zeros(n, dtype=torch.bool, device=device)
    s_past = t_past = None
    cur_ids, cur_attn = ids, attn
    with torch.no_grad():
        for _ in range(max_new_tokens):
            pos = (cur_attn.cumsum(-1) - 1).clamp_min(0)[:, -cur_ids.shape[1]:]
            s_out = student(input_ids=cur_ids, attention_mask=cur_attn, position_ids=pos, past_key_values=s_past, use_cache=True)
            t_out = teacher(input_ids=cur_ids, attention_mask=cur_attn, position_ids=pos, past_key_values=t_past, use_cache=True)
            s_past, t_past = s_out.past_key_values, t_out.past_key_values
            log_mix, logq = _mixed_logprobs(t_out.logits[:, -1], s_out.logits[:, -1], alpha, temperature)
            tok = torch.multinomial(log_mix.exp().cpu(), 1, generator=gen).to(device).squeeze(-1)
            tok = torch.where(done, torch.full_like(tok, pad_id), tok)
            out_tokens.append(tok)
            out_logq.append(logq.gather(-1, tok[:, None]).squeeze(-1).masked_fill(done, 0.0))
            out_mix.append(log_mix.gather(-1, tok[:, None]).squeeze(-1).masked_fill(done, 0.0))
            live = ~done
            done = done | (tok == eos_id)
            cur_ids = tok[:, None]
            cur_attn = torch.cat([cur_attn, live.long()[:, None]], -1)
            if done.all():
                break
    toks, lq, lm = torch.stack(out_tokens, 1), torch.stack(out_logq, 1), torch.stack(out_mix, 1)
    lengths = (cur_attn[:, width:] if cur_attn.shape[1] > width else torch.zeros((n, 0), dtype=torch.long)).sum(-1)
    total = max(len(p) + int(k) for p, k in zip(prompts, lengths))
    B = torch.full((n, total), pad_id, dtype=torch.long)
    A = torch.zeros((n, total), dtype=torch.long)
    R = torch.zeros((n, total), dtype=torch.bool)
    LQ, LM = torch.zeros((n, total)), torch.zeros((n, total))
    for i, (p, k) in enumerate(zip(prompts, lengths.tolist())):
        B[i, :len(p)], B[i, len(p):len(p) + k] = torch.tensor(p), toks[i, :k].cpu()
        A[i, :len(p) + k], R[i, len(p):len(p) + k] = 1, True
        LQ[i, len(p):len(p) + k], LM[i, len(p):len(p) + k] = lq[i, :k].cpu(), lm[i, :k].cpu()
    return Samples(B.to(device), A.to(device), R.to(device), LQ.to(device), LM.to(device))


def future_rewards(r, mask, length_norm: bool = True):
    """R_{t+1} = sum_{t' > t} r_{t'} at each response position (0 at the last one and outside the mask),
    divided by the number of future tokens when `length_norm`. r, mask: [B, L]."""
    import torch

    r = r * mask
    suffix = r.flip(-1).cumsum(-1).flip(-1) - r          # strictly after t
    if length_norm:
        count = mask.float().flip(-1).cumsum(-1).flip(-1) - mask.float()
        suffix = torch.where(count > 0, suffix / count.clamp_min(1), torch.zeros_like(suffix))
    return suffix * mask


def minillm_loss(student, teacher, samples: Samples, config: MiniLLMConfig):
    """The loss of one batch of samples (scalar) and its parts (floats) for logging."""
    import torch

    from kdlib.distillation.losses import kd_loss

    ids, attn = samples.input_ids, samples.attention_mask
    # position t-1's logits predict token t: align everything on the predicted tokens
    mask = samples.response_mask[:, 1:]
    target = ids[:, 1:]
    s_logits = student(input_ids=ids, attention_mask=attn).logits[:, :-1]
    with torch.no_grad():
        t_logits = teacher(input_ids=ids, attention_mask=attn).logits[:, :-1]
    logq_all = torch.log_softmax(s_logits.float() / config.gen_temperature, -1)
    logq = logq_all.gather(-1, target[..., None]).squeeze(-1)
    with torch.no_grad():
        logp = torch.log_softmax(t_logits.float() / config.gen_temperature, -1).gather(-1, target[..., None]).squeeze(-1)
    logq_old, log_mix = samples.logq_old[:, 1:], samples.log_mix[:, 1:]
    # importance weight of the mixed sampler, and PPO's ratio against the sampling-time student
    weight = torch.exp(logq_old - log_mix).detach() * mask
    ratio = torch.exp(logq - logq_old)
    n = mask.sum().clamp_min(1)
    parts, loss = {}, torch.zeros((), device=ids.device)
    if config.long_term:
        advantage = future_rewards((logp - logq_old).detach(), mask, config.length_norm)
        clipped = torch.clamp(ratio, 1 - config.clip, 1 + config.clip)
        pg = -(weight * torch.minimum(ratio * advantage, clipped * advantage)).sum() / n
        loss = loss + pg
        parts["long_term"] = float(pg.detach())
    if config.single_step:
        per_token = kd_loss(s_logits, t_logits, "rkl", mask=mask, temperature=config.gen_temperature, reduction="none")
        single = (weight * per_token).sum() / n
        loss = loss + single
        parts["single_step"] = float(single.detach())
    with torch.no_grad():
        parts["reverse_kl_per_token"] = float(((logq_old - logp) * mask).sum() / n)
    return loss, parts


@dataclass
class MiniLLMHistory:
    loss: list[float] = field(default_factory=list)
    parts: list[dict] = field(default_factory=list)
    steps: int = 0
    seconds: float = 0.0
    sampled_tokens: int = 0


def train_minillm(student, teacher, tokenizer, pairs: Sequence[dict], config: MiniLLMConfig | None = None,
                  lm_texts: Sequence[str] = (), accelerator=None) -> MiniLLMHistory:
    """Train `student` in place with MiniLLM on the prompts of `pairs` (their responses are not used,
    except that a prompt must fit in `max_length`); `lm_texts` feed the optional LM loss.
    `accelerator` (an `accelerate.Accelerator`) spreads each global batch over its processes."""
    import torch

    from kdlib.distillation.distill import check_same_vocab

    check_same_vocab(student, teacher)

    config = config or MiniLLMConfig()
    rows = encode_pairs(tokenizer, pairs, config.max_length)
    prompts = [ids[:labels.index(next(y for y in labels if y != IGNORE_INDEX))] for ids, labels in rows]
    if not prompts:
        raise ValueError("no prompt left after encoding (empty data, or prompts longer than max_length)")
    lm_rows = [tokenizer(t, add_special_tokens=False)["input_ids"][:config.max_length] for t in lm_texts]
    if config.lm_weight and not lm_rows:
        raise ValueError("lm_weight > 0 needs lm_texts (a pre-training corpus)")
    total = min(config.epochs * math.ceil(len(prompts) / config.batch_size), config.max_steps or 10**12)
    params = [p for p in student.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    history, start = MiniLLMHistory(), time.monotonic()
    rt = Runtime(accelerator)
    ckpt = rt.checkpoint(config, [prompts, lm_rows], "minillm")
    first_step, saved = ckpt.restore(student, optimizer) if ckpt else (0, {})
    history = MiniLLMHistory(**saved) if saved else history
    plain = student  # the unwrapped module: sampling goes through it, never through a DDP wrapper
    student, optimizer = rt.prepare(student, optimizer)
    params = [p for p in student.parameters() if p.requires_grad]
    if accelerator:
        teacher.to(accelerator.device)
    teacher.eval()
    for step, idx in epoch_batches(len(prompts), config.batch_size, total, config.seed, start=first_step):
        batch = [prompts[i] for i in rt.shard(idx)]
        student.eval()  # sampling: no dropout
        samples = sample_mixed(plain, teacher, batch, tokenizer.eos_token_id, pad_id, alpha=config.mix_alpha,
                               max_new_tokens=config.gen_max_new_tokens, temperature=config.gen_temperature,
                               seed=config.seed * 100_003 + step)
        student.train()
        loss, parts = minillm_loss(student, teacher, samples, config)
        if config.lm_weight:
            lm = lm_rows[step % len(lm_rows)]
            ids = torch.tensor([lm], device=samples.input_ids.device)
            lm_loss = student(input_ids=ids, labels=ids).loss
            loss = loss + config.lm_weight * lm_loss
            parts["lm"] = float(lm_loss.detach())
        rt.update(loss, params, optimizer, None, config.max_grad_norm, "MiniLLM", step)
        history.loss.append(float(loss.detach()))
        history.parts.append(parts)
        history.sampled_tokens += int(samples.response_mask.sum())
        rt.save(ckpt, step + 1, total, student, optimizer, None, history)
    step = total
    if ckpt and rt.is_main:
        ckpt.finish()
    student.eval()
    history.steps, history.seconds = step, history.seconds + time.monotonic() - start
    return history
