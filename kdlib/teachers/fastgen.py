"""Fast batched generation for Hugging Face decoder-only LMs: continuous batching on a per-row KV buffer.

`model.generate` runs a batch until its longest row stops: rows that hit end-of-sequence early sit idle
while their slot still costs a full row of compute, and the batch is left-padded to its longest prompt.
`generate` here keeps `batch_size` rows busy instead. A finished row leaves at once and the next waiting
prompt is prefilled and spliced into the freed row of a preallocated KV buffer, so every decode step
computes only live rows. Rows share one write column `end` of the buffer; a row's tokens sit in columns
`[start, end)` with its own `start`, and explicit `position_ids` and a 2D padding mask make each row see
exactly what it would see alone. Greedy outputs therefore match `model.generate(do_sample=False)` up to
float rounding from different batch shapes (see `bench/bench_generation.py` for the measured match rate).

`SamplingParams` is the whole decoding recipe: logits processors a model's `generation_config` may carry
(repetition penalty, suppressed tokens, ...) are not applied, so compare against `generate` with none.

Sampling draws from one `torch.Generator` per prompt seeded with `seeds[i]`, so a sample depends only on
(prompt, params, seed), never on which prompts shared its batch.

Works with any model whose `DynamicCache(config=...)` is made of plain full-attention `DynamicLayer`s
(Llama, GPT-2, Qwen2, Mistral without sliding window, ...). Sliding-window, linear-attention and other
hybrid caches keep tokens in layouts this buffer does not model, so they fall back to HF `generate`.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable

import torch

from kdlib.teachers.engine import _device_of, _Engine
from kdlib.teachers.sampling import GenerationOutput, SamplingParams, _check_int

log = logging.getLogger(__name__)


# ----------------------------------------------------------------------------- entry point

def generate(model, prompts: list[list[int]], params: SamplingParams, seeds: list[int] | None = None,
             batch_size: int = 32, eos_token_ids: list[int] | None = None, pad_token_id: int | None = None,
             stats: dict | None = None, share_prefix: bool = True, constraints: list | None = None
             ) -> list[GenerationOutput]:
    """Outputs in the order of `prompts`. Each prompt i with seeds[i] samples from its own torch.Generator,
    so a sample depends only on (prompt, params, seed), never on which other prompts shared its batch.

    `eos_token_ids` defaults to the model's generation config; `params.stop_token_ids` are added to it.
    `seeds` defaults to draws from torch's global generator (so `torch.manual_seed` fixes them); greedy
    decoding ignores seeds. Out-of-memory errors halve `batch_size` and carry on with the unfinished
    prompts. `stats`, if given, is filled with counters (forward passes, final batch size, fallback).
    `share_prefix` computes the prompts' common prefix (a chat template's system prompt) once instead of
    once per prompt. `constraints` (one `kdlib.teachers.structured.Constraint` or None per prompt) restricts a
    prompt's tokens to its grammar; a row ends when its grammar allows nothing more.
    """
    prompts = _check_prompts(prompts)
    _check_int("batch_size", batch_size, minimum=1)
    seeds = _resolve_seeds(seeds, len(prompts))
    stop_ids = _stop_ids(model, eos_token_ids, params)
    pad_id = _pad_id(model, pad_token_id, stop_ids)
    stats = {} if stats is None else stats
    if not prompts:
        return []
    stats.update(prefill_calls=0, decode_steps=0, batch_size=batch_size, fallback=not supports_fast_path(model))
    results: list[GenerationOutput | None] = [None] * len(prompts)
    if constraints is not None and len(constraints) != len(prompts):
        raise ValueError(f"constraints has {len(constraints)} entries for {len(prompts)} prompts; give one per prompt")
    if constraints is not None and all(c is None for c in constraints):
        constraints = None
    if stats["fallback"] and constraints is not None:
        raise ValueError("structured generation needs fastgen's engine; this model's cache layout falls back to "
                         "HF generate, which kdlib does not constrain")
    if stats["fallback"]:
        run = _fallback_runner(model, prompts, params, seeds, stop_ids, pad_id, results)
    else:
        run = _engine_runner(model, prompts, params, seeds, stop_ids, pad_id, results, stats, share_prefix,
                             constraints)
    stats["batch_size"] = run_halving_on_oom(run, batch_size, _device_of(model))
    return results


def _engine_runner(model, prompts, params, seeds, stop_ids, pad_id, results, stats,
                   share_prefix: bool, constraints=None) -> Callable[[int], None]:
    """A `run(batch_size)` that decodes every prompt without a result yet; safe to call again after OOM."""
    def run(batch_size: int) -> None:
        todo = [i for i in range(len(prompts)) if results[i] is None]
        # Sorted token-wise, prompts built from one template sit together: they share cached prefixes,
        # and prefill groups drawn from neighbours share the most.
        todo.sort(key=lambda i: prompts[i])
        engine = _Engine(model, prompts, todo, params, seeds, stop_ids, pad_id, batch_size, results, stats,
                         share_prefix, constraints)
        with torch.inference_mode():
            engine.run()
    return run


# ----------------------------------------------------------------------------- arguments

def _check_prompts(prompts) -> list[list[int]]:
    if isinstance(prompts, torch.Tensor):
        prompts = prompts.tolist()
    out = []
    for i, p in enumerate(prompts):
        p = p.tolist() if isinstance(p, torch.Tensor) else list(p)
        if not p:
            raise ValueError(f"prompt {i} is empty: generation needs at least one prompt token")
        out.append([int(t) for t in p])
    return out


def _resolve_seeds(seeds, n: int) -> list[int]:
    if seeds is None:  # drawn from the global generator so that torch.manual_seed makes runs repeatable
        return torch.randint(0, 2**62, (n,)).tolist()
    seeds = [int(s) for s in seeds]
    if len(seeds) != n:
        raise ValueError(f"seeds has {len(seeds)} entries for {n} prompts; give one seed per prompt")
    return seeds


def _as_list(ids) -> list[int]:
    if ids is None:
        return []
    return [int(ids)] if isinstance(ids, int) else [int(t) for t in ids]


def _stop_ids(model, eos_token_ids, params: SamplingParams) -> frozenset[int]:
    if eos_token_ids is None:
        gen_cfg = getattr(model, "generation_config", None)
        eos_token_ids = getattr(gen_cfg, "eos_token_id", None)
        if eos_token_ids is None:
            eos_token_ids = getattr(model.config, "eos_token_id", None)
    return frozenset(_as_list(eos_token_ids)) | frozenset(params.stop_token_ids)


def _pad_id(model, pad_token_id, stop_ids) -> int:
    """Id written into left padding of prefill groups; it is masked out, so any valid id will do."""
    if pad_token_id is not None:
        return int(pad_token_id)
    gen_pad = getattr(getattr(model, "generation_config", None), "pad_token_id", None)
    candidates = _as_list(gen_pad) or _as_list(getattr(model.config, "pad_token_id", None)) or sorted(stop_ids)
    return candidates[0] if candidates else 0


def supports_fast_path(model) -> bool:
    """True when the model's KV cache is all plain full-attention layers and it takes position_ids.

    Raises ValueError for encoder-decoder models, which neither path here serves.
    """
    from transformers import DynamicCache
    from transformers.cache_utils import DynamicLayer

    config = model.config
    if getattr(config, "is_encoder_decoder", False):
        raise ValueError("fastgen.generate is for decoder-only models; this one is an encoder-decoder")
    try:
        layers = DynamicCache(config=config).layers
    except Exception:  # configs the cache factory does not understand: let HF generate handle them
        return False
    takes_positions = "position_ids" in inspect.signature(model.forward).parameters
    return takes_positions and len(layers) > 0 and all(type(layer) is DynamicLayer for layer in layers)


# ----------------------------------------------------------------------------- out of memory

def is_oom(exc: BaseException) -> bool:
    """CUDA's OutOfMemoryError, or any RuntimeError whose message says 'out of memory' (CPU, MPS, XPU)."""
    oom_type = getattr(torch.cuda, "OutOfMemoryError", ())
    return isinstance(exc, oom_type) or (isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower())


def run_halving_on_oom(run: Callable[[int], None], batch_size: int, device: torch.device | None = None) -> int:
    """Call `run(batch_size)`, halving the batch after each out-of-memory error; return the size that ran.

    `run` must resume where it stopped (finished prompts keep their outputs). A batch of 1 that still
    runs out of memory re-raises: nothing smaller is left to try.
    """
    while True:
        try:
            run(batch_size)
            return batch_size
        except Exception as exc:
            if not is_oom(exc) or batch_size == 1:
                raise
            batch_size //= 2
            log.warning("fastgen: out of memory (%s); retrying unfinished prompts with batch_size=%d",
                        str(exc).splitlines()[0][:200], batch_size)
            if device is not None and device.type == "cuda":
                torch.cuda.empty_cache()


# ----------------------------------------------------------------------------- fallback: HF generate

def _fallback_runner(model, prompts, params, seeds, stop_ids, pad_id, results) -> Callable[[int], None]:
    """HF `generate` for caches the buffer cannot model (sliding-window, linear-attention hybrids).

    Greedy runs batched; sampling runs one prompt at a time under its own seed, because HF draws all rows
    of a batch from one global generator and per-seed samples would then depend on the batch.
    """
    # With no stop ids at all, HF would fall back to the model's own eos; fine for these rare models.
    kwargs = dict(max_new_tokens=params.max_new_tokens, eos_token_id=sorted(stop_ids) or None,
                  pad_token_id=pad_id, do_sample=not params.greedy)
    if not params.greedy:
        if params.adaptive_temperature:
            raise NotImplementedError(
                f"adaptive_temperature needs kdlib's fast decoding path, which {type(model).__name__} "
                "does not support (sliding-window or hybrid cache); use a plain temperature")
        kwargs.update(temperature=params.temperature, top_p=params.top_p, top_k=params.top_k or None,
                      min_p=params.min_p or None, typical_p=params.typical_p)
    device = _device_of(model)

    def run(batch_size: int) -> None:
        todo = [i for i in range(len(prompts)) if results[i] is None]
        step = batch_size if params.greedy else 1
        for k in range(0, len(todo), step):
            group = todo[k:k + step]
            with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
                torch.manual_seed(seeds[group[0]])
                rows = _hf_generate_group(model, [prompts[i] for i in group], pad_id, device, kwargs)
            for i, row in zip(group, rows):
                results[i] = _trim(row, stop_ids, params.max_new_tokens, len(prompts[i]))
    return run


def _hf_generate_group(model, group: list[list[int]], pad_id: int, device, kwargs) -> list[list[int]]:
    width = max(len(p) for p in group)
    ids = torch.tensor([[pad_id] * (width - len(p)) + p for p in group], device=device)
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in group], device=device)
    with torch.inference_mode():
        out = model.generate(input_ids=ids, attention_mask=mask, **kwargs)
    return out[:, width:].tolist()


def _trim(row: list[int], stop_ids, max_new_tokens: int, prompt_tokens: int) -> GenerationOutput:
    """Cut a padded HF output row after its first stop token (padding may equal eos, so cut, don't strip)."""
    for j, tok in enumerate(row[:max_new_tokens]):
        if tok in stop_ids:
            return GenerationOutput(row[:j + 1], "stop", prompt_tokens)
    return GenerationOutput(row[:max_new_tokens], "length", prompt_tokens)
