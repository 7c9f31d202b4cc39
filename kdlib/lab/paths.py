"""Where things live: the repository, the user cache, the data mirror.

Every location can be overridden by an environment variable so that CI, GPU
machines and users' laptops can point the same code at different disks.
"""

from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]


def cache_dir() -> Path:
    """User cache for converted models and teacher caches (``KDLIB_CACHE_DIR``)."""
    default = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "kdlib"
    path = Path(os.environ.get("KDLIB_CACHE_DIR", default)).expanduser()
    path.mkdir(parents=True, exist_ok=True)
    return path


def data_mirror_dir() -> Path | None:
    """The local dataset mirror: ``KDLIB_DATA_DIR``, else ``../shared/data`` beside the checkout.

    The fallback lets a fresh clone with the shared folder beside it find the data
    without any manual step; returns None when neither exists.
    """
    env = os.environ.get("KDLIB_DATA_DIR")
    if env:
        return Path(env).expanduser()
    sibling = REPO_ROOT.parent / "shared" / "data"
    return sibling if sibling.is_dir() else None


def reports_dir() -> Path:
    return Path(os.environ.get("KDLIB_REPORTS_DIR", REPO_ROOT / "reports"))
