"""Label scoring with a shared prompt pass vs one whole-text pass per label, same requests, same process.

    python bench/bench_scoring.py --threads 1            # run of record (SmolLM2 and Qwen2.5, ~15 min on one busy thread)
    python bench/bench_scoring.py --quick                # smoke check, prints only

The lab labels a text by the log-likelihood of each label name after a few-shot chat prompt
(`kdlib.synthesis.labeling.annotate_score`): C labels, one long shared prompt. `LocalTeacher._run_score` runs
that prompt once and continues each label from its KV cache (`_score_shared`); the baseline is the whole-text
path it replaced (`LocalTeacher.token_logprobs` over "prompt + label", batched, only the label's logits kept).
Both score the same requests (financial_phrasebank-style prompts: 3 labels, 4 demonstrations per class), in
alternating order, repeated; the log-probs must agree to float rounding (`max_abs_diff`).

Writes reports/bench/scoring.{json,md} (not with --quick, unless --out is given).
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

from kdlib.synthesis import labeling  # noqa: E402
from kdlib.teachers.api import Request  # noqa: E402
from kdlib.teachers.teacher_local import LocalTeacher  # noqa: E402

MODELS = ("HuggingFaceTB/SmolLM2-135M-Instruct", "Qwen/Qwen2.5-Coder-0.5B-Instruct")
FULL = dict(texts=6, repeats=3, models=MODELS)
QUICK = dict(texts=4, repeats=1, models=MODELS[:1])
NAMES = ["negative", "neutral", "positive"]
DEMOS = [("Operating profit rose to EUR 13.1 mn from EUR 8.7 mn.", "positive"),
         ("The company has 120 employees in Finland.", "neutral"),
         ("Net sales decreased by 15 % to EUR 41 mn.", "negative"),
         ("The order is worth some EUR 2 mn to the group.", "positive"),
         ("The annual general meeting will be held on 1 April.", "neutral"),
         ("The firm will cut 300 jobs at its plant in Tampere.", "negative")] * 2
TEXTS = ["Revenue doubled compared with the previous year.", "The CEO presented the strategy at the fair.",
         "Shares fell 8 % after the profit warning.", "The contract covers deliveries in 2027.",
         "Pre-tax loss widened to EUR 3 mn.", "Orders received grew by 30 %.",
         "The office moved to Helsinki in May.", "Margins improved on lower costs."]


def requests(teacher: LocalTeacher, n: int) -> list[Request]:
    prompts = [labeling.build_prompt(TEXTS[i % len(TEXTS)] + " " * (i // len(TEXTS)), NAMES, DEMOS) for i in range(n)]
    return [Request(i, j, p, f"{i}-{j}", candidate=c) for i, p in enumerate(prompts) for j, c in enumerate(NAMES)]


def whole_text(teacher: LocalTeacher, reqs: list[Request]) -> list[list[float]]:
    prefixes = [teacher.prompt_text(r.prompt) for r in reqs]
    rows = teacher.token_logprobs([p + r.candidate for p, r in zip(prefixes, reqs)], add_special_tokens=False,
                                  from_chars=[len(p) for p in prefixes])
    return [[t.logprob for t in toks if t.end > len(p) and t.logprob is not None] for p, toks in zip(prefixes, rows)]


def shared(teacher: LocalTeacher, reqs: list[Request]) -> list[list[float]]:
    out = []
    for start in range(0, len(reqs), teacher.batch_size):
        out += [e.extra["token_logprobs"] for e in teacher._run_score(reqs[start:start + teacher.batch_size])]
    return out


def measure(model: str, cfg: dict) -> dict:
    teacher = LocalTeacher(model=model, cache=False, progress=False, batch_size=15)  # 5 prompts x 3 labels a batch
    teacher.load()
    reqs = requests(teacher, cfg["texts"])
    prompt_tokens = len(teacher.encode(reqs[0].prompt))
    shared(teacher, reqs[:3])  # warm-up
    runs, diff = [], 0.0
    for r in range(cfg["repeats"]):
        times, outs = {}, {}
        for name in (("whole", "shared") if r % 2 == 0 else ("shared", "whole")):
            start = time.perf_counter()
            outs[name] = (whole_text if name == "whole" else shared)(teacher, reqs)
            times[name] = time.perf_counter() - start
        diff = max(diff, max(abs(a - b) for x, y in zip(outs["whole"], outs["shared"]) for a, b in zip(x, y)))
        assert all(len(x) == len(y) for x, y in zip(outs["whole"], outs["shared"]))
        runs.append({"whole_s": times["whole"], "shared_s": times["shared"]})
    speedup = sorted(x["whole_s"] / x["shared_s"] for x in runs)[len(runs) // 2]
    return {"model": model, "texts": cfg["texts"], "labels": len(NAMES), "prompt_tokens": prompt_tokens,
            "runs": runs, "speedup": speedup, "max_abs_diff": diff}


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
    results = [measure(m, cfg) for m in cfg["models"]]
    report = {"what": "label scoring: one shared prompt pass + KV-cached labels (LocalTeacher._score_shared) vs one "
                      "whole-text pass per label (token_logprobs)", "repeats": cfg["repeats"],
              "threads": torch.get_num_threads(), "load_average": os.getloadavg(),
              "machine": platform.processor() or platform.machine(), "results": results, "target_speedup": 2.0}
    print(json.dumps(report, indent=1))
    if out_dir:
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "scoring.json").write_text(json.dumps(report, indent=1) + "\n")
        md = [f"# Label scoring: shared prompt pass vs whole text per label ({report['threads']} thread(s), "
              f"{report['repeats']} alternating repeats)", "",
              "| model | prompts x labels | prompt tokens | whole-text s (median run) | shared s | speed-up | max abs log-prob diff |",
              "|---|---|---|---|---|---|---|"]
        for r in results:
            mid = sorted(r["runs"], key=lambda x: x["whole_s"] / x["shared_s"])[len(r["runs"]) // 2]
            md.append(f"| {r['model']} | {r['texts']} x {r['labels']} | {r['prompt_tokens']} | {mid['whole_s']:.2f} | "
                      f"{mid['shared_s']:.2f} | **{r['speedup']:.2f}x** | {r['max_abs_diff']:.1e} |")
        md += ["", f"Target: ≥ {report['target_speedup']}x with 3 labels and identical log-probs (to float rounding). "
               f"Load average at the end: {report['load_average'][0]:.2f}."]
        (out_dir / "scoring.md").write_text("\n".join(md) + "\n")


if __name__ == "__main__":
    main()
