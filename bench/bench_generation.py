"""Generation throughput of the default teacher: HF `model.generate` against `kdlib.teachers.fastgen.generate`.

    python bench/bench_generation.py            # full run, ~5-10 min on 2 CPU cores
    python bench/bench_generation.py --quick    # smoke check, under a minute

Prompts are SST-2 sentences wrapped in four short chat instructions (classify, rewrite, explain, summarise)
through the tokenizer's chat template, so answers end at end-of-sequence well within 64 new tokens. For
each batch size both methods decode the same prompts, greedy, in the same process, alternating which goes
first, and the ratio is taken within the run (fair under the machine's shared load). HF runs the prompts
in their given order in chunks of `batch_size`, left-padded, as a user would call it. Tokens counted are
generated tokens up to and including the stop token, never padding after a row finished. Batch 1 uses a
subset of the prompts (it is slow and gains little from batching); the subset's batch-1 HF outputs are
also the per-prompt reference for the match rates. A full run writes reports/bench/generation.{json,md};
`--quick` only prints its table unless given `--out`, so it never overwrites the results of record.

On a shared machine, OpenMP threads that spin at barriers make 2-thread runs crawl (measured here: 15x
slower per step than 1 thread while other jobs held both cores); `--threads 1` or OMP_WAIT_POLICY=PASSIVE
keeps the comparison meaningful. The report records the threads and the load average.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import platform
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from kdlib.lab.paths import data_mirror_dir  # noqa: E402
from kdlib.registry import models  # noqa: E402
from kdlib.teachers import fastgen  # noqa: E402

INSTRUCTIONS = [
    "Is the sentiment of this movie review positive or negative? Answer with one word.\n\nReview: {}",
    "Rewrite this movie review fragment as one complete, polite sentence.\n\nText: {}",
    "In one short sentence, explain whether this review is positive or negative.\n\nReview: {}",
    "Summarise this review in at most ten words.\n\nReview: {}",
]
FULL = dict(n_prompts=64, batch_sizes=(1, 8, 32), batch1_prompts=8, max_new_tokens=64, repeats=2)
QUICK = dict(n_prompts=8, batch_sizes=(1, 8), batch1_prompts=2, max_new_tokens=32, repeats=1)


def sst2_texts(n: int) -> list[str]:
    """The first n SST-2 training sentences of at least six words (shorter ones are mostly fragments)."""
    path = data_mirror_dir() / "sst2" / "train.jsonl.gz"
    texts = []
    with gzip.open(path, "rt", encoding="utf-8") as fh:
        for line in fh:
            text = json.loads(line)["text"].strip()
            if len(text.split()) >= 6:
                texts.append(text)
            if len(texts) == n:
                return texts
    raise SystemExit(f"{path} has fewer than {n} usable sentences")


def chat_prompts(tok, n: int) -> list[list[int]]:
    prompts = []
    for i, text in enumerate(sst2_texts(n)):
        messages = [{"role": "user", "content": INSTRUCTIONS[i % len(INSTRUCTIONS)].format(text)}]
        enc = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=True)
        prompts.append(list(enc["input_ids"]))
    return prompts


def cut_at_stop(row: list[int], stop_ids: set[int]) -> list[int]:
    """A padded HF output row up to and including its first stop token (pad may equal eos)."""
    for j, tok in enumerate(row):
        if tok in stop_ids:
            return row[:j + 1]
    return row


def run_hf(model, tok, prompts, batch_size: int, max_new_tokens: int) -> list[list[int]]:
    """Plain batched `model.generate`: prompts in order, chunks of batch_size, left-padded, greedy."""
    outputs = []
    for k in range(0, len(prompts), batch_size):
        enc = tok.pad({"input_ids": prompts[k:k + batch_size]}, return_tensors="pt")
        with torch.inference_mode():
            out = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False,
                                 pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
        width = enc["input_ids"].shape[1]
        outputs += [cut_at_stop(row, {tok.eos_token_id}) for row in out[:, width:].tolist()]
    return outputs


def run_fast(model, tok, prompts, batch_size: int, max_new_tokens: int) -> list[list[int]]:
    params = fastgen.SamplingParams(max_new_tokens=max_new_tokens)
    outs = fastgen.generate(model, prompts, params, batch_size=batch_size, eos_token_ids=[tok.eos_token_id],
                            pad_token_id=tok.pad_token_id)
    return [o.token_ids for o in outs]


def timed(fn):
    """(result, wall seconds, process CPU seconds); CPU time is less sensitive to other jobs' load."""
    wall, cpu = time.perf_counter(), time.process_time()
    result = fn()
    return result, time.perf_counter() - wall, time.process_time() - cpu


def bench_batch_size(model, tok, prompts, batch_size: int, cfg: dict) -> dict:
    runners = {"hf": run_hf, "fastgen": run_fast}
    totals = {name: {"tokens": 0, "wall_s": 0.0, "cpu_s": 0.0, "reps": []} for name in runners}
    outputs = {}
    for rep in range(cfg["repeats"]):
        order = ["hf", "fastgen"] if rep % 2 == 0 else ["fastgen", "hf"]  # alternate who goes first
        for name in order:
            outs, wall, cpu = timed(lambda r=runners[name]: r(model, tok, prompts, batch_size, cfg["max_new_tokens"]))
            tokens = sum(len(o) for o in outs)
            t = totals[name]
            t["tokens"] += tokens
            t["wall_s"] += wall
            t["cpu_s"] += cpu
            t["reps"].append({"tokens": tokens, "wall_s": round(wall, 2), "tok_per_s": round(tokens / wall, 1)})
            outputs[name] = outs
            print(f"  batch {batch_size:>2} rep {rep} {name:>7}: {tokens} tokens in {wall:6.1f}s "
                  f"= {tokens / wall:6.1f} tok/s (load {os.getloadavg()[0]:.1f})", flush=True)
    for t in totals.values():
        t["tok_per_s"] = round(t["tokens"] / t["wall_s"], 1)
        t["wall_s"], t["cpu_s"] = round(t["wall_s"], 1), round(t["cpu_s"], 1)
    same = sum(a == b for a, b in zip(outputs["fastgen"], outputs["hf"]))
    return {
        "batch_size": batch_size, "n_prompts": len(prompts),
        "hf": totals["hf"], "fastgen": totals["fastgen"],
        "speedup": round(totals["hf"]["wall_s"] / totals["fastgen"]["wall_s"], 2),
        "speedup_cpu_time": round(totals["hf"]["cpu_s"] / totals["fastgen"]["cpu_s"], 2),
        "greedy_match": f"{same}/{len(prompts)}", "greedy_match_rate": round(same / len(prompts), 3),
        "mean_new_tokens": round(sum(len(o) for o in outputs["hf"]) / len(prompts), 1),
        "stopped_at_eos": sum(o[-1:] == [tok.eos_token_id] for o in outputs["hf"]),
        "_outputs": outputs,
    }


def per_prompt_matches(results: list[dict], reference: list[list[int]]) -> dict:
    """Agreement of every method on the batch-1 subset with HF generate run one prompt at a time."""
    n = len(reference)
    out = {}
    for res in results:
        for name in ("hf", "fastgen"):
            same = sum(a == b for a, b in zip(res["_outputs"][name][:n], reference))
            out[f"{name}@{res['batch_size']}"] = f"{same}/{n}"
    return out


def machine() -> dict:
    import transformers

    return {"cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
            "transformers": transformers.__version__, "python": platform.python_version(),
            "processor": platform.processor() or platform.machine(), "load_avg_1m_at_start": os.getloadavg()[0]}


def write_reports(report: dict, out_dir: Path) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "generation.json").write_text(json.dumps(report, indent=1) + "\n")
    m = report["machine"]
    lines = [
        "# Generation throughput: HF `generate` vs `kdlib.teachers.fastgen`", "",
        f"Teacher {report['model']}, greedy, up to {report['max_new_tokens']} new tokens, chat prompts stopping "
        f"at EOS; {m['cpu_count']} CPUs, {m['torch_threads']} torch threads, torch {m['torch']}, "
        f"transformers {m['transformers']}; load average {m['load_avg_1m_at_start']:.1f} at start, "
        f"{report['load_avg_1m_at_end']:.1f} at end (other jobs share the machine: compare the ratios, "
        f"measured in the same run, more than the absolute numbers). {report['mode']} run "
        f"(`{report.get('command', '')}`), {report['repeats']} repeat(s) per method, alternating order; "
        f"{report['batch1_note']}.", "",
        "| batch | prompts | HF tok/s | fastgen tok/s | speedup (wall) | speedup (CPU time) | greedy match |",
        "|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in report["results"]:
        lines.append(f"| {r['batch_size']} | {r['n_prompts']} | {r['hf']['tok_per_s']} | {r['fastgen']['tok_per_s']} "
                     f"| {r['speedup']}x | {r['speedup_cpu_time']}x | {r['greedy_match']} |")
    lines += ["", "Greedy match = fastgen's outputs equal HF's at the same batch size, token for token. "
              "Against HF run one prompt at a time on the batch-1 subset: "
              + ", ".join(f"{k} {v}" for k, v in report["match_vs_per_prompt_hf"].items()) + ".", "",
              "Where the speedup comes from: finished rows leave at once and waiting prompts take their place "
              "(HF keeps a chunk's finished rows in every step until its longest answer ends), the KV cache is "
              "written in place instead of concatenated every step, prefill groups are cut to limit padding, "
              "and prefixes shared by many prompts (the chat template's system prompt, each instruction) are "
              "computed once. At batch 1 there are no idle rows to reclaim and each step reads every weight "
              "for one token, so only the prefix reuse helps.", ""]
    (out_dir / "generation.md").write_text("\n".join(lines))


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="8 prompts, batch 1 and 8, 32 new tokens")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--repeats", type=int, default=None, help="runs per method and batch size")
    parser.add_argument("--out", type=Path, default=None, help="report folder (default: reports/bench, "
                        "none for --quick)")
    args = parser.parse_args(argv)
    cfg = dict(QUICK if args.quick else FULL)
    if args.repeats:
        cfg["repeats"] = args.repeats
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model, tok = models.load_causal_lm(models.TEACHER_ID)
    prompts = chat_prompts(tok, cfg["n_prompts"])
    print(f"{len(prompts)} prompts, {min(map(len, prompts))}-{max(map(len, prompts))} tokens; "
          f"torch threads {torch.get_num_threads()}", flush=True)
    run_hf(model, tok, prompts[:2], 2, 4)  # warm-up: first calls pay one-off allocation and kernel setup
    run_fast(model, tok, prompts[:2], 2, 4)
    command = " ".join(["python bench/bench_generation.py"] + (sys.argv[1:] if argv is None else list(argv)))
    report = {"model": models.TEACHER_ID, "mode": "quick" if args.quick else "full", "command": command,
              "machine": machine(),
              "max_new_tokens": cfg["max_new_tokens"], "repeats": cfg["repeats"],
              "batch1_note": f"batch 1 runs the first {cfg['batch1_prompts']} prompts only", "results": []}
    for batch_size in cfg["batch_sizes"]:
        subset = prompts[:cfg["batch1_prompts"]] if batch_size == 1 else prompts
        report["results"].append(bench_batch_size(model, tok, subset, batch_size, cfg))
    reference = report["results"][0]["_outputs"]["hf"]  # batch 1 HF: one prompt at a time
    report["match_vs_per_prompt_hf"] = per_prompt_matches(report["results"], reference)
    report["load_avg_1m_at_end"] = os.getloadavg()[0]
    for r in report["results"]:
        r.pop("_outputs")
    out_dir = args.out or (None if args.quick else ROOT / "reports" / "bench")
    if out_dir is not None:
        write_reports(report, out_dir)
        print(f"wrote {out_dir / 'generation.json'} and generation.md")
    print(json.dumps(report["results"], indent=1))
    return report


if __name__ == "__main__":
    main()
