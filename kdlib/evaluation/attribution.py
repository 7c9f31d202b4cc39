"""What did a student learn to look at? Integrated Gradients (Sundararajan et al., 2017) through captum,
and the share of it that lands on the label cues a teacher writes into synthetic data.

For input embeddings x, a baseline x' (the same sentence with every word replaced by [PAD], special tokens
kept) and the logit F_c of the predicted class c, the attribution of embedding dimension i is

    IG_i(x) = (x_i - x'_i) * integral_0^1 dF_c(x' + a (x - x')) / dx_i  da,

approximated with `n_steps` Riemann steps (captum's ``LayerIntegratedGradients`` on the encoder's embedding
layer); the completeness axiom sum_i IG_i = F_c(x) - F_c(x') is checked by captum's convergence delta. A
wordpiece's score is the sum over its dimensions; a word's is the sum over its wordpieces.

Label cues are the words a synthetic pool over-uses for a label compared with real text (smoothed log-odds
of their frequency), found from the data, so that the probe works on any dataset: a student trained on
synthetic data that leans on them puts a larger share of its attribution there than a gold-trained one.
"""

from __future__ import annotations

import html
import math
import re
from collections import Counter
from collections.abc import Sequence

import numpy as np

WORD = re.compile(r"[a-z][a-z'-]+")


def word_attributions(student, texts: Sequence[str], n_steps: int = 32) -> list[dict]:
    """Per text: its words, their IG scores for the predicted class, the class and captum's convergence delta."""
    import torch
    from captum.attr import LayerIntegratedGradients

    net, tok = student.net, student.tokenizer
    net.eval()
    device = student.device
    special = set(tok.all_special_ids)

    def forward(input_ids, attention_mask):
        return net(input_ids, attention_mask)

    lig = LayerIntegratedGradients(forward, net.encoder.embeddings)
    out = []
    for text in texts:
        enc = tok(text, truncation=True, max_length=student.config.max_length, return_offsets_mapping=True)
        ids = torch.tensor([enc["input_ids"]], device=device)
        mask = torch.ones_like(ids)
        base = torch.tensor([[i if i in special else tok.pad_token_id for i in enc["input_ids"]]], device=device)
        with torch.no_grad():
            target = int(net(ids, mask).argmax(-1))
        attr, delta = lig.attribute(ids, baselines=base, additional_forward_args=(mask,), target=target,
                                    n_steps=n_steps, return_convergence_delta=True)
        piece = attr.sum(-1).squeeze(0).detach().cpu().numpy()
        words: dict[int, list] = {}
        for pos, wid in enumerate(enc.word_ids()):
            if wid is None:
                continue
            start, end = enc["offset_mapping"][pos]
            w = words.setdefault(wid, [start, end, 0.0])
            w[1], w[2] = end, w[2] + float(piece[pos])
        spans = [words[k] for k in sorted(words)]
        out.append({"text": text, "words": [text[s:e] for s, e, _ in spans], "scores": [a for _, _, a in spans],
                    "label": student.label_names[target], "delta": float(delta.abs().item())})
    return out


def label_cues(synthetic: Sequence[dict], real_texts: Sequence[str], label_names: Sequence[str], k: int = 10,
               min_count: int = 2, alpha: float = 1.0) -> dict[str, list[str]]:
    """Per label, the `k` words the synthetic texts of that label over-use most: ranked by the smaller of two
    smoothed log-odds, against real text (what the teacher writes more than people) and against the synthetic
    texts of the other labels (what marks this label), so that topic words and stop words (scikit-learn's
    English list) drop out. Words seen fewer than `min_count` times in the label's texts are skipped."""
    from sklearn.feature_extraction.text import ENGLISH_STOP_WORDS

    def counts(texts):
        return Counter(w for t in texts for w in WORD.findall(t.lower()) if w not in ENGLISH_STOP_WORDS)

    def log_odds(word, own, n_own, other, n_other, vocab):
        return (math.log((own[word] + alpha) / (n_own + alpha * vocab))
                - math.log((other[word] + alpha) / (n_other + alpha * vocab)))

    real = counts(real_texts)
    cues = {}
    for label in label_names:
        own = counts([r["text"] for r in synthetic if r["label"] == label])
        rest = counts([r["text"] for r in synthetic if r["label"] != label])
        n_own, n_real, n_rest = sum(own.values()), sum(real.values()), sum(rest.values())
        vocab = len(set(own) | set(real) | set(rest)) or 1
        scored = []
        for w, c in own.items():
            if c < min_count:
                continue
            against = [log_odds(w, own, n_own, real, n_real, vocab)]
            if n_rest:
                against.append(log_odds(w, own, n_own, rest, n_rest, vocab))
            scored.append((min(against), w))
        cues[label] = [w for score, w in sorted(scored, reverse=True)[:k] if score > 0]
    return cues


def cue_share(attributions: Sequence[dict], cue_words: set[str]) -> float:
    """Share of absolute attribution (summed over texts) on words in `cue_words`; NaN without attribution."""
    on, total = 0.0, 0.0
    for a in attributions:
        for word, score in zip(a["words"], a["scores"]):
            total += abs(score)
            on += abs(score) if word.lower() in cue_words else 0.0
    return on / total if total > 0 else float("nan")


def highlight(attributions: Sequence[dict], title: str = "") -> str:
    """HTML with each word shaded by its attribution (green: towards the predicted label, red: against),
    opacity relative to the text's largest |score|."""
    parts = [f"<div style='font-family:sans-serif;margin:6px 0'><b>{html.escape(title)}</b></div>"] if title else []
    for a in attributions:
        top = max((abs(s) for s in a["scores"]), default=0.0) or 1.0
        spans = []
        for word, score in zip(a["words"], a["scores"]):
            rgb = "40,160,60" if score >= 0 else "210,50,50"
            spans.append(f"<span style='background:rgba({rgb},{abs(score) / top:.2f});padding:1px 2px;"
                         f"border-radius:3px' title='{score:+.3f}'>{html.escape(word)}</span>")
        parts.append(f"<div style='font-family:sans-serif;margin:3px 0;line-height:1.8'>"
                     f"<code>{html.escape(a['label'])}</code> {' '.join(spans)}</div>")
    return "\n".join(parts)


def top_words(attributions: Sequence[dict], n: int = 10) -> list[tuple[str, float]]:
    """The words with the largest mean |attribution| over the texts they appear in (at least twice)."""
    seen: dict[str, list[float]] = {}
    for a in attributions:
        for word, score in zip(a["words"], a["scores"]):
            seen.setdefault(word.lower(), []).append(abs(score))
    ranked = sorted(((float(np.mean(v)), w) for w, v in seen.items() if len(v) >= 2), reverse=True)
    return [(w, s) for s, w in ranked[:n]]
