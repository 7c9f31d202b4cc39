"""Cost of structured generation: `kdlib.teachers.fastgen.generate` with and without a grammar, same prompts, batch 32.

    python bench/bench_structured.py --threads 1          # run of record, ~5 min on one CPU thread
    python bench/bench_structured.py --quick              # smoke check, prints only

Two measurements, each free vs constrained in the same process, alternating which goes first, repeated:

1. **Same tokens** (`overhead_ratio`, the target ≤ 1.10): greedy decoding of 32 chat prompts, free, then
   constrained by a grammar that admits any text (Lark `start: /(.|\\n)*/`). Greedy constrained decoding
   of an answer the grammar allows equals free greedy decoding (checked here, token for token), so both
   runs generate exactly the same tokens and the ratio is the grammar machinery's cost: one bitmask per
   row and step from llguidance, one bit test per row (`kdlib.teachers.structured`).
2. **A real schema** (`json_overhead_per_token`): sampled answers to "write 3 reviews as JSON" with and
   without the {"texts": [3 strings]} schema of `kdlib.synthesis.synth.output_schema`. The outputs differ, so the
   ratio is per generated token; here picks the grammar forbids are masked and drawn again.

Writes reports/bench/structured.{json,md} (not with --quick, unless --out is given).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench_generation import sst2_texts  # noqa: E402

from kdlib.synthesis import synth  # noqa: E402
from kdlib.teachers import fastgen, structured  # noqa: E402
from kdlib.teachers.api import user  # noqa: E402
from kdlib.teachers.teacher import make_teacher  # noqa: E402

FULL = dict(batch=32, max_new_tokens=64, repeats=3)
QUICK = dict(batch=8, max_new_tokens=24, repeats=1)


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    cfg = QUICK if args.quick else FULL
    if args.threads:
        torch.set_num_threads(args.threads)
    out_dir = args.out or (None if args.quick else ROOT / "reports" / "bench")

    teacher = make_teacher(cache=False, progress=False, batch_size=cfg["batch"])
    model, tok = teacher.load()
    eos = teacher.eos_token_ids()
    n, new = cfg["batch"], cfg["max_new_tokens"]
    texts = sst2_texts(n)
    rewrite = [teacher.encode(user(f"Rewrite this review fragment as one polite sentence.\n\nText: {t}")) for t in texts]
    spec = synth.TaskSpec.for_dataset("sst2", ["negative", "positive"])
    labels = spec.label_names
    json_prompts = [teacher.encode(synth.generation_prompt(spec, labels[i % 2], 3, structured=True)) for i in range(n)]
    anything = [structured.Constraint.for_tokenizer(tok, structured.lark(r"start: /(.|\n)*/"))] * n
    schema = [structured.Constraint.for_tokenizer(
        tok, structured.json_schema(synth.output_schema(3, max_new_tokens=new)))] * n

    def run(prompts, params, constraints=None, seeds=None):
        return fastgen.generate(model, prompts, params, seeds=seeds, batch_size=n, eos_token_ids=eos,
                                constraints=constraints)

    greedy = fastgen.SamplingParams(max_new_tokens=new)
    sampled = fastgen.SamplingParams(max_new_tokens=new, temperature=1.0, top_p=0.95)
    seeds = list(range(n))
    run(rewrite[:2], greedy)  # warm-up
    same, json_rows = [], []
    identical = True
    for r in range(cfg["repeats"]):
        order = [False, True] if r % 2 == 0 else [True, False]
        times, outs = {}, {}
        for constrained in order:
            outs[constrained], times[constrained] = timed(lambda c=constrained: run(rewrite, greedy, anything if c else None))
        identical &= [o.token_ids for o in outs[True]] == [o.token_ids for o in outs[False]]
        tokens = sum(len(o.token_ids) for o in outs[False])
        same.append({"free_s": times[False], "constrained_s": times[True], "tokens": tokens})
        jt, jo = {}, {}
        for constrained in order:
            jo[constrained], jt[constrained] = timed(lambda c=constrained: run(json_prompts, sampled, schema if c else None, seeds))
        ntok = {c: sum(len(o.token_ids) for o in jo[c]) for c in jo}
        parsed = {c: sum(1 for o in jo[c] if _parses(tok.decode(o.token_ids, skip_special_tokens=True))) for c in jo}
        json_rows.append({"free_s": jt[False], "constrained_s": jt[True], "free_tokens": ntok[False],
                          "constrained_tokens": ntok[True], "free_valid_json": parsed[False],
                          "constrained_valid_json": parsed[True]})
    ratio = sorted(x["constrained_s"] / x["free_s"] for x in same)[len(same) // 2]
    per_token = sorted((x["constrained_s"] / x["constrained_tokens"]) / (x["free_s"] / x["free_tokens"])
                       for x in json_rows)[len(json_rows) // 2]
    report = {
        "what": "fastgen greedy/sampled generation with vs without a grammar (kdlib.teachers.structured, llguidance)",
        "model": teacher.model, "batch": n, "max_new_tokens": new, "repeats": cfg["repeats"],
        "threads": torch.get_num_threads(), "load_average": os.getloadavg(), "machine": platform.processor() or platform.machine(),
        "overhead_ratio": ratio, "same_tokens_identical_outputs": identical, "same_tokens_runs": same,
        "json_overhead_per_token": per_token, "json_runs": json_rows, "target_overhead_ratio": 1.10,
    }
    print(json.dumps({k: v for k, v in report.items() if not k.endswith("_runs")}, indent=1))
    if out_dir:
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "structured.json").write_text(json.dumps(report, indent=1) + "\n")
        write_markdown(report, out_dir / "structured.md")


def write_markdown(report: dict, path: Path) -> None:
    """The table of record: per repeat, free and constrained wall times and their ratio; the medians."""
    same, js = report["same_tokens_runs"], report["json_runs"]
    md = [f"# Structured generation overhead ({report['model']}, batch {report['batch']}, {report['max_new_tokens']} new "
          f"tokens, {report['threads']} thread(s), {report['repeats']} alternating repeats)", "",
          "| repeat | same tokens: free s | constrained s | ratio | JSON schema: free s / 1k tok | constrained s / 1k tok "
          "| ratio | valid JSON free / constrained |", "|---|---|---|---|---|---|---|---|"]
    for i, (a, b) in enumerate(zip(same, js)):
        fr, cr = 1000 * b["free_s"] / b["free_tokens"], 1000 * b["constrained_s"] / b["constrained_tokens"]
        md.append(f"| {i + 1} | {a['free_s']:.2f} | {a['constrained_s']:.2f} | {a['constrained_s'] / a['free_s']:.3f} | "
                  f"{fr:.2f} | {cr:.2f} | {cr / fr:.3f} | {b['free_valid_json']} / {b['constrained_valid_json']} "
                  f"of {report['batch']} |")
    md += ["", f"Median ratios: **same tokens {report['overhead_ratio']:.3f}** (target ≤ {report['target_overhead_ratio']}), "
           f"JSON schema per token {report['json_overhead_per_token']:.3f}. Greedy outputs identical with and without the "
           f"permissive grammar: {report['same_tokens_identical_outputs']}. Load average at the end: "
           f"{report['load_average'][0]:.2f} (a notebook run of record held the other core)."]
    path.write_text("\n".join(md) + "\n")


def _parses(text: str) -> bool:
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        return False
    return isinstance(value, dict) and isinstance(value.get("texts"), list)


if __name__ == "__main__":
    main()
