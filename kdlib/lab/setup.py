"""Run setup shared by every notebook: seeds, device, dtype, versions.

`init()` is the first call of each notebook after its parameters cell.
"""

from __future__ import annotations

import os
import platform
import random
from dataclasses import dataclass, field
from importlib import metadata

TRACKED_PACKAGES = (
    "torch", "transformers", "datasets", "accelerate", "papermill", "scikit-learn",
    "seaborn", "seqeval", "rouge-score", "evaluate", "gguf", "spacy",
)


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (CPU and CUDA) so that a run is repeatable."""
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)


def pick_device(preference: str = "auto") -> str:
    """`auto` picks cuda, then mps, then cpu; an explicit name is checked, not trusted."""
    import torch

    if preference == "auto":
        if torch.cuda.is_available():
            return "cuda"
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return "mps"
        return "cpu"
    if preference.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(f"device={preference!r} was asked for but CUDA is not available; use 'auto' or 'cpu'")
    if preference not in {"cpu", "mps"} and not preference.startswith("cuda"):
        raise ValueError(f"unknown device {preference!r}: expected 'auto', 'cpu', 'mps' or 'cuda[:N]'")
    return preference


def pick_dtype(device: str, preference: str = "auto"):
    """bf16 on GPUs that support it, fp32 elsewhere (CPU bf16 matmuls are slow on most CPUs)."""
    import torch

    names = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16,
             "bf16": torch.bfloat16, "float16": torch.float16, "fp16": torch.float16}
    if preference != "auto":
        if preference not in names:
            raise ValueError(f"unknown dtype {preference!r}: expected 'auto' or one of {sorted(names)}")
        return names[preference]
    if device.startswith("cuda") and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float32


def versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in TRACKED_PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def device_description(device: str) -> str:
    import torch

    if device.startswith("cuda"):
        return torch.cuda.get_device_name(torch.device(device))
    return f"{platform.processor() or platform.machine()} ({os.cpu_count()} cores)"


@dataclass
class RunContext:
    seed: int
    device: str
    dtype: object
    versions: dict[str, str] = field(default_factory=dict)

    def describe(self) -> str:
        lines = [f"seed={self.seed} device={self.device} ({device_description(self.device)}) dtype={self.dtype}"]
        lines.append(", ".join(f"{k} {v}" for k, v in self.versions.items()))
        return "\n".join(lines)


def init(seed: int = 0, device: str = "auto", dtype: str = "auto", quiet: bool = False, threads: int = 0
         ) -> RunContext:
    """Seed everything, choose device and dtype, set torch's CPU threads (0: its default), apply the plot
    style, and print the versions that matter."""
    seed_everything(seed)
    if threads:
        import torch

        torch.set_num_threads(threads)
    from kdlib.lab.plots import style

    style()
    dev = pick_device(device)
    ctx = RunContext(seed=seed, device=dev, dtype=pick_dtype(dev, dtype), versions=versions())
    if not quiet:
        print(ctx.describe())
    return ctx
