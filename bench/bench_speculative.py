"""Speculative decoding on this machine: speed-up over plain greedy decoding, with acceptance rates.

    python bench/bench_speculative.py            # full run, ~15-25 min on 2 CPU cores
    python bench/bench_speculative.py --quick    # smoke check, a few minutes; prints only

Target: the offline teacher (SmolLM2-135M-Instruct). Drafters, all sharing its tokenizer:
- `truncated`: the teacher's first `--draft-layers` blocks, as is (undistilled);
- `distilled`: the same truncated copy after word-level reverse-KL distillation from the teacher
  (`kdlib.distillation.distill.train_word_kd`, loss "rkl") on the teacher's own greedy answers to instructions
  that are not the benchmark prompts;
- `prompt_lookup`: no model, copies the continuation of the last n-gram match in the context.

Two prompt sets: chat instructions about SST-2 sentences (free generation) and CoNLL-2003 sentences to
copy with inline entity markup (copy-heavy labelling). Every method decodes the same prompts greedily
in the same process, alternating order with plain decoding, and the ratio is taken within the run.
Outputs must equal plain greedy decoding token for token (speculation never changes what is generated).
For reference, `transformers` assisted generation (`assistant_model`, `prompt_lookup_num_tokens`) is
timed against HF's own plain `generate`. A full run writes reports/bench/speculative.{json,md}.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.bench_generation import machine, sst2_texts  # noqa: E402
from kdlib.distillation import distill  # noqa: E402
from kdlib.lab.paths import data_mirror_dir  # noqa: E402
from kdlib.registry import models  # noqa: E402
from kdlib.teachers import speculative  # noqa: E402

CHAT = [
    "Rewrite this movie review fragment as one complete, polite sentence.\n\nText: {}",
    "In one short sentence, explain whether this review is positive or negative.\n\nReview: {}",
]
NER = ("Copy the sentence exactly, wrapping every person, organisation, location and other named entity as "
       "[TYPE: words] with TYPE one of PER, ORG, LOC, MISC.\n\nSentence: {}")
FULL = dict(n_prompts=8, max_new_tokens=48, k=4, draft_layers=6, distill_pairs=96, distill_steps=120, repeats=1)
QUICK = dict(n_prompts=2, max_new_tokens=16, k=4, draft_layers=6, distill_pairs=8, distill_steps=4, repeats=1)


def conll_sentences(n: int, skip: int = 0) -> list[str]:
    path = data_mirror_dir() / "conll2003" / "train.jsonl.gz"
    out = []
    with gzip.open(path, "rt", encoding="utf-8") as fh:
        for line in fh:
            tokens = json.loads(line)["tokens"]
            if 8 <= len(tokens) <= 30:
                out.append(" ".join(tokens))
            if len(out) == n + skip:
                return out[skip:]
    raise SystemExit(f"{path} has fewer than {n + skip} usable sentences")


def chat_ids(tok, text: str) -> list[int]:
    enc = tok.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True,
                                  tokenize=True, return_dict=True)
    return list(enc["input_ids"])


def distilled_draft(target, tok, cfg: dict, seed: int = 0):
    """Truncate the target and distil it (reverse KL) on the target's answers to held-out instructions."""
    draft = distill.truncated_student(target, cfg["draft_layers"])
    texts = sst2_texts(cfg["distill_pairs"] + 200)[200:]  # the benchmark uses the first sentences
    instructions = [CHAT[i % len(CHAT)].format(t) for i, t in enumerate(texts)]
    instructions += [NER.format(s) for s in conll_sentences(cfg["distill_pairs"] // 2, skip=200)]
    pairs = distill.seqkd_pairs(target, tok, instructions, max_new_tokens=cfg["max_new_tokens"])
    config = distill.KDConfig(loss="rkl", lr=1e-4, batch_size=8, max_steps=cfg["distill_steps"], epochs=100,
                              max_length=320, seed=seed)
    start = time.perf_counter()
    history = distill.train_word_kd(draft, target, tok, pairs, config)
    return draft.eval(), {"pairs": len(pairs), "steps": history.steps, "seconds": round(time.perf_counter() - start, 1),
                          "kd_first": round(history.kd[0], 3), "kd_last": round(sum(history.kd[-10:]) / len(history.kd[-10:]), 3)}


def hf_generate(model, prompts, max_new_tokens: int, eos: int, **extra):
    outs = []
    for p in prompts:
        ids = torch.tensor([p])
        with torch.inference_mode():
            row = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens,
                                 do_sample=False, eos_token_id=eos, pad_token_id=eos, **extra)[0, len(p):].tolist()
        outs.append(row[:row.index(eos) + 1] if eos in row else row)
    return outs


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--out", type=Path, default=None, help="report folder (default: reports/bench; none for --quick)")
    args = parser.parse_args(argv)
    cfg = dict(QUICK if args.quick else FULL)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    target, tok = models.load_causal_lm(models.TEACHER_ID, "cpu", torch.float32)
    eos = tok.eos_token_id
    n = cfg["n_prompts"]
    tasks = {"chat": [chat_ids(tok, CHAT[i % len(CHAT)].format(t)) for i, t in enumerate(sst2_texts(n))],
             "ner_copy": [chat_ids(tok, NER.format(s)) for s in conll_sentences(n)]}
    print(f"distilling a {cfg['draft_layers']}-layer draft ({cfg['distill_steps']} steps)...", flush=True)
    distilled, distill_info = distilled_draft(target, tok, cfg)
    print(f"  {distill_info}", flush=True)
    drafters = {"truncated": speculative.ModelDrafter(distill.truncated_student(target, cfg["draft_layers"]).eval()),
                "distilled": speculative.ModelDrafter(distilled),
                "prompt_lookup": speculative.PromptLookupDrafter(max_ngram=3)}
    results = []
    for task, prompts in tasks.items():
        plain_outs, plain_stats = None, None
        for name, drafter in drafters.items():
            walls = {"plain": 0.0, name: 0.0}
            for rep in range(cfg["repeats"]):
                order = ["plain", name] if rep % 2 == 0 else [name, "plain"]
                for which in order:
                    outs, stats = speculative.measure(target, prompts, cfg["max_new_tokens"],
                                                      drafter=None if which == "plain" else drafter, k=cfg["k"],
                                                      stop_ids=[eos])
                    walls[which] += stats.wall_s
                    if which == "plain":
                        plain_outs, plain_stats = outs, stats
                    else:
                        spec_outs, spec_stats = outs, stats
            same = sum(a == b for a, b in zip(spec_outs, plain_outs))
            row = {"task": task, "drafter": name, "k": cfg["k"], "prompts": len(prompts),
                   "new_tokens": spec_stats.new_tokens, "acceptance_rate": round(spec_stats.acceptance_rate, 3),
                   "tokens_per_target_call": round(spec_stats.tokens_per_call, 2),
                   "target_calls": spec_stats.target_calls, "plain_target_calls": plain_stats.target_calls,
                   "plain_s": round(walls["plain"], 2), "speculative_s": round(walls[name], 2),
                   "speedup": round(walls["plain"] / walls[name], 2), "identical": f"{same}/{len(prompts)}"}
            results.append(row)
            print(f"  {task:>8} {name:>13}: accept {row['acceptance_rate']:.2f}, {row['tokens_per_target_call']} tok/call, "
                  f"speed-up {row['speedup']}x, identical {row['identical']} (load {os.getloadavg()[0]:.1f})", flush=True)
    hf_rows = []
    for task, prompts in tasks.items():
        for name, extra in (("assistant_model=distilled", {"assistant_model": distilled}),
                            ("prompt_lookup_num_tokens=4", {"prompt_lookup_num_tokens": cfg["k"]})):
            t0 = time.perf_counter()
            plain = hf_generate(target, prompts, cfg["max_new_tokens"], eos)
            t1 = time.perf_counter()
            assisted = hf_generate(target, prompts, cfg["max_new_tokens"], eos, **extra)
            t2 = time.perf_counter()
            hf_rows.append({"task": task, "method": name, "plain_s": round(t1 - t0, 2), "assisted_s": round(t2 - t1, 2),
                            "speedup": round((t1 - t0) / (t2 - t1), 2),
                            "identical": f"{sum(a == b for a, b in zip(plain, assisted))}/{len(prompts)}"})
            print(f"  HF {task:>8} {name}: speed-up {hf_rows[-1]['speedup']}x", flush=True)
    report = {"model": models.TEACHER_ID, "config": cfg, "machine": machine(), "distillation": distill_info,
              "results": results, "hf_assisted": hf_rows, "load_avg_1m_at_end": os.getloadavg()[0],
              "mode": "quick" if args.quick else "full"}
    out_dir = args.out or (None if args.quick else ROOT / "reports" / "bench")
    if out_dir is not None:
        write_reports(report, out_dir)
    return report


def write_reports(report: dict, out_dir: Path) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "speculative.json").write_text(json.dumps(report, indent=1) + "\n")
    m, c, d = report["machine"], report["config"], report["distillation"]
    lines = ["# Speculative decoding: speed-up over plain greedy decoding", "",
             f"Target {report['model']} (fp32, CPU, batch 1), greedy, up to {c['max_new_tokens']} new tokens, "
             f"k = {c['k']} draft tokens per step, {c['n_prompts']} prompts per task; {m['cpu_count']} CPUs, "
             f"{m['torch_threads']} torch threads, load average {m['load_avg_1m_at_start']:.1f} at start and "
             f"{report['load_avg_1m_at_end']:.1f} at end (compare the ratios, measured in the same run). "
             f"Drafts: the target's first {c['draft_layers']} of its blocks, undistilled and after reverse-KL "
             f"word-level distillation ({d['steps']} steps on {d['pairs']} teacher answers, {d['seconds']} s; "
             f"per-token RKL {d['kd_first']} -> {d['kd_last']}).", "",
             "| task | drafter | acceptance | tokens / target call | speed-up (wall) | identical to plain |",
             "|---|---|---:|---:|---:|---:|"]
    for r in report["results"]:
        lines.append(f"| {r['task']} | {r['drafter']} | {r['acceptance_rate']:.2f} | {r['tokens_per_target_call']} "
                     f"| {r['speedup']}x | {r['identical']} |")
    lines += ["", "`transformers` assisted generation against HF's own plain `generate`, same prompts:", "",
              "| task | method | speed-up (wall) | identical |", "|---|---|---:|---:|"]
    for r in report["hf_assisted"]:
        lines.append(f"| {r['task']} | {r['method']} | {r['speedup']}x | {r['identical']} |")
    lines += ["", "A model draft pays only when its acceptance is high enough to cover its own forwards: on a "
              "CPU at batch 1, one target forward over k+1 tokens costs about one forward over 1 token, and a "
              "truncated draft keeps the full embedding and output layers (a large share of a 135M model). "
              "Prompt lookup costs nothing to draft, so any acceptance is a gain on copy-heavy outputs.", ""]
    (out_dir / "speculative.md").write_text("\n".join(lines))


if __name__ == "__main__":
    main()
