"""Local teacher backend on transformers: batched generation and log-likelihood scoring.

Generation goes through `kdlib.teachers.fastgen` (continuous batching on a KV buffer, a per-row
seeded generator, batch halving on OOM). Rows are grouped by prompt length into chunks of
`commit_every` rows, each committed to the cache as soon as it is done (see `kdlib.teachers.api`
on why a resumed run then recomputes exactly the chunks an uninterrupted run would have).

Scoring runs one forward pass over "prompt + candidate" and sums the log-probs of the
tokens that belong to the candidate (found by character offsets, so a token that
straddles the boundary is counted with the candidate, as an OpenAI `echo` server does).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from kdlib.registry import models
from kdlib.teachers.api import GenParams, Request, Teacher, Unsupported, cut_at_stop
from kdlib.teachers.gen_cache import Entry


@dataclass(frozen=True)
class TokenLogprob:
    token: str
    offset: int                  # character offset of the token in the scored text
    end: int
    logprob: float | None        # None for the first token: nothing precedes it
    top: tuple[tuple[str, float], ...] = ()


def is_oom(exc: BaseException) -> bool:
    """fastgen's test, plus the CPU allocator's wording ("can't allocate memory")."""
    from kdlib.teachers import fastgen

    return fastgen.is_oom(exc) or (isinstance(exc, RuntimeError) and "can't allocate memory" in str(exc))


def run_halving(fn: Callable[[list], list], items: list, batch_size: int) -> list:
    """fn over items in chunks of batch_size; on out-of-memory halve the chunk and go on."""
    out, start, size = [], 0, max(1, batch_size)
    while start < len(items):
        chunk = items[start:start + size]
        try:
            out.extend(fn(chunk))
        except Exception as exc:
            if not is_oom(exc) or size == 1:
                raise
            _free_memory()
            size = max(1, size // 2)
            continue
        start += len(chunk)
    return out


def _free_memory() -> None:
    import gc

    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


class LocalTeacher(Teacher):
    """A causal LM from an HF id or local folder (resolved by `kdlib.registry.models`), loaded on first use."""
    backend = "local"

    def __init__(self, model: str = models.TEACHER_ID, *, device: str = "auto", dtype: str = "auto",
                 batch_size: int = 32, commit_every: int | None = None, revision: str | None = None,
                 trust_remote_code: bool = False, amateur: int | str | None = None, **common):
        from kdlib.lab.setup import pick_device, pick_dtype

        commit_every = 4 * batch_size if commit_every is None else commit_every
        for name, value in (("batch_size", batch_size), ("commit_every", commit_every)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an int >= 1, got {value!r}")
        self.resolved = models.resolve(model, revision)
        super().__init__(self.resolved.name, self.resolved.revision, **common)
        self.device = pick_device(device)
        self.dtype = pick_dtype(self.device, dtype)
        self.batch_size = batch_size      # rows decoded at once
        self.commit_every = commit_every  # rows per cache commit: fastgen refills finished rows within it
        self.trust_remote_code = trust_remote_code
        # The amateur of contrastive decoding: the expert's first N layers (int) or another model sharing
        # the tokenizer (HF id or path). Loaded on the first contrastive call.
        if amateur is not None and (isinstance(amateur, bool) or not isinstance(amateur, int | str)):
            raise TypeError(f"amateur must be a layer count (int) or a model id/path, got {amateur!r}")
        self.amateur = amateur
        # Loaded lazily, into a dict that twins made by `with_cache` (shallow copies) share: whichever loads
        # first loads for all, so a recipe's private-ledger twin never reloads the weights.
        self._loaded: dict = {}

    def identity(self) -> dict:
        # dtype changes the numbers (and so greedy ties and samples); the device mostly does not.
        ident = {**super().identity(), "dtype": str(self.dtype).removeprefix("torch.")}
        if self.amateur is not None:  # only when set: keys of teachers without one stay as they were
            ident["amateur"] = self.amateur
        return ident

    def _check_supported(self, params: GenParams) -> None:
        if params.grammar and params.contrastive > 0:
            raise Unsupported("structured generation and contrastive decoding do not combine here: the grammar "
                              "constrains fastgen's engine, contrastive decoding runs its own loop")
        if params.contrastive > 0 and self.amateur is None:
            raise ValueError("contrastive decoding needs an amateur: make_teacher(..., amateur=N) uses the "
                             "teacher's first N layers, or pass a weaker model's id/path sharing its tokenizer")

    def amateur_model(self):
        """The contrastive amateur, built or loaded once."""
        if "amateur" not in self._loaded:
            model, _ = self.load()
            if isinstance(self.amateur, int):
                from kdlib.distillation.distill import truncated_student

                self._loaded["amateur"] = truncated_student(model, self.amateur).eval()
            else:
                resolved = models.resolve(self.amateur)
                amateur, tok = models.load_causal_lm(resolved, self.device, self.dtype)
                from kdlib.distillation.distill import check_same_tokenizer

                check_same_tokenizer(self.tokenizer, tok)
                self._loaded["amateur"] = amateur
        return self._loaded["amateur"]

    # --- loading and tokenising ----------------------------------------------------------------
    def load(self):
        """(model, tokenizer), loaded once; a run served wholly from the cache never loads them."""
        if "model" not in self._loaded:
            self._loaded["model"], self._loaded["tokenizer"] = models.load_causal_lm(
                self.resolved, self.device, self.dtype, trust_remote_code=self.trust_remote_code)
        return self._loaded["model"], self._loaded["tokenizer"]

    @property
    def tokenizer(self):
        return self.load()[1]

    def prompt_text(self, prompt) -> str:
        """The text the model sees: chat conversations go through the chat template."""
        if isinstance(prompt, str):
            return prompt
        tok = self.tokenizer
        if not getattr(tok, "chat_template", None):
            raise ValueError(f"{self.model} has no chat template: pass plain-text prompts instead of messages")
        return tok.apply_chat_template(prompt, add_generation_prompt=True, tokenize=False)

    def encode(self, prompt) -> list[int]:
        # Templated text already carries its special tokens; raw text gets the tokenizer's usual ones.
        return self.tokenizer(self.prompt_text(prompt), add_special_tokens=isinstance(prompt, str)).input_ids

    def eos_token_ids(self) -> list[int]:
        model, tok = self.load()
        ids = model.generation_config.eos_token_id
        ids = list(ids) if isinstance(ids, list | tuple) else [ids] if ids is not None else []
        if tok.eos_token_id is not None and tok.eos_token_id not in ids:
            ids.append(tok.eos_token_id)
        return ids

    # --- generation ----------------------------------------------------------------------------
    def _plan(self, requests: list[Request]) -> list[list[Request]]:
        lengths = {r.key: len(self.encode(r.prompt)) + len(r.candidate or "") // 4 for r in requests}
        if all(r.candidate is not None for r in requests):
            # scoring: the candidates of one prompt side by side, so that a batch runs their prompt once
            texts = {r.key: self.prompt_text(r.prompt) for r in requests}
            first = {}
            for r in requests:
                first.setdefault(texts[r.key], lengths[r.key])
            lengths = {r.key: (first[texts[r.key]], texts[r.key]) for r in requests}
        ordered = sorted(requests, key=lambda r: lengths[r.key])  # stable: ties keep request order
        size = self.commit_every
        return [ordered[i:i + size] for i in range(0, len(ordered), size)]

    def _run_generate(self, batch: list[Request], params: GenParams) -> list[Entry]:
        ids = [self.encode(r.prompt) for r in batch]
        grammars = [r.grammar for r in batch]
        outs = self.generate_ids(ids, params, [r.seed for r in batch], grammars if any(grammars) else None)
        return [self._entry(out, params) for out in outs]

    def generate_ids(self, prompts: list[list[int]], params: GenParams, seeds: list[int],
                     grammars: list[str] | None = None):
        """Raw generation over token ids (no cache): a list of fastgen GenerationOutput. `grammars`: one
        spec per prompt ("" = free), else `params.grammar` for all."""
        from kdlib.teachers import fastgen

        model, tok = self.load()
        sampling = fastgen.SamplingParams(
            max_new_tokens=params.max_new_tokens, temperature=params.temperature, top_p=params.top_p,
            top_k=params.top_k, min_p=params.min_p, typical_p=params.typical_p,
            adaptive_temperature=params.adaptive_temperature, stop_token_ids=tuple(params.stop_token_ids))
        if params.contrastive > 0:
            from kdlib.teachers import contrastive

            return contrastive.generate(model, self.amateur_model(), prompts, sampling, params.contrastive,
                                        params.contrastive_alpha, seeds=seeds, eos_token_ids=self.eos_token_ids(),
                                        pad_token_id=tok.pad_token_id, batch_size=self.batch_size)
        grammars = grammars if grammars is not None else [params.grammar] * len(prompts)
        constraints = None
        if any(grammars):
            from kdlib.teachers.structured import Constraint

            compiled = {g: Constraint.for_tokenizer(tok, g) for g in set(grammars) if g}
            constraints = [compiled.get(g) for g in grammars]
        return fastgen.generate(model, prompts, sampling, seeds=seeds, batch_size=self.batch_size,
                                eos_token_ids=self.eos_token_ids(), pad_token_id=tok.pad_token_id,
                                constraints=constraints)

    def _entry(self, out, params: GenParams) -> Entry:
        ids = out.token_ids
        if out.finish_reason == "stop" and ids and ids[-1] in self.eos_token_ids() + list(params.stop_token_ids):
            ids = ids[:-1]  # as in the OpenAI API, the stop itself is not part of the text
        text = self.tokenizer.decode(ids, skip_special_tokens=True)
        text, stopped = cut_at_stop(text, params.stop)
        finish = "stop" if stopped else out.finish_reason
        return Entry("generate", text, out.prompt_tokens, len(out.token_ids), finish)

    # --- scoring -------------------------------------------------------------------------------
    def _run_score(self, batch: list[Request]) -> list[Entry]:
        """Log-probs of each request's candidate. Candidates of one prompt (the labels of one text) share its
        forward pass: the prompt runs once and each candidate continues from its KV cache (`_score_shared`);
        a prompt with a single candidate in the batch runs whole (`token_logprobs`)."""
        prefixes = [self.prompt_text(r.prompt) for r in batch]
        raw = [isinstance(r.prompt, str) for r in batch]
        groups: dict[tuple[str, bool], list[int]] = {}
        for i, key in enumerate(zip(prefixes, raw)):
            groups.setdefault(key, []).append(i)
        scored: dict[int, tuple[list[float], int]] = {}
        for (prefix, flag), rows in groups.items():
            if len(rows) > 1:
                try:
                    shared = self._score_shared(prefix, flag, [batch[i].candidate for i in rows])
                except Exception as exc:  # out of memory: the whole-text path below halves its batches
                    if not is_oom(exc):
                        raise
                    _free_memory()
                    shared = None
                if shared is not None:
                    scored.update(zip(rows, shared))
        rest = [i for i in range(len(batch)) if i not in scored]
        if rest:
            per_text = self.token_logprobs([prefixes[i] + batch[i].candidate for i in rest],
                                           add_special_tokens=[raw[i] for i in rest],
                                           from_chars=[len(prefixes[i]) for i in rest])
            for i, toks in zip(rest, per_text):
                # A token belongs to the candidate if it ends after the prompt does.
                scored[i] = ([t.logprob for t in toks if t.end > len(prefixes[i]) and t.logprob is not None], len(toks))
        return [Entry("score", None, scored[i][1], 0, None, {"token_logprobs": scored[i][0]}) for i in range(len(batch))]

    def _score_shared(self, prefix: str, add_special_tokens: bool, candidates: list[str]
                      ) -> list[tuple[list[float], int]] | None:
        """(candidate token log-probs, tokens of prompt + candidate) of each candidate after one shared prompt.

        Every "prompt + candidate" is tokenized whole, as in `token_logprobs`, and the longest run of token ids
        they all share that ends before any candidate token (one ending after the prompt's characters) runs
        once with its KV cache; the rest of each text runs as one small batch continuing from that cache
        (right-padded). The log-probs are those of the whole-text pass up to float rounding, at about
        1/len(candidates) of the prompt's compute (label scoring: one prompt pass instead of one per label).
        None when the shared run is too short to be worth it."""
        import torch

        model, tok = self.load()
        encs = [tok(prefix + c, add_special_tokens=add_special_tokens, return_offsets_mapping=True) for c in candidates]
        ids = [list(e.input_ids) for e in encs]
        first = [next((k for k, (_, end) in enumerate(e.offset_mapping) if k > 0 and end > len(prefix)), len(e.input_ids))
                 for e in encs]
        shared = min(first)
        for row in ids[1:]:
            shared = next((k for k in range(shared) if row[k] != ids[0][k]), shared)
        if shared < 2 or any(f >= len(row) for f, row in zip(first, ids)):
            return None  # nothing worth sharing, or a candidate with no token of its own (scored the usual way)
        width = max(len(row) for row in ids) - shared
        suffix = torch.full((len(ids), width), tok.pad_token_id or 0, dtype=torch.long)
        mask = torch.zeros((len(ids), shared + width), dtype=torch.long)
        mask[:, :shared] = 1
        for r, row in enumerate(ids):
            suffix[r, :len(row) - shared] = torch.tensor(row[shared:])
            mask[r, shared:len(row)] = 1
        device = model.device
        with torch.inference_mode():
            keep = {"logits_to_keep": 1} if "logits_to_keep" in inspect.signature(model.forward).parameters else {}
            head = model(input_ids=torch.tensor([ids[0][:shared]], device=device), use_cache=True, **keep)
            next_logp = torch.log_softmax(head.logits[0, -1].float(), dim=-1).cpu()  # predicts token `shared`
            cache = head.past_key_values
            cache.batch_repeat_interleave(len(ids))
            tail = model(input_ids=suffix.to(device), attention_mask=mask.to(device), past_key_values=cache,
                         use_cache=False).logits
            tail_logp = torch.log_softmax(tail.float(), dim=-1).cpu()  # position j predicts token shared + j + 1
        out = []
        for r, (row, f) in enumerate(zip(ids, first)):
            lps = [float(next_logp[row[pos]]) if pos == shared else float(tail_logp[r, pos - shared - 1, row[pos]])
                   for pos in range(f, len(row))]
            out.append((lps, len(row)))
        return out

    def token_logprobs(self, texts: Sequence[str], add_special_tokens: Sequence[bool] | bool = True,
                       top: int = 0, from_chars: Sequence[int] | None = None) -> list[list[TokenLogprob]]:
        """Per-token log-probs of each text under the model (batched, halving on OOM). With `from_chars`, only
        the tokens ending after that character of their text get one (the others None): label scoring needs the
        candidate's few tokens, and the vocabulary projection and softmax of every prompt position (a
        [batch, length, vocabulary] tensor: 151,936 columns for Qwen2.5) would cost more than the model itself."""
        flags = [add_special_tokens] * len(texts) if isinstance(add_special_tokens, bool) else list(add_special_tokens)
        rows = list(zip(texts, flags, from_chars if from_chars is not None else [-1] * len(texts)))
        return run_halving(lambda chunk: self._logprob_batch(chunk, top), rows, self.batch_size)

    def _logprob_batch(self, rows: list[tuple[str, bool, int]], top: int) -> list[list[TokenLogprob]]:
        import torch

        model, tok = self.load()
        encs = [tok(text, add_special_tokens=flag, return_offsets_mapping=True) for text, flag, _ in rows]
        width = max(len(e.input_ids) for e in encs)
        ids = torch.full((len(encs), width), tok.pad_token_id or 0, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for i, e in enumerate(encs):  # right padding: positions (and so logits) match an unpadded pass
            ids[i, :len(e.input_ids)] = torch.tensor(e.input_ids)
            mask[i, :len(e.input_ids)] = 1
        # The logit at position p predicts token p + 1: keep the positions some row needs (its tokens from the
        # first one ending after its `from_char`), all of them when a row wants every token.
        first = [next((k for k, (_, end) in enumerate(e.offset_mapping) if k > 0 and end > start), len(e.input_ids))
                 if start >= 0 else 1 for e, (_, _, start) in zip(encs, rows)]
        keep = sorted({p - 1 for e, f in zip(encs, first) for p in range(f, len(e.input_ids))})
        kwargs = {}
        if len(keep) < width - 1 and "logits_to_keep" in inspect.signature(model.forward).parameters:
            kwargs["logits_to_keep"] = torch.tensor(keep or [0], device=model.device)
        else:
            keep = list(range(width - 1))
        with torch.inference_mode():
            logits = model(input_ids=ids.to(model.device), attention_mask=mask.to(model.device), **kwargs).logits
            logp = torch.log_softmax(logits[:, :len(keep)].float(), dim=-1)
            targets = ids[:, [p + 1 for p in keep]].to(logp.device)
            picked = logp.gather(-1, targets.unsqueeze(-1)).squeeze(-1).cpu()
            tops = torch.topk(logp, top, dim=-1) if top else None
        column = {p: c for c, p in enumerate(keep)}
        return [self._token_rows(tok, e, picked[i], tops, i, column, f) for i, (e, f) in enumerate(zip(encs, first))]

    @staticmethod
    def _token_rows(tok, enc, picked, tops, row: int, column: dict[int, int], first: int) -> list[TokenLogprob]:
        out = []
        for pos, (tid, (start, end)) in enumerate(zip(enc.input_ids, enc.offset_mapping)):
            c = column.get(pos - 1) if pos >= first else None
            lp = float(picked[c]) if c is not None else None
            alt = ()
            if tops is not None and c is not None:
                alt = tuple((tok.decode([int(t)]), float(v))
                            for v, t in zip(tops.values[row, c].cpu(), tops.indices[row, c].cpu()))
            out.append(TokenLogprob(tok.decode([tid]), start, end, lp, alt))
        return out

