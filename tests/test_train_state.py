"""Resumable LM trainers: a run killed with SIGKILL and resumed ends with the uninterrupted run's weights."""

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from kdlib.distillation import distill, minillm, sft, train_state
from tests.tiny_lm import PAIRS, tiny_llama

ROOT = Path(__file__).resolve().parents[1]


def test_epoch_batches_match_the_plain_loop_and_resume_anywhere():
    plain, g = [], torch.Generator().manual_seed(3)
    for _ in range(3):
        order = torch.randperm(10, generator=g).tolist()
        plain += [order[i:i + 4] for i in range(0, 10, 4)]
    got = list(train_state.epoch_batches(10, 4, 8, seed=3))
    assert [s for s, _ in got] == list(range(8)) and [b for _, b in got] == plain[:8]
    assert list(train_state.epoch_batches(10, 4, 8, seed=3, start=5)) == got[5:]


def train(name, tok, cfg):
    """(trained student, history) of one small run of trainer `name`."""
    student, teacher = tiny_llama(tok, layers=2, seed=1), tiny_llama(tok, layers=3, seed=2)
    if name == "sft":
        return student, sft.train_sft(student, tok, PAIRS, sft.SFTConfig(**cfg))
    if name == "word_kd":  # on-policy batches too: their samples and coin flips must replay
        return student, distill.train_word_kd(student, teacher, tok, PAIRS, distill.KDConfig(
            loss="rkl", on_policy=0.5, gen_max_new_tokens=4, **cfg))
    return student, minillm.train_minillm(student, teacher, tok, PAIRS, minillm.MiniLLMConfig(gen_max_new_tokens=4, **cfg))


SCRIPT = textwrap.dedent("""
    import sys, torch
    sys.path.insert(0, {root!r})
    torch.set_num_threads(1)
    from kdlib.registry.models import load_tokenizer
    from tests.test_train_state import train
    tok = load_tokenizer("HuggingFaceTB/SmolLM2-135M-Instruct")
    tok.pad_token = tok.pad_token or tok.eos_token
    train({name!r}, tok, {cfg!r})
""")


@pytest.fixture
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the child: identical float reductions
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize("name", ["sft", "word_kd", "minillm"])
def test_killed_run_resumes_to_identical_weights(tok, tmp_path, name, one_thread):
    base = dict(max_steps=60, epochs=100, batch_size=3, lr=1e-3, seed=5)
    plain, plain_history = train(name, tok, base)
    folder = tmp_path / "ckpt"
    cfg = dict(base, checkpoint_dir=str(folder), checkpoint_every=3)
    child = subprocess.Popen([sys.executable, "-c", SCRIPT.format(root=str(ROOT), name=name, cfg=cfg)],
                             cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    state = folder / "state.pt"
    deadline = time.monotonic() + 300
    while not state.exists() and child.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    if not state.exists():
        child.kill()
        pytest.fail(f"no checkpoint appeared: {child.stderr.read().decode()[-2000:]}")
    time.sleep(0.3)
    os.kill(child.pid, signal.SIGKILL)
    child.wait()
    saved_step = torch.load(state, weights_only=False)["step"]
    assert 0 < saved_step < 60, "the child should be killed mid-run"
    resumed, history = train(name, tok, cfg)
    assert history.steps == 60 and len(history.loss) == 60
    assert all(torch.equal(v, resumed.state_dict()[k]) for k, v in plain.state_dict().items()), \
        "resumed weights differ from the uninterrupted run"
    assert history.loss == plain_history.loss
    assert not state.exists()  # a finished run cleans up


def test_a_checkpoint_of_another_run_is_refused(tok, tmp_path):
    cfg = dict(max_steps=4, epochs=10, batch_size=3, seed=5, checkpoint_dir=str(tmp_path), checkpoint_every=2)
    model = tiny_llama(tok, layers=2)
    ckpt = train_state.Checkpoint.of(sft.SFTConfig(**cfg), [[1, 2]], "sft")
    ckpt.maybe_save(2, 4, model, torch.optim.AdamW(model.parameters()), None, sft.SFTHistory())
    with pytest.raises(ValueError, match="another run"):
        sft.train_sft(tiny_llama(tok, layers=2), tok, PAIRS, sft.SFTConfig(**cfg))
    (tmp_path / "state.pt").write_bytes(b"garbage")
    with pytest.raises(RuntimeError, match="cannot read the checkpoint"):
        sft.train_sft(tiny_llama(tok, layers=2), tok, PAIRS, sft.SFTConfig(**cfg))
    with pytest.raises(ValueError, match="checkpoint_dir"):
        sft.SFTConfig(checkpoint_every=5)
