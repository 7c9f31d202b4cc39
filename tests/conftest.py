import contextlib
import gzip
import json
import os
from pathlib import Path

import pytest

from kdlib.lab.paths import data_mirror_dir


def write_jsonl(path: Path, rows, gz: bool = False) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    text = "".join(json.dumps(r) + "\n" for r in rows)
    if gz:
        with gzip.open(path, "wt", encoding="utf-8") as fh:
            fh.write(text)
    else:
        path.write_text(text, encoding="utf-8")
    return path


def pytest_collection_modifyitems(config, items):
    """`gpu` tests need CUDA: skipped, with the reason shown, where there is none (CI never has a GPU)."""
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device (run bench/gpu_suite.py on a GPU machine)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def mirror():
    """The shared dataset mirror; tests that need real data skip loudly without it."""
    path = data_mirror_dir()
    if path is None or not path.is_dir():
        pytest.skip("no dataset mirror (set KDLIB_DATA_DIR or put shared/data beside the checkout)")
    return path


@pytest.fixture(scope="session")
def tok():
    """The real SmolLM2 tokenizer (offline asset), padding with EOS."""
    from transformers import AutoTokenizer

    from kdlib.registry.models import load_tokenizer

    # a GPU machine has no offline assets: bench/gpu_suite.py points this at the tokenizer files it carries
    files = os.environ.get("KDLIB_TEST_TOKENIZER")
    t = AutoTokenizer.from_pretrained(files) if files else load_tokenizer("HuggingFaceTB/SmolLM2-135M-Instruct")
    if t.pad_token is None:
        t.pad_token = t.eos_token
    return t


@contextlib.contextmanager
def one_thread_teacher(**kw):
    """The offline teacher (LocalTeacher), loaded, with torch on one thread while it is in use.

    One thread: with 2 cores shared with other jobs, a 2-thread OpenMP team waits on a descheduled
    peer at every op and runs ~10x slower (measured: 26 s vs 2 s for the same 20 tokens)."""
    import torch

    from kdlib.teachers.teacher_local import LocalTeacher

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    teacher = LocalTeacher(**{"cache": False, "progress": False, **kw})
    teacher.load()
    try:
        yield teacher
    finally:
        torch.set_num_threads(threads)
