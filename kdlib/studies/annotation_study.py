"""Statements of the cheaper-annotation study (notebook 08), written from its tables.

Two comparisons there are not "method against a baseline" and so are not `experiment.method_lines`:
a constrained strategy against its free twin (the same decoder, answers held to the label set, the
NER markup grammar or the JSON schema), and each speculative drafter's acceptance and speed-up per task.
Each function returns lines, one per comparison that the run actually made, so the text stays true when a
profile or a remote teacher drops some strategies.
"""

from __future__ import annotations

from collections.abc import Sequence

from kdlib.studies import experiment
from kdlib.teachers import decoding


def structured_lines(labels, ner, synthesis, synthesis_runs, free: Sequence[str] = ("greedy", "sampling")
                     ) -> list[str]:
    """Constrained vs free, for every free strategy whose "[structured]" twin also ran: parse rate and label
    quality of the labels (`labels`, `ner`: quality tables indexed by strategy), and for synthesis parse rate,
    rows, tokens and the students' macro-F1 with the paired verdict (`synthesis_runs`)."""
    lines = []
    for f in free:
        c = f + decoding.STRUCTURED
        if {f, c} <= set(labels.index):
            lines.append(f"- Labels constrained to the label set ({c}) vs free: {labels.parse_rate[c]:.0%} vs "
                         f"{labels.parse_rate[f]:.0%} of answers parse; label accuracy {labels.accuracy[c]:.3f} vs "
                         f"{labels.accuracy[f]:.3f}; balance {labels.balance[c]:.2f} vs {labels.balance[f]:.2f}.")
        if {f, c} <= set(ner.index):
            lines.append(f"- NER markup grammar ({c}) vs free: {ner.parse_rate[c]:.0%} vs {ner.parse_rate[f]:.0%} "
                         f"parse; label entity F1 {ner.entity_f1[c]:.3f} vs {ner.entity_f1[f]:.3f}.")
        if {f, c} <= set(synthesis.index):
            q = synthesis
            mc, mf = (experiment.mean_of(synthesis_runs, "macro_f1", m) for m in (c, f))
            verdict = experiment.versus(synthesis_runs, "macro_f1", c, f)["verdict"]
            lines.append(f"- Synthesis constrained to the JSON schema ({c}) vs free: parse rate {q.parse_rate[c]:.2f} vs "
                         f"{q.parse_rate[f]:.2f} of requested texts, {int(q.rows[c])} vs {int(q.rows[f])} rows, "
                         f"{int(q.tokens[c])} vs {int(q.tokens[f])} tokens; student {mc:.3f} vs {mf:.3f} macro-F1 "
                         f"(constrained {verdict} free).")
    return lines


def speculation_lines(table, baseline: str = "undistilled draft", distilled: str = "RKL-distilled draft",
                      lookup: str = "prompt lookup") -> list[str]:
    """Per task of `speculative.compare_drafters`' table: acceptance of the distilled draft against the
    undistilled one, prompt lookup's acceptance, every drafter's speed-up and whether outputs stayed identical
    to plain greedy decoding (they must: speculation is exact)."""
    if not len(table):
        return []
    st = table.set_index(["task", "drafter"])
    lines = []
    for task in table.task.unique():
        a0, a1 = st.acceptance_rate[(task, baseline)], st.acceptance_rate[(task, distilled)]
        speedups = ", ".join(f"{d} {st.speedup[(task, d)]:.2f}x" for d in table.drafter.unique())
        lines.append(f"- Speculation, {task}: acceptance undistilled {a0:.2f} -> RKL-distilled {a1:.2f} "
                     f"({'higher' if a1 > a0 else 'not higher'}); prompt lookup {st.acceptance_rate[(task, lookup)]:.2f}; "
                     f"speed-ups {speedups}; outputs identical to plain greedy: "
                     f"{st.identical_to_plain.xs(task).min():.0%}.")
    return lines
