"""The EvoKD comparison grid of notebook 05: datasets × shots × seeds × methods, with the baselines around the loop.

`prepare` loads each dataset with its test subset, full-data reference and task factory; `run_grid` runs every
(dataset, shots, seed, method): EvoKD presets (`kdlib.synthesis.evokd.preset`, checkpointed per run identity), AugGPT
paraphrases of the seed set at the same number of requested samples, and static generation given EvoKD's teacher
tokens on the same seed set (the equal-budget baseline). `final_scores` takes each run's last round, with the
shared round-0 student as "seed only". The notebook shows tables and figures of what these return.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import numpy as np

from kdlib.registry import data
from kdlib.students import student
from kdlib.synthesis import evokd, evokd_tasks, reform, synth

AUGGPT = "AugGPT paraphrase"
MATCHED = "static generation, EvoKD's tokens"   # static generation until it has spent what EvoKD spent
CLASSIFICATION_ONLY = {AUGGPT, "EvoKD + valuation", "EvoKD + value feedback", "EvoKD + relabel"}


def check_methods(methods: list[str]) -> None:
    """Unknown method names, and a matched-budget baseline without EvoKD before it, fail before any work."""
    for m in methods:
        if m not in (AUGGPT, MATCHED):
            evokd.preset(m)
    if MATCHED in methods and ("EvoKD" not in methods or methods.index("EvoKD") > methods.index(MATCHED)):
        raise ValueError(f"methods: {MATCHED!r} spends EvoKD's tokens, so 'EvoKD' must come before it in the list")


@dataclasses.dataclass
class Dataset:
    name: str
    dd: object
    kind: str                # "classification" or "ner"
    names: list[str]         # labels or BIO tags
    test: object
    reference: object        # the full-data student
    metric: str              # macro_f1 or entity_f1
    ref: float               # the reference's test score
    spec: object | None      # synth.TaskSpec for classification

    def task(self, config):
        """The EvoKD task (prompts, parsing, students) for one student configuration."""
        if self.kind == "classification":
            return evokd_tasks.ClassificationTask(self.spec, config, test_texts=list(self.test["text"]))
        return evokd_tasks.NERTask(evokd_tasks.entity_types(self.names), config, test_sentences=list(self.test["tokens"]))

    def seed_rows(self, k: int, seed: int) -> list[dict]:
        """The k-shot gold rows the runs start from."""
        return data.k_shot_rows(self.dd["train"], k, seed)


def prepare(names: list[str], config, *, test_max: int, validation_size: int, full_data_max_train: int,
            seed: int = 0) -> dict[str, Dataset]:
    """Each dataset with its test subset and full-data reference (2 epochs, early-stopped on validation)."""
    out = {}
    for name in names:
        dd = data.load(name)
        kind, labels = data.task_of(dd), data.label_names(dd)
        test = data.sample(dd["test"], test_max, seed)
        reference = student.full_data_reference(
            {"train": dd["train"], "validation": data.sample(dd["validation"], validation_size, seed)},
            config.replace(max_steps=None, epochs=2), max_train=full_data_max_train or None)
        metric = student.TASK_METRIC[kind]
        spec = synth.TaskSpec.for_dataset(Path(name).name, labels) if kind == "classification" else None
        out[name] = Dataset(name, dd, kind, labels, test, reference, metric, reference.evaluate(test)[metric], spec)
        print(f"{name}: {kind}, {len(labels)} labels/tags, test {len(test)}; full-data reference {metric} "
              f"{out[name].ref:.3f}")
    return out


def run_grid(llm, datasets: dict[str, Dataset], shots: list[int], seeds: list[int], methods: list[str],
             base: evokd.EvoKDConfig, config, root: Path, progress: bool = True):
    """Every run of the grid; returns (curves: one row per run and round, states by (dataset, k, seed, method))."""
    import pandas as pd

    check_methods(methods)
    jobs = [(n, k, s, m) for n in datasets for k in shots for s in seeds for m in methods
            if datasets[n].kind == "classification" or m not in CLASSIFICATION_ONLY]
    if progress:
        from kdlib.lab.progress import track

        jobs = track(jobs, desc="runs")
    curves, states, current = [], {}, {}
    for name, k, s, method in jobs:
        d = datasets[name]
        if (name, k, s) not in current:  # one task (and its memo of trained students) per seed set
            current = {(name, k, s): d.task(config.replace(seed=s))}
        task, rows = current[name, k, s], d.seed_rows(k, s)
        common = {"dataset": name, "shots": k, "seed": s, "method": method}
        if method == AUGGPT:
            curves.append({**common, **_auggpt(llm, d, task, rows, base, s)})
            continue
        if method == MATCHED:  # its own folder: the budget is not part of a run's identity
            budget = states[name, k, s, "EvoKD"].tokens
            cfg = evokd.preset("static generation", dataclasses.replace(base, seed=s, rounds=20 * base.rounds,
                                                                        max_tokens=budget))
            tag = f"-tokens{budget}"
        else:
            cfg, tag = evokd.preset(method, dataclasses.replace(base, seed=s)), ""
        folder = root / f"{Path(name).name}-k{k}-s{s}-{evokd.run_identity(cfg, llm, task, d.reference)}{tag}"
        _, state = evokd.run(llm, task, rows, cfg, evaluate_on=d.test, reference=d.reference, checkpoint_dir=folder,
                             progress=False)
        states[name, k, s, method] = state
        curves += [{**common, **h, "score": h[f"test_{d.metric}"]} for h in state.history]
    return pd.DataFrame(curves), states


def _auggpt(llm, d: Dataset, task, rows: list[dict], base: evokd.EvoKDConfig, seed: int) -> dict:
    """Paraphrases of the seed rows, as many as EvoKD requests over its rounds; one student on rows + paraphrases."""
    n = max(1, math.ceil(base.rounds * base.per_round / len(rows)))
    res = reform.paraphrase(llm, d.spec, rows, n=n, seed=seed, temperature=base.temperature,
                            max_new_tokens=base.generate_max_new_tokens, against=task.test_texts)
    trained = task.train(rows + [{"text": r["text"], "label": r["label"]} for r in res.rows], seed)
    return {"round": base.rounds, "pool": len(rows) + len(res.rows), "added": len(res.rows), "tokens": res.tokens,
            "score": trained.evaluate(d.test)[d.metric],
            "reference_agreement": evokd_tasks.label_agreement(task, d.reference, res.rows)}


def final_scores(curves, datasets: dict[str, Dataset]):
    """Each run's last round, plus the round-0 student every EvoKD-style run of a seed set shares, as "seed
    only"; `pct_of_full` is the score as a share of the full-data reference's."""
    import pandas as pd

    last = curves.sort_values("round").groupby(["dataset", "shots", "seed", "method"]).tail(1)
    seed_only = curves[curves["round"] == 0].drop_duplicates(["dataset", "shots", "seed"]).assign(method="seed only")
    final = pd.concat([seed_only, last])
    return final.assign(pct_of_full=100 * final.score / final.dataset.map({n: d.ref for n, d in datasets.items()}))


def yields(curves):
    """Parse rate per (dataset, shots, method): samples parsed / samples requested over a run's generation
    rounds (mean and std over seeds); empty when every run was resumed from checkpoints that predate it."""
    import pandas as pd

    if "requested" not in curves:
        return pd.DataFrame(columns=["mean", "std"])
    asked = curves[curves["round"] > 0].dropna(subset=["requested"])
    per_run = asked.groupby(["dataset", "shots", "seed", "method"])[["parsed", "requested"]].sum()
    per_run["parse_rate"] = per_run.parsed / per_run.requested.where(per_run.requested > 0)
    return per_run.groupby(["dataset", "shots", "method"]).parse_rate.agg(["mean", "std"]).round(3)


def label_agreement(curves):
    """Share of the teacher's labels the full-data reference agrees with, per (dataset, shots, method): each
    run's rounds weighted by the samples they kept, then mean and std over seeds."""
    gen = curves[curves["round"] > 0].dropna(subset=["reference_agreement"])
    per_run = (gen.assign(w=gen.reference_agreement * gen.added).groupby(["dataset", "shots", "seed", "method"])
               .agg(w=("w", "sum"), added=("added", "sum")))
    per_run["agreement"] = per_run.w / per_run.added.where(per_run.added > 0)
    return per_run.groupby(["dataset", "shots", "method"]).agreement.agg(["mean", "std"]).round(3)


def by_stance(states: dict, datasets: dict[str, Dataset], config):
    """Over EvoKD runs' generated samples: the reference's agreement with the teacher's labels per stance
    (easy / hard / plain), mean and std over seeds, with the samples per run."""
    import pandas as pd

    rows = []
    for (name, k, s, method), state in states.items():
        if method != "EvoKD":
            continue
        view, generated = datasets[name].task(config), [r for r in state.pool if r["origin"] != "seed"]
        for stance in sorted({r.get("stance", "plain") for r in generated}):
            mine = [r for r in generated if r.get("stance", "plain") == stance]
            rows.append({"dataset": name, "shots": k, "seed": s, "stance": stance, "samples": len(mine),
                         "agreement": evokd_tasks.label_agreement(view, datasets[name].reference, mine)})
    if not rows:
        return pd.DataFrame()
    return pd.DataFrame(rows).groupby(["dataset", "shots", "stance"]).agg(
        agreement=("agreement", "mean"), sd=("agreement", "std"), samples=("samples", "mean")).round(3)


def statements(final, datasets: dict[str, Dataset], shots: list[int], methods: list[str], yields, agreement
               ) -> list[str]:
    """What the numbers say, per dataset and shot count: each method against the seed-only student, EvoKD
    against static generation at equal requests and at equal tokens, the reference-labelled pair, constrained
    against free variants, and the teacher's label agreement. Verdicts are paired over seeds."""
    from kdlib.studies.experiment import versus

    lines = []
    for name, d in datasets.items():
        for k in shots:
            sel = final[(final.dataset == name) & (final.shots == k)]
            if not len(sel):
                continue
            where = {"dataset": name, "shots": k}
            so = sel[sel.method == "seed only"].score.mean()
            lines.append(f"**{name}, {k}-shot** ({d.metric}): seed only {so:.3f}, full data {d.ref:.3f}.")
            for m in (m for m in methods if m in set(sel.method)):
                v, scores = versus(final, "score", m, "seed only", where), sel[sel.method == m]
                sd = scores.score.std()
                lines.append(f"- {m}: {scores.score.mean():.3f}{'' if np.isnan(sd) else f' ± {sd:.3f}'} "
                             f"({100 * scores.score.mean() / d.ref:.0f}% of full); {_said(v, 'seed only')}; "
                             f"{scores.tokens.mean():.0f} teacher tokens.")
            for a, b, what in (("EvoKD", "static generation", "static generation at the same requests"),
                               ("EvoKD", MATCHED, "static generation at the same teacher tokens"),
                               ("EvoKD (reference labels)", "static generation (reference labels)",
                                "static generation, both with the reference's labels (the loop's effect on what "
                                "the teacher writes)")):
                if {a, b} <= set(sel.method):
                    lines.append(f"- {a} {_said(versus(final, 'score', a, b, where), what)}.")
            for m in (m for m in methods if m.endswith(evokd.STRUCTURED_TAG) and m in set(sel.method)):
                free = m[:-len(evokd.STRUCTURED_TAG)]
                if free in set(sel.method):
                    rate = {x: yields["mean"].get((name, k, x), float("nan")) for x in (free, m)}
                    lines.append(f"- Constraining {free} to the task's grammar: parse rate {rate[free]:.2f} -> "
                                 f"{rate[m]:.2f} of the requested samples; the student "
                                 f"{_said(versus(final, 'score', m, free, where), 'the free variant')}.")
            agree = agreement.loc[(name, k)]["mean"].dropna() if (name, k) in agreement.index else []
            if len(agree):
                lines.append("- Teacher labels the reference agrees with: "
                             + ", ".join(f"{m} {v:.2f}" for m, v in agree.items()) + ".")
    return lines


def _said(v: dict, other: str) -> str:
    """ "beats X (+0.012, ahead in 3/3 seeds)" """
    return f"{v['verdict']} {other}" + (f" ({v['delta']:+.3f}, ahead in {v['wins']}/{v['seeds']} seeds)" if v["seeds"] else "")


def emit_headlines(final, datasets: dict[str, Dataset], shots: list[int], methods: list[str], yields, agreement) -> None:
    """score/<dataset>/<k>shot/<method> (mean ± std), label_agreement/..., parse_rate/..., tokens/.../evokd."""
    from kdlib.lab import emit
    from kdlib.studies.experiment import emit_scores

    for name, d in datasets.items():
        key = emit.metric_key(Path(name).name)
        emit.emit(f"full_data_score/{key}", d.ref, higher_is_better=True)
        for k in shots:
            emit_scores(final, "score", f"score/{key}/{k}shot", ["seed only", *methods], dataset=name, shots=k)
            for table, what in ((agreement, "label_agreement"), (yields, "parse_rate")):
                for m in methods:
                    value = table["mean"].get((name, k, m), float("nan"))
                    if not np.isnan(value):
                        emit.emit(f"{what}/{key}/{k}shot/{emit.metric_key(m)}", float(value), higher_is_better=True)
            tok = final[(final.dataset == name) & (final.shots == k) & (final.method == "EvoKD")].tokens
            if len(tok):
                emit.emit(f"tokens/{key}/{k}shot/evokd", int(tok.mean()), unit="tokens", higher_is_better=False)
