"""Benchmark: chunked `kdlib.distillation.losses.kd_loss` against the naive full-softmax `naive_kd_loss`.

For every loss kind and vocabulary size: forward + backward of one batch of tokens. Every measurement runs in
its own fresh interpreter, one at a time, chunked and naive interleaved over --repeats rounds (medians are
reported), so that the shared machine's changing load hits both alike:

* time: wall clock of forward + backward, including page faults on fresh buffers (on CPU, glibc maps and
  unmaps buffers this large on every step of a training loop too);
* extra peak memory: on CPU the peak resident set size during the run minus the RSS just before it, with
  the inputs (student logits as a leaf that requires grad, teacher logits) allocated and touched and a tiny
  warm-up done. The kernel's high-water mark is reset first (`echo 5 > /proc/self/clear_refs`), so the
  number is this run's own peak. The student logits' .grad counts as extra for both implementations. On
  CUDA: torch.cuda.max_memory_allocated minus the memory allocated before the run.

    python bench/bench_losses.py            # CPU: vocab 49,152 and 151,936, 2,048 tokens -> reports/bench/losses.*
    python bench/bench_losses.py --quick    # vocab 8,192, 512 tokens, prints the table only
    python bench/bench_losses.py --tune     # only the chunk-size sweep of the chunked path
    python bench/bench_losses.py --device cuda --out reports/bench/losses_cuda   # 8,192 tokens; adds Liger's
                                            # fused JSD when liger-kernel is installed
    python bench/bench_losses.py --fused-head --dtype float32   # hidden states in: `kd_loss_from_hidden` vs
                                            # output layer + naive loss -> reports/bench/losses_fused_head.*

--fused-head: the inputs are both models' last hidden states [N, H] and output layers [V, H] (H = 576 at
vocab 49,152 as in SmolLM2, 896 at 151,936 as in Qwen2.5-0.5B); the student's hidden states and output layer
are leaves that require grad, and their gradients (which both implementations produce) count as extra.

Memory safety: the naive case at vocab 151,936 needs ~10 GB beyond its inputs. Before each measurement the
script reads MemAvailable and waits (polling) until the estimated need is free; it never runs two at once.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
KINDS = ("fkl", "rkl", "jsd", "skew_fkl", "skew_rkl", "tvd", "sym_kl")
TARGET_MEM, TARGET_TIME = 0.15, 0.60
# hidden size of a real model at each vocabulary, for --fused-head (SmolLM2-135M; Qwen2.5-0.5B)
REAL_HIDDEN = {49152: 576, 151936: 896}
GIB = 2**30


# ----------------------------------------------------------------------------------------------- one case

def _rss_bytes() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _reset_peak_rss() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def _peak_rss_bytes() -> int:
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _loss_fn(impl: str, kind: str, chunk_rows: int | None, fused_head: bool = False):
    from kdlib.distillation import fused_losses, losses

    if fused_head and impl == "gemm":  # the output layers alone, forward and backward: work both paths must do
        import torch

        def gemm(s, t):
            with torch.no_grad():
                torch.nn.functional.linear(t[0], t[1])
            return torch.nn.functional.linear(s[0], s[1]).sum()

        return gemm
    if fused_head:  # inputs: (student hidden, student head weight), (teacher hidden, teacher head weight)
        fn = {"chunked": fused_losses.kd_loss_from_hidden, "naive": fused_losses.naive_kd_loss_from_hidden}[impl]
        extra = {"chunk_size": chunk_rows} if impl == "chunked" else {}
        return lambda s, t: fn(s[0], s[1], teacher_hidden=t[0], teacher_head=t[1], kind=kind, **extra)
    if impl == "chunked":
        return lambda s, t: losses.kd_loss(s, t, kind, chunk_size=chunk_rows)
    if impl == "naive":
        return lambda s, t: losses.naive_kd_loss(s, t, kind)
    if impl == "liger":  # Liger's fused JSD takes log-probabilities (student first); beta as in GKD
        from liger_kernel.transformers import LigerJSD

        jsd = LigerJSD(beta=0.5)
        return lambda s, t: jsd(_log_softmax_fp32(s), _log_softmax_fp32(t.detach()))
    raise ValueError(impl)


def _log_softmax_fp32(x):
    import torch

    return torch.log_softmax(x.float(), -1)


def _inputs(vocab: int, tokens: int, device: str, dt, fused_head: bool):
    """(student, teacher, leaves that get gradients). Realistic logit scale (std ~3): peaked softmaxes."""
    import torch

    if not fused_head:
        s = (torch.randn(tokens, vocab, device=device, dtype=dt) * 3).requires_grad_()
        return s, torch.randn(tokens, vocab, device=device, dtype=dt) * 3, [s]
    hidden = REAL_HIDDEN.get(vocab, 768)
    scale = 3 / hidden**0.5  # logits = h @ W.T with h ~ N(0, 1): std 3
    h = torch.randn(tokens, hidden, device=device, dtype=dt).requires_grad_()
    w = (torch.randn(vocab, hidden, device=device, dtype=dt) * scale).requires_grad_()
    t = (torch.randn(tokens, hidden, device=device, dtype=dt), torch.randn(vocab, hidden, device=device, dtype=dt) * scale)
    return (h, w), t, [h, w]


def run_case(impl: str, kind: str, vocab: int, tokens: int, device: str, dtype: str, repeats: int,
             chunk_rows: int | None, fused_head: bool = False) -> dict:
    import torch

    torch.manual_seed(0)
    dt = {"float32": torch.float32, "bfloat16": torch.bfloat16}[dtype]
    fn = _loss_fn(impl, kind, chunk_rows, fused_head)
    # warm-up on a tiny problem: loads kernels and allocator pools without raising the big-case peak
    ws, wt, _ = _inputs(64, 4, device, dt, fused_head)
    fn(ws, wt).backward()
    s, t, leaves = _inputs(vocab, tokens, device, dt, fused_head)
    times, extra = [], None
    for rep in range(repeats):
        for leaf in leaves:
            leaf.grad = None
        if device == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            before = torch.cuda.memory_allocated()
        else:
            before, reset = _rss_bytes(), _reset_peak_rss()
        t0 = time.perf_counter()
        loss = fn(s, t)
        loss.backward()
        if device == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
        if rep == 0:
            if device == "cuda":
                extra = torch.cuda.max_memory_allocated() - before
            else:
                extra = _peak_rss_bytes() - before
                if not reset:  # ru_maxrss is a lifetime peak: only an upper bound
                    extra = max(extra, 0)
        value = float(loss.detach())
        del loss
    grad_bytes = sum(x.numel() * x.element_size() for x in leaves)
    return {"impl": impl, "kind": kind, "vocab": vocab, "tokens": tokens, "device": device, "dtype": dtype,
            "time_s": statistics.median(times), "times_s": times, "extra_peak_bytes": extra,
            "input_bytes": 2 * grad_bytes, "grad_bytes": grad_bytes, "fused_head": fused_head,
            "hidden": REAL_HIDDEN.get(vocab, 768) if fused_head else None,
            "loss": value, "chunk_rows": chunk_rows, "threads": torch.get_num_threads()}


# ----------------------------------------------------------------------------------------------- driver

def mem_available() -> int:
    with open("/proc/meminfo") as fh:
        for line in fh:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    return 0


def estimated_need(impl: str, vocab: int, tokens: int, elem: int, fused_head: bool = False) -> int:
    nv = vocab * tokens * elem
    if fused_head:  # the naive path builds both models' logits; the fused one only chunk buffers
        return {"naive": 14 * nv, "chunked": nv // 2, "gemm": 3 * nv}[impl] + GIB
    per_impl = {"naive": 12 * nv, "chunked": 2 * nv, "liger": 4 * nv}[impl]
    return 2 * nv + per_impl + GIB // 2


def wait_for_memory(need: int, max_wait_s: float, poll_s: float = 30.0) -> bool:
    deadline = time.time() + max_wait_s
    while True:
        avail = mem_available()
        if avail >= need:
            return True
        if time.time() > deadline:
            return False
        print(f"  waiting: {avail / GIB:.1f} GiB available, {need / GIB:.1f} GiB wanted", flush=True)
        time.sleep(poll_s)


def spawn(impl, kind, vocab, dtype, args, chunk_rows=None) -> dict:
    """One measurement in a fresh interpreter, after waiting for enough free memory."""
    elem = 4 if dtype == "float32" else 2
    if args.device == "cpu":
        need = estimated_need(impl, vocab, args.tokens, elem, args.fused_head)
        if not wait_for_memory(need, args.max_wait):
            return {"impl": impl, "kind": kind, "vocab": vocab, "dtype": dtype,
                    "skipped": f"less than {need / GIB:.1f} GiB free"}
    cmd = [sys.executable, __file__, "--case", impl, kind, str(vocab), "--tokens", str(args.tokens),
           "--device", args.device, "--dtype", dtype, "--repeats", "1"]
    if chunk_rows:
        cmd += ["--chunk-rows", str(chunk_rows)]
    if args.fused_head:
        cmd += ["--fused-head"]
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or [f"exit {proc.returncode}"]
        return {"impl": impl, "kind": kind, "vocab": vocab, "dtype": dtype, "error": tail[0]}
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    out["load_avg_1min"] = os.getloadavg()[0]
    return out


def measure(impls, kind, vocab, dtype, args, chunk_rows=None) -> dict[str, dict]:
    """Interleave the implementations over --repeats rounds (chunked, naive, chunked, naive, ...) so that
    a change in the shared machine's load hits both alike; report medians over the rounds."""
    runs = {impl: [] for impl in impls}
    for _ in range(args.repeats):
        for impl in impls:
            runs[impl].append(spawn(impl, kind, vocab, dtype, args, chunk_rows))
    merged = {}
    for impl, rs in runs.items():
        ok = [r for r in rs if "time_s" in r]
        if not ok:
            merged[impl] = rs[0]
            continue
        merged[impl] = dict(ok[0], time_s=statistics.median(r["time_s"] for r in ok),
                            times_s=[round(r["time_s"], 3) for r in ok],
                            extra_peak_bytes=statistics.median(r["extra_peak_bytes"] for r in ok),
                            extra_peak_bytes_all=[r["extra_peak_bytes"] for r in ok],
                            load_avg_1min=[round(r["load_avg_1min"], 2) for r in ok])
    return merged


def summarise(results: list[dict]) -> list[dict]:
    rows = []
    for dtype, vocab in sorted({(r["dtype"], r["vocab"]) for r in results}, key=lambda dv: (dv[0] != "float32", dv)):
        for kind in KINDS:
            by = {r["impl"]: r for r in results if (r["kind"], r["vocab"], r["dtype"]) == (kind, vocab, dtype)}
            if not by:
                continue
            c, n = by.get("chunked", {}), by.get("naive", {})
            row = {"kind": kind, "vocab": vocab, "dtype": dtype}
            if "time_s" in c and "time_s" in n:
                row.update(naive_s=n["time_s"], chunked_s=c["time_s"], naive_extra_gib=n["extra_peak_bytes"] / GIB,
                           chunked_extra_gib=c["extra_peak_bytes"] / GIB,
                           time_ratio=c["time_s"] / n["time_s"],
                           mem_ratio=c["extra_peak_bytes"] / n["extra_peak_bytes"],
                           grad_gib=c["grad_bytes"] / GIB, loss_abs_diff=abs(c["loss"] - n["loss"]))
                # what the loss itself adds beyond the gradient that any implementation hands back
                row["mem_ratio_beyond_grad"] = ((c["extra_peak_bytes"] - c["grad_bytes"])
                                                / (n["extra_peak_bytes"] - n["grad_bytes"]))
                row["meets_time"] = row["time_ratio"] <= TARGET_TIME
                row["meets_memory"] = row["mem_ratio"] <= TARGET_MEM
            else:
                row["note"] = "; ".join(f"{k}: {v.get('skipped') or v.get('error')}" for k, v in by.items()
                                        if "time_s" not in v) or "missing"
            if "gemm" in by and "time_s" in by["gemm"] and "time_ratio" in row:
                gemm_s = by["gemm"]["time_s"]
                row.update(gemm_s=gemm_s, time_ratio_beyond_gemm=(c["time_s"] - gemm_s) / (n["time_s"] - gemm_s))
            if "liger" in by and "time_s" in by["liger"]:
                row.update(liger_s=by["liger"]["time_s"], liger_extra_gib=by["liger"]["extra_peak_bytes"] / GIB)
            rows.append(row)
    return rows


def _yes(flag: bool) -> str:
    return "yes" if flag else "**no**"


def markdown(rows: list[dict], meta: dict, sweep: list[dict]) -> str:
    if meta.get("fused_head"):
        what = (f"Forward + backward from hidden states: `kd_loss_from_hidden` (output layer fused into the chunked "
                f"loss; never the [N, V] logits or their gradient) against each model's output layer followed by "
                f"`naive_kd_loss` (full logits and softmaxes, autograd), on {meta['tokens']:,} tokens; hidden size "
                f"576 at vocab 49,152 (SmolLM2) and 896 at 151,936 (Qwen2.5-0.5B), logits of std 3. The 'grad' "
                f"column is the student hidden states' and output layer's gradients, which both produce. ")
        title = "fused output layer + loss vs output layer + naive loss"
    else:
        what = (f"Forward + backward of `kd_loss` (chunked, analytic gradients) and `naive_kd_loss` (full softmaxes, "
                f"autograd) on {meta['tokens']:,} tokens of logits (std 3), default chunk size. ")
        title = "chunked vs naive"
    lines = [f"# Distillation loss kernels: {title} ({meta['device_name']})", "",
             what +
             f"Each number is the median of {meta['repeats']} fresh processes, chunked and naive interleaved. "
             f"Memory: {meta['memory_method']}; it includes the gradients of the student inputs, which both must "
             f"produce (the 'grad' column); 'beyond grad' is the ratio of what each adds on top of them. "
             f"Targets: memory <= {TARGET_MEM}x and time <= {TARGET_TIME}x of naive. "
             f"`{meta.get('command', 'python bench/bench_losses.py')}`, {meta['date']}, torch {meta['torch']}, {meta['torch_threads']} "
             f"threads; {meta['load_note']}.", "",
             "| loss | logits | vocab | naive s | chunked s | time ratio | naive extra GiB | chunked extra GiB "
             "| grad GiB | memory ratio | beyond grad | time target | memory target |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|:---:|:---:|"]
    for r in rows:
        if "time_ratio" in r:
            lines.append(f"| {r['kind']} | {r['dtype']} | {r['vocab']:,} | {r['naive_s']:.2f} | {r['chunked_s']:.2f} "
                         f"| {r['time_ratio']:.2f}x | {r['naive_extra_gib']:.2f} | {r['chunked_extra_gib']:.2f} "
                         f"| {r['grad_gib']:.2f} | {r['mem_ratio']:.3f}x | {r['mem_ratio_beyond_grad']:.3f}x "
                         f"| {_yes(r['meets_time'])} | {_yes(r['meets_memory'])} |")
        else:
            lines.append(f"| {r['kind']} | {r['dtype']} | {r['vocab']:,} | | | | | | | | | {r['note']} | |")
    if any("gemm_s" in r for r in rows):
        lines += ["", "Time split: both paths compute the same four output-layer GEMMs (student forward, teacher "
                  "forward, the student's two gradient products), measured alone in the same run as 'GEMMs s'; "
                  "'loss beyond GEMMs' is (fused - GEMMs) / (naive - GEMMs), the loss's own time against the naive "
                  "loss's.", "", "| loss | vocab | GEMMs s | fused s | naive s | loss beyond GEMMs |",
                  "|---|---:|---:|---:|---:|---:|"]
        lines += [f"| {r['kind']} | {r['vocab']:,} | {r['gemm_s']:.2f} | {r['chunked_s']:.2f} | {r['naive_s']:.2f} "
                  f"| {r['time_ratio_beyond_gemm']:.2f}x |" for r in rows if "gemm_s" in r]
    if sweep:
        lines += ["", f"Chunk-size sweep (chunked `{sweep[0]['kind']}`, {sweep[0]['dtype']}, vocab {sweep[0]['vocab']:,}, median of "
                  f"{min(meta['repeats'], 2)} processes):", "", "| elements per chunk | rows | seconds | extra GiB |",
                  "|---:|---:|---:|---:|"]
        lines += [f"| 2^{s['log2_elems']} | {s['chunk_rows']} | {s['time_s']:.2f} | {s['extra_peak_bytes'] / GIB:.2f} |"
                  for s in sweep if "time_s" in s]
    if any("liger_s" in r for r in rows):
        lines += ["", "Liger fused JSD (beta 0.5; log-softmax of both models computed outside the kernel):", ""]
        lines += [f"- vocab {r['vocab']:,}: {r['liger_s']:.3f} s, {r['liger_extra_gib']:.2f} GiB extra"
                  for r in rows if "liger_s" in r]
    return "\n".join(lines) + "\n"


def chunk_sweep(args, kind: str = "jsd", exps=(20, 21, 22, 23, 24)) -> list[dict]:
    vocab, out = max(args.vocab), []
    sweep_args = argparse.Namespace(**dict(vars(args), repeats=min(args.repeats, 2)))
    for e in exps:
        rows = max(1, 2**e // vocab)
        r = measure(["chunked"], kind, vocab, args.dtype[0], sweep_args, chunk_rows=rows)["chunked"]
        r.update(log2_elems=e, chunk_rows=rows)
        out.append(r)
        print(f"sweep {kind} vocab {vocab} 2^{e} elems ({rows} rows): {r.get('times_s')} s", flush=True)
    return out


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="vocab 8,192 and 512 tokens; print only")
    ap.add_argument("--tune", action="store_true", help="only sweep the chunk size of the chunked path")
    ap.add_argument("--no-sweep", action="store_true", help="skip the chunk-size sweep of a full run")
    ap.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    ap.add_argument("--dtype", nargs="+", default=["float32", "bfloat16"], choices=("float32", "bfloat16"),
                    help="logits dtype(s); the first runs every vocab, the others only the largest")
    ap.add_argument("--tokens", type=int, default=None, help="tokens per batch (default 2048 CPU, 8192 CUDA)")
    ap.add_argument("--vocab", type=int, nargs="+", default=[49152, 151936])
    ap.add_argument("--kinds", nargs="+", default=list(KINDS), choices=KINDS)
    ap.add_argument("--repeats", type=int, default=3, help="fresh processes per implementation and case")
    ap.add_argument("--max-wait", type=float, default=1800, help="seconds to wait for free memory per case")
    ap.add_argument("--out", type=Path, default=None, help="output stem (default reports/bench/losses)")
    ap.add_argument("--fused-head", action="store_true",
                    help="hidden states + output layers in: kd_loss_from_hidden vs output layer + naive loss")
    ap.add_argument("--case", nargs=3, metavar=("IMPL", "KIND", "VOCAB"), help=argparse.SUPPRESS)
    ap.add_argument("--chunk-rows", type=int, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.tokens is None:
        args.tokens = 512 if args.quick else (8192 if args.device == "cuda" else 2048)
    if args.case:
        impl, kind, vocab = args.case
        print(json.dumps(run_case(impl, kind, int(vocab), args.tokens, args.device, args.dtype[0], args.repeats,
                                  args.chunk_rows, args.fused_head)))
        return
    if args.quick:
        args.vocab, args.no_sweep = [8192], True
    if args.tune:
        chunk_sweep(args)
        return
    impls = ["chunked", "naive"] + (["liger"] if args.device == "cuda" and not args.fused_head else [])
    if args.fused_head:  # the four GEMMs alone: the floor both paths share, to split their times
        impls.append("gemm")
    results, started = [], time.strftime("%Y-%m-%d %H:%M")
    for dtype in args.dtype:
        # the first dtype runs every vocab; further ones only the largest, to keep a full run near an hour
        for vocab in args.vocab if dtype == args.dtype[0] else [max(args.vocab)]:
            for kind in args.kinds:
                case_impls = [i for i in impls if i != "liger" or kind == "jsd"]
                for impl, r in measure(case_impls, kind, vocab, dtype, args).items():
                    results.append(r)
                    shown = (f"{r['times_s']} s, {r['extra_peak_bytes'] / GIB:.2f} GiB, load {r['load_avg_1min']}"
                             if "time_s" in r else r)
                    print(f"{kind:9s} {dtype} vocab {vocab:6d} {impl:8s} {shown}", flush=True)
    sweep = [] if args.no_sweep else chunk_sweep(args)
    rows = summarise(results)
    import torch

    meta = {"device_name": _device_name(args.device), "tokens": args.tokens, "dtypes": args.dtype,
            "repeats": args.repeats, "date": started, "torch": torch.__version__,
            "torch_threads": results[0].get("threads"), "fused_head": args.fused_head,
            "command": "python bench/bench_losses.py " + " ".join(sys.argv[1:]),
            "memory_method": "peak RSS (VmHWM after clear_refs) minus RSS before forward, fresh process per "
                             "measurement" if args.device == "cpu" else "max_memory_allocated minus allocated",
            "load_note": f"1-min load average {min(_loads(results)):.1f} to {max(_loads(results)):.1f} on "
                         f"{os.cpu_count()} cores during the runs (the machine is shared: times carry noise)"}
    if args.quick:
        meta["load_note"] += "; QUICK smoke run: too small (a single chunk) for the targets to mean anything"
    table = markdown(rows, meta, sweep)
    print(table)
    if args.quick and args.out is None:
        return
    stem = args.out or ROOT / "reports" / "bench" / ("losses_fused_head" if args.fused_head else "losses")
    stem.parent.mkdir(parents=True, exist_ok=True)
    stem.with_suffix(".json").write_text(json.dumps({"meta": meta, "summary": rows, "cases": results,
                                                     "chunk_sweep": sweep}, indent=1))
    stem.with_suffix(".md").write_text(table)


def _loads(results) -> list[float]:
    return [x for r in results for x in r.get("load_avg_1min", [])] or [os.getloadavg()[0]]


def _device_name(device: str) -> str:
    if device == "cuda":
        import torch

        return torch.cuda.get_device_name()
    return f"CPU {platform.machine()}, {os.cpu_count()} cores"


if __name__ == "__main__":
    main()
