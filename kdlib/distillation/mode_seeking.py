"""Mode seeking vs mode covering on a 1-D toy: a one-Gaussian student fitted to a multimodal teacher.

Both distributions live on the same grid of V points (a "vocabulary" ordered along a line), so the
divergences are exactly those of `kdlib.distillation.losses` on one token: the student's logits are
``-(x - mu)^2 / (2 sigma^2)`` and only (mu, log sigma) are learned. Forward KL must put mass
wherever the teacher has some (it spreads over every mode and the valleys between them); reverse KL
pays for student mass where the teacher has none (it settles on one mode). The numbers that say so:

- ``covered``: teacher mass inside the student's central 95% interval (mu +- 1.96 sigma);
- ``hallucinated``: student mass where the teacher's density is below 1% of its peak.

Reverse KL's optimum depends on where the student starts: from near a mode it settles there; from
the valley between two equal modes it can widen first and stop at the symmetric wide solution, a
stationary point. A student LM initialised from its teacher starts near the teacher's modes.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def mixture_log_probs(grid, means: Sequence[float], stds: Sequence[float], weights: Sequence[float]):
    """log p on `grid` of a Gaussian mixture, normalised over the grid points (a categorical)."""
    import torch

    x = torch.as_tensor(grid, dtype=torch.float64)
    w = torch.as_tensor(weights, dtype=torch.float64)
    if not (len(means) == len(stds) == len(w)) or (w <= 0).any() or min(stds) <= 0:
        raise ValueError("means, stds and weights must have one positive entry per component")
    comps = [torch.log(wi / w.sum()) - 0.5 * ((x - m) / s) ** 2 - np.log(s) for m, s, wi in zip(means, stds, w)]
    logp = torch.logsumexp(torch.stack(comps), 0)
    return logp - torch.logsumexp(logp, 0)


def fit_gaussian(target_log_probs, grid, kind: str, *, steps: int = 600, lr: float = 0.05, mu0: float = 1.0,
                 sigma0: float = 1.0, beta: float = 0.5, alpha: float = 0.1, device: str = "cpu") -> dict:
    """Fit (mu, sigma) of a discretised Gaussian student to the teacher by minimising `kind` with Adam, in
    float64 on `device` (the losses' CUDA path runs the same code; results agree to float64 rounding)."""
    import torch

    from kdlib.distillation.losses import kd_loss

    device = "cpu" if str(device).startswith("mps") else device  # MPS has no float64
    x = torch.as_tensor(grid, dtype=torch.float64, device=device)
    t = torch.as_tensor(target_log_probs, dtype=torch.float64).to(device)[None]
    mu = torch.tensor(float(mu0), dtype=torch.float64, device=device, requires_grad=True)
    log_sigma = torch.tensor(float(np.log(sigma0)), dtype=torch.float64, device=device, requires_grad=True)
    opt = torch.optim.Adam([mu, log_sigma], lr=lr)
    curve = []
    for _ in range(steps):
        logits = (-0.5 * ((x - mu) / log_sigma.exp()) ** 2)[None]
        loss = kd_loss(logits, t, kind, beta=beta, alpha=alpha)
        opt.zero_grad()
        loss.backward()
        opt.step()
        curve.append(loss.detach())
    with torch.no_grad():
        logq = torch.log_softmax(-0.5 * ((x - mu) / log_sigma.exp()) ** 2, 0)
    curve = torch.stack(curve).cpu().tolist()  # one device-to-host copy, not one per step
    return {"kind": kind, "mu": mu.item(), "sigma": log_sigma.detach().exp().item(), "log_probs": logq.cpu().numpy(),
            "loss": curve[-1], "curve": curve}


def diagnostics(target_log_probs, student_log_probs, grid, mu: float, sigma: float) -> dict:
    """``covered`` and ``hallucinated`` (see the module docstring) and the student's entropy (nats)."""
    p, q = np.exp(np.asarray(target_log_probs)), np.exp(np.asarray(student_log_probs))
    x = np.asarray(grid)
    inside = np.abs(x - mu) <= 1.96 * sigma
    return {"covered": float(p[inside].sum()), "hallucinated": float(q[p < 0.01 * p.max()].sum()),
            "entropy": float(-(q[q > 0] * np.log(q[q > 0])).sum())}


def fit_all(target, grid, kinds, mu0: float, **fit_kw):
    """`fit_gaussian` with each loss kind from the same start: ({kind: fit}, table of mu, sigma, final loss and
    the diagnostics per kind)."""
    import pandas as pd

    fits = {k: fit_gaussian(target, grid, k, mu0=mu0, **fit_kw) for k in kinds}
    rows = [{"loss": k, "mu": f["mu"], "sigma": f["sigma"], "final loss": f["loss"],
             **diagnostics(target, f["log_probs"], grid, f["mu"], f["sigma"])} for k, f in fits.items()]
    return fits, pd.DataFrame(rows).set_index("loss")


def init_sweep(target, grid, kinds, starts, **fit_kw):
    """Final mean of the fitted student against its starting mean, per loss kind."""
    import pandas as pd

    return pd.DataFrame([{"loss": k, "start mu": m, "final mu": fit_gaussian(target, grid, k, mu0=m, **fit_kw)["mu"]}
                         for k in kinds for m in starts])


def separation_sweep(grid, separations, std: float, kinds, mu0: float, **fit_kw):
    """Two equal modes at ±d for each d: the diagnostics of each loss's fit (coverage, hallucinated mass, ...)."""
    import pandas as pd

    rows = []
    for d in separations:
        target = mixture_log_probs(grid, [-d, d], [std, std], [1.0, 1.0])
        for k in kinds:
            f = fit_gaussian(target, grid, k, mu0=mu0, **fit_kw)
            rows.append({"separation": d, "loss": k, **diagnostics(target, f["log_probs"], grid, f["mu"], f["sigma"])})
    return pd.DataFrame(rows)
