"""GPU readiness suite: the CUDA paths run, and the distillation stack is measured against what people use.

    python bench/gpu_suite.py                        # one GPU, ~5-8 min -> reports/bench/gpu.{json,md}
    python bench/gpu_suite.py --only losses generation   # some sections (the others keep their last results)
    python bench/gpu_suite.py --quick --out /tmp/g   # tiny shapes, CPU or GPU: checks the script itself

No weights travel to a lent GPU machine, so every model here is **randomly initialised at a real size**
(configs below: a Qwen2.5-1.5B-shaped teacher and a Qwen2.5-0.5B-shaped student, vocabulary 151,936, bf16);
prompts are built with SmolLM2's tokenizer (a few MiB, `--tokenizer`). Speed does not depend on the weights'
values, so the timings are those of the real architectures; quality is not measured here. Sections:

* ``tests``: ``pytest -m gpu`` (tests/test_gpu.py: every loss and the fused-head loss in bf16 against the fp32
  naive reference, values and gradients; fastgen greedy = HF generate; one step of each trainer on CUDA).
* ``losses``: one KD step's loss at vocabulary 151,936 and 8,192 tokens, bf16, from hidden states (student
  H 896, teacher H 1536): output layer + naive loss, output layer + `kdlib.distillation.losses.kd_loss`,
  `kdlib.distillation.fused_losses.kd_loss_from_hidden`, Liger-Kernel's `LigerFusedLinearJSD`; forward +
  backward time (median of CUDA-event timings) and peak memory above the inputs; plus a chunk-size sweep of
  the fused loss. Target: fused peak memory <= Liger's and time <= 1.2x Liger's.
* ``onpolicy``: one fully on-policy GKD step (JSD, lambda 1), batch 16, 128 new tokens sampled by the
  student, kdlib (`train_word_kd`, fused head) vs TRL's `GKDTrainer` on the same models; tokens/s, and the
  model-FLOPs utilisation of the student's training part (forward + loss + backward + AdamW, timed alone).
  Targets: >= 1.5x TRL's tokens/s; >= 40% MFU.
* ``generation``: teacher (1.5B-shaped) greedy decoding of 64 chat prompts: `kdlib.teachers.fastgen` vs HF
  `generate` vs transformers' continuous batching (`generate_batch`), and a torch.profiler pass of 16 tokens.
  A random model never says EOS, so `StoppingHead` makes EOS its argmax at ~1/64 of the positions (from a hash
  of the hidden state): rows end at different lengths, as with a real teacher, by the same rule for every method.
* ``notebook``: notebook 06 through the lab's papermill runner with the gpu profile (``device=cuda``).

Each section's result (or its error) is written to the JSON as soon as it ends, so a run cut short keeps what
finished. MFU is reported against the bf16 matrix rate measured in the same run (8192^3 products) and against
the datasheet's 989 TFLOP/s.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SECTIONS = ("tests", "losses", "onpolicy", "notebook", "generation")  # in run order
DATASHEET_BF16_TFLOPS = 989.0  # H100/H200 SXM dense bf16, the vendor's figure
GIB = 2**30
DEADLINE = [float("inf")]  # time.monotonic() after which optional repeats are skipped (--budget)
TARGETS = {"fused_mem_vs_liger": 1.0, "fused_time_vs_liger": 1.2, "onpolicy_vs_trl": 1.5, "student_mfu": 0.40}

# Qwen2.5-1.5B-Instruct and Qwen2.5-0.5B-Instruct, as their config.json files declare them
TEACHER_SHAPE = dict(vocab_size=151936, hidden_size=1536, intermediate_size=8960, num_hidden_layers=28,
                     num_attention_heads=12, num_key_value_heads=2, tie_word_embeddings=True)
STUDENT_SHAPE = dict(vocab_size=151936, hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
                     num_attention_heads=14, num_key_value_heads=2, tie_word_embeddings=True)
FULL = dict(loss_tokens=8192, loss_vocab=151936, loss_reps=5, chunk_sweep=(256, 512, 1024, 2048, 4096),
            batch=16, new_tokens=128, kd_steps=3, gen_batch=64, gen_tokens=128, gen_reps=2)
QUICK = dict(loss_tokens=256, loss_vocab=4096, loss_reps=2, chunk_sweep=(64, 128),
             batch=4, new_tokens=8, kd_steps=1, gen_batch=8, gen_tokens=8, gen_reps=1)
QUICK_SHAPE = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                   num_key_value_heads=2)

TOPICS = ["the French revolution", "photosynthesis", "a rainy Monday", "black holes", "the stock market",
          "a cat that learned to code", "sourdough bread", "the Roman empire", "vaccines", "climate change",
          "a chess opening", "the moon landing", "jazz", "a job interview", "electric cars", "honey bees"]
ASKS = ["Write a short story about {}.", "Explain {} to a ten-year-old.", "Give three facts about {}.",
        "Write a haiku about {}."]


# ----------------------------------------------------------------------------------------------- helpers

def cuda_time(fn, reps: int, warmup: int = 1) -> list[float]:
    """Seconds per call, CUDA events around each call (host clock on CPU), after `warmup` calls."""
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(reps):
        if torch.cuda.is_available():
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            a.record()
            fn()
            b.record()
            torch.cuda.synchronize()
            out.append(a.elapsed_time(b) / 1000)
        else:
            t0 = time.perf_counter()
            fn()
            out.append(time.perf_counter() - t0)
    return out


def sync():
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def matmul_tflops(device: str) -> float | None:
    """Measured bf16 matrix rate: 8192^3 products on random data, mean of 10 after 3 warm-ups."""
    if device != "cuda":
        return None
    a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    times = cuda_time(lambda: a @ b, reps=10, warmup=3)
    return 2 * 8192**3 / statistics.mean(times) / 1e12


def random_lm(shape: dict, device: str, dtype, tok, seed: int, quick: bool):
    """A Qwen2 causal LM of `shape`, randomly initialised directly on `device` in `dtype`."""
    from transformers import AutoModelForCausalLM, Qwen2Config

    cfg = Qwen2Config(**{**shape, **(QUICK_SHAPE if quick else {})}, max_position_embeddings=4096,
                      eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id)
    torch.manual_seed(seed)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(cfg, dtype=dtype)
    model.generation_config.eos_token_id = tok.eos_token_id
    model.generation_config.pad_token_id = tok.pad_token_id
    return model.eval()


def n_params(model, embeddings: bool = True) -> int:
    emb = model.get_input_embeddings().weight
    total = sum(p.numel() for p in model.parameters())
    return total if embeddings else total - emb.numel()


def chat_prompts(tok, n: int) -> list[list[int]]:
    out = []
    for i in range(n):
        text = ASKS[i % len(ASKS)].format(TOPICS[(i // len(ASKS) + i) % len(TOPICS)])
        enc = tok.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True,
                                      tokenize=True, return_dict=True)
        out.append(list(enc["input_ids"]))
    return out


def load_tokenizer(path: str | None):
    """The tokenizer files in `path` (all a GPU machine has), else the offline SmolLM2 asset."""
    from transformers import AutoTokenizer

    from kdlib.registry.models import TEACHER_ID
    from kdlib.registry.models import load_tokenizer as load

    tok = AutoTokenizer.from_pretrained(path) if path else load(TEACHER_ID)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def peak_extra(fn) -> tuple[object, int]:
    """(result, peak bytes allocated during fn beyond what was allocated before it); CUDA only, else 0."""
    if not torch.cuda.is_available():
        return fn(), 0
    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    out = fn()
    torch.cuda.synchronize()
    return out, torch.cuda.max_memory_allocated() - before


# ----------------------------------------------------------------------------------------------- sections

def section_tests(args, cfg) -> dict:
    """pytest -m gpu in a child process; counts from its JUnit XML."""
    import xml.etree.ElementTree as ET

    xml = Path(tempfile.mkdtemp()) / "gpu_tests.xml"
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    if args.tokenizer:
        env["KDLIB_TEST_TOKENIZER"] = args.tokenizer
    cmd = [sys.executable, "-m", "pytest", "-q", "-m", "gpu", "tests/test_gpu.py", "-p", "no:cacheprovider",
           f"--junitxml={xml}"]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    suite = ET.parse(xml).getroot().find("testsuite") if xml.is_file() else None
    failures = []
    if suite is not None:
        for case in suite.iter("testcase"):
            bad = case.find("failure") if case.find("failure") is not None else case.find("error")
            if bad is not None:
                failures.append({"test": case.get("name"), "message": (bad.get("message") or "")[:500]})
    counts = {k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")} if suite is not None else {}
    return {"exit_code": proc.returncode, "seconds": round(time.perf_counter() - t0, 1), **counts,
            "failed": failures, "tail": proc.stdout[-1500:]}


def section_losses(args, cfg) -> dict:
    """KD loss from hidden states at a real vocabulary: four implementations, one process, same inputs."""
    from kdlib.distillation import fused_losses, losses

    dev, dt = args.device, torch.bfloat16 if args.device == "cuda" else torch.float32
    n, v = cfg["loss_tokens"], cfg["loss_vocab"]
    hs, ht = (STUDENT_SHAPE["hidden_size"], TEACHER_SHAPE["hidden_size"]) if not args.quick else (64, 96)
    g = torch.Generator(device=dev).manual_seed(0)

    def rnd(*shape, scale=1.0):
        return (torch.randn(*shape, generator=g, device=dev, dtype=torch.float32) * scale).to(dt)

    # logits = h @ W.T with h ~ N(0, 1), W ~ N(0, 3/sqrt(H)): logit std 3, peaked softmaxes as in real LMs
    h = rnd(n, hs).requires_grad_()
    w = rnd(v, hs, scale=3 / hs**0.5).requires_grad_()
    th, tw = rnd(n, ht), rnd(v, ht, scale=3 / ht**0.5)

    def from_logits(loss_fn):  # both output layers, then a loss over the [N, V] logits
        def run():
            with torch.no_grad():
                t_logits = torch.nn.functional.linear(th, tw)
            return loss_fn(torch.nn.functional.linear(h, w), t_logits, "jsd", beta=0.5)
        return run

    def fused(chunk=None):
        return fused_losses.kd_loss_from_hidden(h, w, teacher_hidden=th, teacher_head=tw, kind="jsd", beta=0.5,
                                                chunk_size=chunk)

    impls = {"naive (head + full softmax)": from_logits(losses.naive_kd_loss),
             "kdlib.losses (head + chunked)": from_logits(losses.kd_loss),
             "kdlib.fused_losses": fused}
    liger_note = None
    try:
        from liger_kernel.transformers import LigerFusedLinearJSD

        jsd = LigerFusedLinearJSD(jsd_beta=0.5)
        impls["liger FusedLinearJSD"] = lambda: jsd(h, w, th, tw, None)
        # like for like with kdlib, which accumulates the output layer's gradient in fp32 over the chunks
        jsd32 = LigerFusedLinearJSD(jsd_beta=0.5, accum_dtype=torch.float32)
        impls["liger FusedLinearJSD, fp32 accumulation"] = lambda: jsd32(h, w, th, tw, None)
    except Exception as exc:  # not installed, or no Triton on this device
        liger_note = f"{type(exc).__name__}: {exc}"[:300]

    def step(fn):
        h.grad = w.grad = None
        loss = fn()
        loss.backward()
        return loss

    rows = {}
    for name, fn in impls.items():
        try:
            loss, extra = peak_extra(lambda fn=fn: step(fn))
            times = cuda_time(lambda fn=fn: step(fn), reps=cfg["loss_reps"])
            rows[name] = {"time_ms": statistics.median(times) * 1e3, "times_ms": [round(t * 1e3, 3) for t in times],
                          "peak_extra_gib": extra / GIB, "loss": float(loss.detach().float()),
                          "grad_h_norm": float(h.grad.float().norm()), "grad_w_norm": float(w.grad.float().norm())}
        except Exception as exc:
            rows[name] = {"error": f"{type(exc).__name__}: {exc}"[:500]}
        print(f"  losses  {name:32s} {rows[name]}", flush=True)
    sweep = []
    for chunk in cfg["chunk_sweep"]:
        try:
            _, extra = peak_extra(lambda c=chunk: step(lambda: fused(c)))
            t = statistics.median(cuda_time(lambda c=chunk: step(lambda: fused(c)), reps=cfg["loss_reps"]))
            sweep.append({"chunk_rows": chunk, "time_ms": t * 1e3, "peak_extra_gib": extra / GIB})
        except Exception as exc:
            sweep.append({"chunk_rows": chunk, "error": f"{type(exc).__name__}: {exc}"[:300]})
    out = {"tokens": n, "vocab": v, "student_hidden": hs, "teacher_hidden": ht, "dtype": str(dt), "kind": "jsd",
           "beta": 0.5, "impls": rows, "fused_chunk_sweep": sweep, "liger_unavailable": liger_note,
           "input_gib": sum(x.numel() * x.element_size() for x in (h, w, th, tw)) / GIB}
    f, li = rows.get("kdlib.fused_losses", {}), rows.get("liger FusedLinearJSD", {})
    if "time_ms" in f and "time_ms" in li:
        out["fused_vs_liger"] = {"time_ratio": f["time_ms"] / li["time_ms"],
                                 "mem_ratio": f["peak_extra_gib"] / max(li["peak_extra_gib"], 1e-9),
                                 "loss_rel_diff": abs(f["loss"] - li["loss"]) / abs(li["loss"])}
    return out


def _gkd_pairs(n: int) -> list[dict]:
    return [{"instruction": ASKS[i % len(ASKS)].format(TOPICS[i % len(TOPICS)]), "response": "ok"} for i in range(n)]


def _student_update_mfu(student, teacher, tok, cfg, peak_tflops) -> dict:
    """Time the student's training part of one on-policy step alone: forward to the hidden states, the fused
    JSD against the teacher's, backward, AdamW step (teacher forward and sampling excluded). Model FLOPs:
    6 x non-embedding parameters x tokens (body) + 6 x V x H x response tokens (output layer, applied only at
    response positions) + 6 x layers x H x S^2 per row (causal attention scores and values, fwd + bwd)."""
    from kdlib.distillation import distill
    from kdlib.distillation.fused_losses import kd_loss_from_hidden

    prompts = chat_prompts(tok, cfg["batch"])
    g = torch.Generator().manual_seed(1)
    rows = []
    for p in prompts:  # responses of the step's length, as a sampled batch would have
        resp = torch.randint(3, len(tok), (cfg["new_tokens"],), generator=g).tolist()
        rows.append((p + resp, [-100] * len(p) + resp))
    device = next(student.parameters()).device
    ids, labels, mask, positions, keep = distill.response_batch(rows, tok.pad_token_id, device)
    counted = labels[:, -keep:] != -100
    opt = torch.optim.AdamW([p for p in student.parameters() if p.requires_grad], lr=1e-6)
    with torch.no_grad():
        t_hidden = distill.response_hidden(teacher, ids, mask, positions, keep)
    student.train()

    def update():
        h = distill.response_hidden(student, ids, mask, positions, keep)
        loss = kd_loss_from_hidden(h, student.get_output_embeddings(), teacher_hidden=t_hidden,
                                   teacher_head=teacher.get_output_embeddings(), kind="jsd", beta=0.5, mask=counted)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(student.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)

    times = cuda_time(update, reps=max(3, cfg["kd_steps"]), warmup=2)
    # the same step in parts, to say where the time goes: body forward + backward (a trivial loss on the hidden
    # states), the fused loss alone (forward + backward from fixed hidden states), clipping + AdamW alone
    h_fixed = distill.response_hidden(student, ids, mask, positions, keep).detach().requires_grad_()

    def body():
        distill.response_hidden(student, ids, mask, positions, keep).float().square().mean().backward()

    def loss_only():
        kd_loss_from_hidden(h_fixed, student.get_output_embeddings(), teacher_hidden=t_hidden,
                            teacher_head=teacher.get_output_embeddings(), kind="jsd", beta=0.5, mask=counted).backward()

    def optimizer():
        torch.nn.utils.clip_grad_norm_(student.parameters(), 1.0)
        opt.step()

    parts = {name: statistics.median(cuda_time(fn, reps=3, warmup=1)) * 1e3
             for name, fn in (("body_fwd_bwd_ms", body), ("fused_loss_ms", loss_only), ("clip_adamw_ms", optimizer))}
    opt.zero_grad(set_to_none=True)
    student.eval()
    c = student.config
    b, s = ids.shape
    flops = (6 * n_params(student, embeddings=False) * b * s + 6 * c.vocab_size * c.hidden_size * b * keep
             + 6 * c.num_hidden_layers * c.hidden_size * b * s * s)
    t = statistics.median(times)
    out = {"batch": b, "seq": s, "response_tokens": keep, "time_ms": t * 1e3, "model_tflop": flops / 1e12,
           "achieved_tflops": flops / t / 1e12, "mfu_vs_datasheet": flops / t / 1e12 / DATASHEET_BF16_TFLOPS,
           "parts": parts}
    if peak_tflops:
        out["mfu_vs_measured_matmul"] = flops / t / 1e12 / peak_tflops
    return out


def _run_kdlib_gkd(student, teacher, tok, pairs, cfg, fused: bool) -> dict:
    from kdlib.distillation import distill

    def call(steps):
        config = distill.KDConfig(loss="jsd", beta=0.5, on_policy=1.0, gen_max_new_tokens=cfg["new_tokens"],
                                  gen_temperature=0.9, batch_size=cfg["batch"], max_steps=steps, epochs=100,
                                  lr=1e-6, max_length=512, warmup_ratio=0.0, fused_head=fused)
        sync()
        t0 = time.perf_counter()
        hist = distill.train_word_kd(student, teacher, tok, pairs, config)
        sync()
        return hist, time.perf_counter() - t0

    call(1)  # warm-up: kernels, allocator pools
    hist, wall = call(cfg["kd_steps"])
    return {"steps": hist.steps, "tokens": hist.tokens, "wall_s": wall, "tok_per_s": hist.tokens / wall,
            "s_per_step": wall / hist.steps}


def _run_trl_gkd(student, teacher, tok, pairs, cfg, device: str) -> dict:
    """TRL's GKDTrainer on the same models (bench/bench_onpolicy.py's runner); its first step is the warm-up, as
    for kdlib: steps 2.. are timed from the first one's end."""
    from bench.bench_onpolicy import trl_gkd

    r = trl_gkd(student, teacher, tok, pairs, batch_size=cfg["batch"], steps=cfg["kd_steps"] + 1,
                max_new_tokens=cfg["new_tokens"], out_dir=Path(tempfile.mkdtemp()), device=device, max_length=512,
                lr=1e-6)
    ends, n = r["step_ends"], sum(r["tokens"][1:])
    wall = ends[-1] - ends[0]
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return {"steps": len(ends) - 1, "tokens": n, "wall_s": wall, "tok_per_s": n / wall,
            "s_per_step": wall / max(len(ends) - 1, 1), "on_policy_calls": len(r["tokens"])}


def section_onpolicy(args, cfg) -> dict:
    from kdlib.distillation.fused_losses import check_plain_output_layer

    dev, dt = args.device, torch.bfloat16 if args.device == "cuda" else torch.float32
    tok = load_tokenizer(args.tokenizer)
    teacher = random_lm(TEACHER_SHAPE, dev, dt, tok, seed=0, quick=args.quick)
    check_plain_output_layer(teacher)
    pairs = _gkd_pairs(cfg["batch"] * (cfg["kd_steps"] + 2))
    out = {"batch": cfg["batch"], "new_tokens": cfg["new_tokens"], "timed_steps": cfg["kd_steps"], "dtype": str(dt),
           "teacher_params": n_params(teacher), "loss": "jsd beta 0.5, lambda 1, temperature 0.9"}
    runs = {}
    for name in ("kdlib fused head", "kdlib logits", "trl GKDTrainer"):
        student = random_lm(STUDENT_SHAPE, dev, dt, tok, seed=1, quick=args.quick)
        out["student_params"] = n_params(student)
        try:
            if name.startswith("kdlib"):
                runs[name] = _run_kdlib_gkd(student, teacher, tok, pairs, cfg, fused=name.endswith("head"))
            else:
                runs[name] = _run_trl_gkd(student, teacher, tok, pairs, cfg, dev)
        except Exception as exc:
            runs[name] = {"error": f"{type(exc).__name__}: {exc}"[:500], "trace": traceback.format_exc()[-1500:]}
        print(f"  onpolicy {name:18s} {runs[name]}", flush=True)
        del student
        if dev == "cuda":
            torch.cuda.empty_cache()
    out["runs"] = runs
    best = max((r["tok_per_s"] for k, r in runs.items() if k.startswith("kdlib") and "tok_per_s" in r), default=None)
    if best and "tok_per_s" in runs.get("trl GKDTrainer", {}):
        out["throughput_ratio_vs_trl"] = best / runs["trl GKDTrainer"]["tok_per_s"]
    student = random_lm(STUDENT_SHAPE, dev, dt, tok, seed=1, quick=args.quick)
    try:
        out["student_update"] = _student_update_mfu(student, teacher, tok, cfg, args.peak_tflops)
    except Exception as exc:
        out["student_update"] = {"error": f"{type(exc).__name__}: {exc}"[:500]}
    print(f"  onpolicy student update {out['student_update']}", flush=True)
    return out


class StoppingHead(torch.nn.Module):
    """Wraps a random model's output layer with a stop rule: at about 1/`every` of the positions, chosen by a
    hash of the hidden state, end-of-sequence becomes the argmax. A random model never picks EOS by itself,
    while real teachers end their answers at varied lengths, which is what continuous batching is for. The
    rule depends only on the hidden state, so every decoding method meets the same one; lengths are
    geometric (mean ~`every`, cut at the budget). Costs two reductions per position."""
    def __init__(self, head: torch.nn.Module, eos: int, every: int):
        super().__init__()
        self.inner, self.weight, self.eos, self.every = head, head.weight, eos, every

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        logits = self.inner(h)
        key = torch.frac(h.float().sum(-1).abs() * 997.0)  # ~uniform in [0, 1) per position
        top, bottom = logits.amax(-1), logits.amin(-1)
        logits[..., self.eos] = torch.where(key < 1.0 / self.every, top + 1, bottom - 1).to(logits.dtype)
        return logits


def _profile(fn, top: int = 12) -> dict:
    """torch.profiler over one call: total host vs device time and the ops with the most host time."""
    from torch.profiler import ProfilerActivity, profile

    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if torch.cuda.is_available() else [])
    with profile(activities=acts) as prof:
        fn()
        sync()
    ev = prof.key_averages()
    dev = [getattr(e, "self_device_time_total", getattr(e, "self_cuda_time_total", 0)) for e in ev]
    rows = sorted(zip(ev, dev), key=lambda x: -x[0].self_cpu_time_total)[:top]
    return {"host_ms": sum(e.self_cpu_time_total for e in ev) / 1e3, "device_ms": sum(dev) / 1e3,
            "top_host_ops": [{"op": e.key, "calls": e.count, "host_ms": round(e.self_cpu_time_total / 1e3, 2),
                              "device_ms": round(d / 1e3, 2)} for e, d in rows]}


def section_generation(args, cfg) -> dict:
    from transformers import GenerationConfig

    from bench.bench_generation import cut_at_stop
    from kdlib.teachers import fastgen

    dev, dt = args.device, torch.bfloat16 if args.device == "cuda" else torch.float32
    tok = load_tokenizer(args.tokenizer)
    # untied output layer: with tied embeddings a random model's greedy path repeats the prompt's last token
    # (the residual stream is mostly that token's embedding); untied, paths depend on the prompt. Same FLOPs.
    model = random_lm(dict(TEACHER_SHAPE, tie_word_embeddings=False), dev, dt, tok, seed=0, quick=args.quick)
    prompts = chat_prompts(tok, cfg["gen_batch"])
    n_new = cfg["gen_tokens"]
    stop = tok.eos_token_id
    model.lm_head = StoppingHead(model.lm_head, stop, every=max(2, n_new // 2))

    def run_fastgen(n=n_new):
        outs = fastgen.generate(model, prompts, fastgen.SamplingParams(max_new_tokens=n), batch_size=len(prompts),
                                eos_token_ids=[stop], pad_token_id=tok.pad_token_id)
        return [o.token_ids for o in outs]

    def run_hf(n=n_new):
        enc = tok.pad({"input_ids": prompts}, return_tensors="pt", padding_side="left").to(dev)
        with torch.inference_mode():
            out = model.generate(**enc, max_new_tokens=n, do_sample=False, eos_token_id=stop,
                                 pad_token_id=tok.pad_token_id)
        return [cut_at_stop(r, {stop}) for r in out[:, enc["input_ids"].shape[1]:].tolist()]

    def run_cb():
        gc = GenerationConfig(max_new_tokens=n_new, do_sample=False, eos_token_id=stop, pad_token_id=tok.pad_token_id)
        # no inference_mode here: the manager decodes in its own thread, and tensors made under inference mode
        # in this thread cannot be updated there (it fails every request)
        res = model.generate_batch(inputs=prompts, generation_config=gc, progress_bar=False)
        failed = [r for r in res.values() if getattr(r, "error", None)]
        if failed or len(res) != len(prompts):
            raise RuntimeError(f"generate_batch: {len(res)} results for {len(prompts)} prompts, {len(failed)} "
                               f"failed: {failed[0].error if failed else ''}")
        by_id = sorted(res.values(), key=lambda r: int(str(r.request_id).rsplit("_", 1)[-1]))
        rows = [cut_at_stop(list(r.generated_tokens), {stop}) for r in by_id]
        # a row that ended early ended on the stop token, whether or not the output lists it
        return [r + [stop] if len(r) < n_new and stop not in r else r for r in rows]

    runners = {"fastgen": run_fastgen, "hf generate": run_hf, "generate_batch (continuous)": run_cb}
    if args.quick and dev != "cuda":  # on a CPU its manager thread polls: ~11 s a call even for 8 tokens
        del runners["generate_batch (continuous)"]
    stats, outputs = {}, {}
    for rep in range(cfg["gen_reps"] + 1):  # rep 0 warms up every path (kernels, CUDA graphs, allocator)
        order = list(runners) if rep % 2 == 0 else list(reversed(runners))
        if rep > 1 and time.monotonic() > DEADLINE[0]:
            print(f"  generation: budget spent, {rep - 1} timed repeat(s) kept", flush=True)
            break
        for name in order:
            try:
                sync()
                t0 = time.perf_counter()
                rows = runners[name]()
                sync()
                wall = time.perf_counter() - t0
            except Exception as exc:
                stats[name] = {"error": f"{type(exc).__name__}: {exc}"[:500], "trace": traceback.format_exc()[-1200:]}
                continue
            outputs[name] = rows
            if rep == 0 or "error" in stats.get(name, {}):
                continue
            s = stats.setdefault(name, {"tokens": 0, "wall_s": 0.0})
            s["tokens"] += sum(len(r) for r in rows)
            s["wall_s"] += wall
        if rep == 0:
            print("  generation warm-up done", flush=True)
    for s in stats.values():
        if "wall_s" in s and s["wall_s"]:
            s["tok_per_s"] = s["tokens"] / s["wall_s"]
    ref = outputs.get("hf generate")
    for name, rows in outputs.items():
        if ref is not None and name in stats and "tok_per_s" in stats[name]:
            stats[name]["same_as_hf"] = sum(a == b for a, b in zip(rows, ref)) / len(ref)
    lengths = [len(r) for r in outputs.get("fastgen", [])]
    out = {"batch": len(prompts), "max_new_tokens": n_new, "stop_token": stop, "dtype": str(dt),
           "row_lengths": {"min": min(lengths, default=0), "median": statistics.median(lengths) if lengths else 0,
                           "max": max(lengths, default=0)},
           "prompt_tokens": {"min": min(map(len, prompts)), "max": max(map(len, prompts))}, "methods": stats}
    f, h = stats.get("fastgen", {}), stats.get("hf generate", {})
    if "tok_per_s" in f and "tok_per_s" in h:
        out["fastgen_vs_hf"] = f["tok_per_s"] / h["tok_per_s"]
    c = stats.get("generate_batch (continuous)", {})
    if "tok_per_s" in f and "tok_per_s" in c:
        out["fastgen_vs_continuous"] = f["tok_per_s"] / c["tok_per_s"]
    for name, s in stats.items():
        print(f"  generation {name:28s} {s}", flush=True)
    # where a decode step's time goes: host (Python, launches) vs device, for 16 new tokens of each method
    try:
        out["profile_16_tokens"] = {"fastgen": _profile(lambda: run_fastgen(16)), "hf generate": _profile(lambda: run_hf(16))}
        for name, p in out["profile_16_tokens"].items():
            print(f"  profile {name}: host {p['host_ms']:.0f} ms, device {p['device_ms']:.0f} ms; top host ops "
                  f"{[(o['op'], o['host_ms']) for o in p['top_host_ops'][:5]]}", flush=True)
    except Exception as exc:
        out["profile_16_tokens"] = {"error": f"{type(exc).__name__}: {exc}"[:300]}
    return out


def section_notebook(args, cfg) -> dict:
    """Notebook 06 through the lab's runner (papermill, nbconvert) with the gpu profile: device=cuda."""
    out_dir = Path(tempfile.mkdtemp())  # executed notebook, HTML, figure: not part of the results
    code = ("import json, sys; from kdlib.lab import runner; "
            f"r = runner.run_all({'smoke' if args.quick else 'gpu'!r}, ['06'], out_dir={str(out_dir)!r}, "
            "write_record=False)[0]; print(json.dumps(r, default=str))")
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True)
    try:
        rec = json.loads(proc.stdout.strip().splitlines()[-1])
    except (IndexError, json.JSONDecodeError):
        return {"exit_code": proc.returncode, "tail": (proc.stdout + proc.stderr)[-2000:]}
    return {"status": rec["status"], "duration_s": rec["duration_s"], "parameters": rec["parameters"],
            "device_used": rec.get("machine", {}).get("device"), "error": rec["error"], "finding": rec.get("finding"),
            "metrics": {m["name"]: m["value"] for m in rec.get("metrics", []) if isinstance(m, dict) and "name" in m},
            "wall_s": round(time.perf_counter() - t0, 1)}


# ----------------------------------------------------------------------------------------------- report

def environment(args) -> dict:
    import transformers

    env = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "python": platform.python_version(),
           "torch": torch.__version__, "transformers": transformers.__version__, "device": args.device,
           "cpu_count": os.cpu_count()}
    for name in ("trl", "liger_kernel", "triton", "accelerate", "papermill"):
        try:
            from importlib import metadata

            env[name] = metadata.version(name.replace("_", "-"))
        except Exception:
            env[name] = "not installed"
    if args.device == "cuda":
        p = torch.cuda.get_device_properties(0)
        env.update(gpu=torch.cuda.get_device_name(0), gpu_memory_gib=round(p.total_memory / GIB, 1),
                   sm_count=p.multi_processor_count, capability=f"{p.major}.{p.minor}", cuda=torch.version.cuda)
    return env


def verdicts(res: dict) -> list[dict]:
    """Each target with its numbers: met, not met, or not measured."""
    out = []

    def add(target, value, limit, better, detail):
        if value is None:
            out.append({"target": target, "status": "not measured", "detail": detail})
        else:
            ok = value <= limit if better == "lower" else value >= limit
            out.append({"target": target, "status": "met" if ok else "not met", "value": round(value, 3),
                        "limit": limit, "detail": detail})

    fl = res.get("losses", {}).get("fused_vs_liger", {})
    add("fused-head peak memory <= Liger's", fl.get("mem_ratio"), TARGETS["fused_mem_vs_liger"], "lower",
        "ratio kdlib.fused_losses / Liger FusedLinearJSD, extra peak GiB")
    add("fused-head time <= 1.2x Liger's", fl.get("time_ratio"), TARGETS["fused_time_vs_liger"], "lower",
        "ratio of forward+backward medians")
    op = res.get("onpolicy", {})
    add("on-policy step >= 1.5x TRL tokens/s", op.get("throughput_ratio_vs_trl"), TARGETS["onpolicy_vs_trl"], "higher",
        "best kdlib variant / TRL GKDTrainer")
    su = op.get("student_update", {})
    add(">= 40% MFU, student's training part", su.get("mfu_vs_datasheet"), TARGETS["student_mfu"], "higher",
        f"vs the datasheet's {DATASHEET_BF16_TFLOPS:.0f} TFLOP/s"
        + (f"; {su['mfu_vs_measured_matmul']:.0%} of the measured matmul rate" if "mfu_vs_measured_matmul" in su else ""))
    return out


def markdown(res: dict) -> str:
    e = res.get("environment", {})
    lines = [f"# GPU suite: {e.get('gpu', e.get('device'))}", "",
             f"`python bench/gpu_suite.py{' --quick' if res.get('quick') else ''}`, {e.get('date')}; torch "
             f"{e.get('torch')} (CUDA {e.get('cuda')}), transformers {e.get('transformers')}, TRL {e.get('trl')}, "
             f"Liger-Kernel {e.get('liger_kernel')}, triton {e.get('triton')}. Measured bf16 matmul rate: "
             f"{res.get('matmul_tflops') or 0:.0f} TFLOP/s (8192^3). Models are randomly initialised at real sizes "
             "(Qwen2.5-1.5B-shaped teacher, Qwen2.5-0.5B-shaped student, vocab 151,936, bf16): timings are the "
             "architectures', quality is not measured."]
    if res.get("provenance"):
        lines += ["", "Runs: " + "; ".join(f"{k}: {v}" for k, v in res["provenance"].items()) + "."]
    lines += ["", "## Targets", "",
             "| target | status | value | detail |", "|---|---|---:|---|"]
    for v in res.get("verdicts", []):
        lines.append(f"| {v['target']} | {v['status']} | {v.get('value', '')} | {v['detail']} |")
    t = res.get("tests")
    if t:
        lines += ["", "## pytest -m gpu", ""]
        if "tests" in t:
            lines.append(f"{t['tests']} tests: {t['tests'] - t['failures'] - t['errors'] - t['skipped']} passed, "
                         f"{t['failures']} failed, {t['errors']} errors, {t['skipped']} skipped ({t['seconds']} s).")
            lines += [f"- FAILED {f['test']}: {f['message'][:200]}" for f in t.get("failed", [])]
        else:
            lines.append(f"did not run: {t.get('error') or t.get('tail', '')[-300:]}")
    lo = res.get("losses")
    if lo and "impls" in lo:
        lines += ["", f"## KD loss from hidden states: JSD, {lo['tokens']:,} tokens, vocab {lo['vocab']:,}, "
                  f"{lo['dtype']}, student H {lo['student_hidden']}, teacher H {lo['teacher_hidden']}", "",
                  "Forward + backward (median of CUDA-event timings); peak memory allocated above the inputs "
                  f"({lo['input_gib']:.2f} GiB), gradients included.", "",
                  "| implementation | ms | peak extra GiB | loss |", "|---|---:|---:|---:|"]
        for name, r in lo["impls"].items():
            lines.append(f"| {name} | {r['time_ms']:.1f} | {r['peak_extra_gib']:.2f} | {r['loss']:.5f} |" if "time_ms" in r
                         else f"| {name} | | | {r.get('error', '')[:120]} |")
        if lo.get("liger_unavailable"):
            lines.append(f"\nLiger unavailable: {lo['liger_unavailable']}")
        sw = [s for s in lo.get("fused_chunk_sweep", []) if "time_ms" in s]
        if sw:
            lines += ["", "Fused loss, chunk-size sweep (tokens per chunk):", "",
                      "| chunk rows | ms | peak extra GiB |", "|---:|---:|---:|"]
            lines += [f"| {s['chunk_rows']} | {s['time_ms']:.1f} | {s['peak_extra_gib']:.2f} |" for s in sw]
    op = res.get("onpolicy")
    if op and "runs" in op:
        lines += ["", f"## On-policy distillation step (GKD, {op['loss']}), batch {op['batch']}, {op['new_tokens']} "
                  f"new tokens, teacher {op['teacher_params'] / 1e9:.2f} B, student {op['student_params'] / 1e9:.2f} B "
                  "parameters", "", "| trainer | timed steps | response tokens | s/step | tokens/s |",
                  "|---|---:|---:|---:|---:|"]
        for name, r in op["runs"].items():
            lines.append(f"| {name} | {r['steps']} | {r['tokens']} | {r['s_per_step']:.2f} | {r['tok_per_s']:.0f} |"
                         if "tok_per_s" in r else f"| {name} | | | | {r.get('error', '')[:150]} |")
        su = op.get("student_update", {})
        if "time_ms" in su:
            lines += ["", f"Student's training part alone (forward, fused JSD, backward, AdamW; batch {su['batch']} x "
                      f"{su['seq']} tokens, {su['response_tokens']} response positions): {su['time_ms']:.1f} ms, "
                      f"{su['model_tflop']:.2f} TFLOP of model FLOPs = {su['achieved_tflops']:.0f} TFLOP/s, MFU "
                      f"{su['mfu_vs_datasheet']:.1%} of {DATASHEET_BF16_TFLOPS:.0f}"
                      + (f" ({su['mfu_vs_measured_matmul']:.1%} of the measured matmul rate)."
                         if "mfu_vs_measured_matmul" in su else ".")]
            if su.get("parts"):
                lines.append("Its parts, timed alone: " + ", ".join(f"{k.removesuffix('_ms').replace('_', ' ')} "
                                                                  f"{v:.1f} ms" for k, v in su["parts"].items()) + ".")
    ge = res.get("generation")
    if ge and "methods" in ge:
        lines += ["", f"## Teacher generation: batch {ge['batch']}, greedy, up to {ge['max_new_tokens']} new tokens, "
                  f"rows ending at {ge['row_lengths']['min']}-{ge['row_lengths']['max']} tokens (median "
                  f"{ge['row_lengths']['median']}), {ge['dtype']}", "",
                  "| method | tokens | s | tokens/s | rows identical to HF |", "|---|---:|---:|---:|---:|"]
        for name, s in ge["methods"].items():
            lines.append(f"| {name} | {s['tokens']} | {s['wall_s']:.2f} | {s['tok_per_s']:.0f} | "
                         f"{s.get('same_as_hf', float('nan')):.0%} |" if "tok_per_s" in s
                         else f"| {name} | | | | {s.get('error', '')[:150]} |")
    nb = res.get("notebook")
    if nb:
        lines += ["", "## Notebook 06 through papermill on the GPU", ""]
        lines.append(f"status {nb.get('status')}, {nb.get('duration_s')} s, parameters {nb.get('parameters')}; "
                     f"{nb.get('finding') or ''}" if "status" in nb else f"did not run: {nb.get('tail', '')[-300:]}")
    if res.get("notes"):
        lines += ["", "## Notes", ""] + [f"- {n}" for n in res["notes"]]
    errs = {k: v["error"] for k, v in res.items() if isinstance(v, dict) and v.get("error") and k in SECTIONS}
    if errs:
        lines += ["", "## Sections that failed", ""] + [f"- {k}: {v}" for k, v in errs.items()]
    return "\n".join(lines) + "\n"


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--only", nargs="+", choices=SECTIONS, default=list(SECTIONS))
    ap.add_argument("--quick", action="store_true", help="tiny shapes: checks the script, measures nothing")
    ap.add_argument("--out", default=None, help="folder for gpu.json / gpu.md (default reports/bench)")
    ap.add_argument("--tokenizer", default=os.environ.get("KDLIB_TEST_TOKENIZER"),
                    help="tokenizer folder (default: the offline SmolLM2 asset)")
    ap.add_argument("--device", default=None, help="cuda (default when available) or cpu")
    ap.add_argument("--budget", type=float, default=420,
                    help="seconds after which sections not yet started are skipped and optional repeats dropped")
    ap.add_argument("--render", type=Path, default=None, help="only rewrite the .md beside this gpu.json")
    args = ap.parse_args(argv)
    if args.render:
        res = json.loads(args.render.read_text())
        args.render.with_suffix(".md").write_text(markdown(res))
        return res
    DEADLINE[0] = time.monotonic() + args.budget

    args.device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    args.out = args.out or str(ROOT / "reports" / "bench")
    Path(args.out).mkdir(parents=True, exist_ok=True)
    cfg = QUICK if args.quick else FULL
    path = Path(args.out) / "gpu.json"
    res = json.loads(path.read_text()) if path.is_file() and len(args.only) < len(SECTIONS) else {}
    res.update(quick=args.quick, environment=environment(args), config=cfg)
    res["matmul_tflops"] = matmul_tflops(args.device)
    args.peak_tflops = res["matmul_tflops"]
    sections = {"tests": section_tests, "losses": section_losses, "onpolicy": section_onpolicy,
                "generation": section_generation, "notebook": section_notebook}
    for name in args.only:
        if time.monotonic() > DEADLINE[0]:  # an earlier run's result, if any, stays
            res.setdefault(name, {"error": f"skipped: the --budget of {args.budget:.0f} s was spent before it started"})
            print(f"[gpu_suite] {name}: skipped (budget spent)", flush=True)
            continue
        t0 = time.perf_counter()
        print(f"[gpu_suite] {name} ...", flush=True)
        try:
            res[name] = sections[name](args, cfg)
        except Exception as exc:
            res[name] = {"error": f"{type(exc).__name__}: {exc}"[:800], "trace": traceback.format_exc()[-2500:]}
        res[name]["section_s"] = round(time.perf_counter() - t0, 1)
        failed = f" ERROR {res[name]['error']}" if res[name].get("error") else ""
        print(f"[gpu_suite] {name}: {res[name]['section_s']} s{failed}", flush=True)
        res["verdicts"] = verdicts(res)
        path.write_text(json.dumps(res, indent=1, default=str) + "\n")
        (Path(args.out) / "gpu.md").write_text(markdown(res))
        with contextlib.suppress(Exception):
            torch.cuda.empty_cache()
    print(markdown(res))
    return res


if __name__ == "__main__":
    main()
