"""Reading dataset files: JSON lines (optionally gzipped), JSON, CSV and TSV, and finding the split files
of a dataset folder. Bad files raise `DataError` naming the file and the line.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
from pathlib import Path

SPLIT_NAMES = ("train", "validation", "test")
SPLIT_ALIASES = {"dev": "validation", "valid": "validation", "val": "validation"}
FILE_SUFFIXES = (".jsonl.gz", ".jsonl", ".json", ".csv", ".tsv")


class DataError(ValueError):
    """A dataset that cannot be used as given; the message names the file and row."""


def _open_text(path: Path):
    if path.name.endswith(".gz"):
        return io.TextIOWrapper(gzip.open(path, "rb"), encoding="utf-8")
    return open(path, encoding="utf-8")


def read_records(path: str | Path) -> list[dict]:
    """Rows of a .jsonl(.gz)/.json/.csv/.tsv file as dicts; errors name the file and line."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    try:
        with _open_text(path) as fh:
            if path.suffix in (".csv", ".tsv"):
                reader = csv.DictReader(fh, delimiter="\t" if path.suffix == ".tsv" else ",")
                return [dict(row) for row in reader]
            if path.suffix == ".json":
                rows = json.load(fh)
                if not isinstance(rows, list):
                    raise DataError(f"{path}: a .json file must hold a list of records")
                return rows
            rows = []
            for lineno, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as exc:
                    raise DataError(f"{path}, line {lineno}: not valid JSON ({exc.msg})") from None
            return rows
    except (OSError, UnicodeDecodeError, EOFError, gzip.BadGzipFile) as exc:
        raise DataError(f"{path}: unreadable ({type(exc).__name__}: {exc})") from None
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno})") from None


def _split_files(folder: Path) -> dict[str, Path]:
    files = {}
    for child in sorted(folder.iterdir()):
        for suffix in FILE_SUFFIXES:
            if child.name.endswith(suffix):
                stem = child.name[: -len(suffix)]
                split = SPLIT_ALIASES.get(stem, stem)
                if split in SPLIT_NAMES:
                    if split in files:
                        raise DataError(f"{folder}: two files for split {split!r}: {files[split].name}, {child.name}")
                    files[split] = child
    return files
