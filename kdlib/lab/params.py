"""Notebook parameters: read them from the `parameters` cell, validate overrides.

The parameters cell of each notebook is the single source of truth for names,
types, defaults and help text (``name: type = value  # help``). Profiles and
command-line overrides are checked against it *before* any notebook runs, so a
misspelt or ill-typed parameter costs nothing but an error message.

A ``dict`` parameter groups settings that travel together (a student's training
budget, a decoding recipe) so that a parameters cell stays one screen long. Its
default in the notebook fixes its keys and their types: a profile or the command
line may give any part of it (``-p student_budget.max_steps=40`` or
``-p 'student_budget={max_steps: 40}'``), which is merged over the default, and
a key the default lacks is refused like a misspelt parameter.
"""

from __future__ import annotations

import ast
import difflib
import re
from dataclasses import dataclass
from pathlib import Path

import yaml

from kdlib.lab.paths import REPO_ROOT

PROFILES_DIR = REPO_ROOT / "configs" / "profiles"


class ParameterError(ValueError):
    """An unknown, ill-typed or malformed parameter; the message names it."""


@dataclass(frozen=True)
class ParamSpec:
    name: str
    type_name: str
    default: str
    help: str


def notebook_params(path: str | Path) -> dict[str, ParamSpec]:
    """Parameters declared in a notebook's `parameters` cell (via papermill's parser).

    Papermill skips a line it cannot parse (e.g. `a = 1; b = 2`) with a mere warning,
    which would drop those parameters from validation and injection; so the
    cell's assignments are also read with `ast` and any name papermill missed is an error.
    """
    import papermill

    raw = papermill.inspect_notebook(str(path))
    missed = sorted(_assigned_names(path) - set(raw))
    if missed:
        raise ParameterError(f"{path}: papermill could not parse the parameter line(s) for {missed}; "
                             "keep one `name: type = literal  # help` per line")
    return {n: ParamSpec(n, p["inferred_type_name"], p["default"], p["help"]) for n, p in raw.items()}


def _assigned_names(path: str | Path) -> set[str]:
    import ast

    import nbformat

    nb = nbformat.read(str(path), as_version=4)
    cells = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    if not cells:
        return set()
    tree = ast.parse(cells[0].source)
    names = set()
    for node in tree.body:
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            names.add(node.target.id)
        elif isinstance(node, ast.Assign):
            names |= {t.id for t in node.targets if isinstance(t, ast.Name)}
    return names


def _type_ok(value, type_name: str) -> bool:
    t = type_name.replace(" ", "")
    options = t.split("|") if "|" in t else [t]
    if "None" in options and value is None:
        return True
    for opt in options:
        base = re.sub(r"\[.*\]$", "", opt)
        if base == "int" and isinstance(value, int) and not isinstance(value, bool):
            return True
        if base == "float" and isinstance(value, int | float) and not isinstance(value, bool):
            return True
        if base == "str" and isinstance(value, str):
            return True
        if base == "bool" and isinstance(value, bool):
            return True
        if base == "list" and isinstance(value, list):
            inner = re.search(r"\[(.*)\]$", opt)
            if inner is None or all(_type_ok(v, inner.group(1)) for v in value):
                return True
        if base == "dict" and isinstance(value, dict):
            return True
    return False


def coerce(spec: ParamSpec, value, source: str):
    """Check (and for CLI strings, parse) a value against its declared type."""
    if isinstance(value, str) and spec.type_name.replace(" ", "") not in ("str", "str|None"):
        try:
            value = yaml.safe_load(value)
        except yaml.YAMLError:
            pass
    if spec.type_name in ("None", ""):
        raise ParameterError(f"parameter {spec.name!r} has no type annotation in its notebook")
    if not _type_ok(value, spec.type_name):
        raise ParameterError(f"parameter {spec.name!r} ({source}) must be {spec.type_name}, "
                             f"got {value!r} ({type(value).__name__})")
    if spec.type_name.startswith("float") and isinstance(value, int):
        value = float(value)
    return value


def dict_default(spec: ParamSpec) -> dict:
    """The default of a ``dict`` parameter, read from its literal in the notebook."""
    try:
        value = ast.literal_eval(spec.default)
    except (ValueError, SyntaxError) as exc:
        raise ParameterError(f"parameter {spec.name!r}: its default {spec.default!r} is not a literal dict") from exc
    if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
        raise ParameterError(f"parameter {spec.name!r}: its default must be a dict with string keys")
    return value


def _same_kind(value, like) -> bool:
    """Whether `value` may replace `like` in a dict parameter (ints widen to floats; None goes with anything)."""
    if like is None or value is None:
        return True
    if isinstance(like, bool) or isinstance(value, bool):
        return isinstance(like, bool) and isinstance(value, bool)
    if isinstance(like, float):
        return isinstance(value, int | float)
    return isinstance(value, type(like))


def merge_dict(spec: ParamSpec, current: dict, update: dict, source: str) -> dict:
    """`current` with the keys of `update`, each checked against the notebook's default."""
    default = dict_default(spec)
    out = dict(current)
    for key, value in update.items():
        if key not in default:
            raise ParameterError(unknown_message(f"{spec.name}.{key}", {f"{spec.name}.{k}" for k in default}, source))
        if not _same_kind(value, default[key]):
            raise ParameterError(f"parameter '{spec.name}.{key}' ({source}) must be like {default[key]!r}, "
                                 f"got {value!r} ({type(value).__name__})")
        out[key] = float(value) if isinstance(default[key], float) and isinstance(value, int) else value
    return out


def unknown_message(name: str, known: set[str], where: str) -> str:
    near = difflib.get_close_matches(name, sorted(known), n=3)
    hint = f" Did you mean {', '.join(repr(n) for n in near)}?" if near else ""
    return f"unknown parameter {name!r} ({where}).{hint} Known: {', '.join(sorted(known)) or 'none'}."


def load_profile(name: str, profiles_dir: Path = PROFILES_DIR) -> dict:
    path = Path(profiles_dir) / f"{name}.yaml"
    if not path.is_file():
        names = sorted(p.stem for p in Path(profiles_dir).glob("*.yaml"))
        raise ParameterError(f"unknown profile {name!r}; available: {', '.join(names)}")
    with open(path) as fh:
        profile = yaml.safe_load(fh) or {}
    bad = set(profile) - {"description", "parameters", "notebooks"}
    if bad:
        raise ParameterError(f"{path}: unknown top-level keys {sorted(bad)} (allowed: description, parameters, notebooks)")
    return profile


def parse_overrides(pairs: list[str]) -> dict[str, str]:
    out = {}
    for pair in pairs:
        if "=" not in pair:
            raise ParameterError(f"override {pair!r} must look like key=value")
        key, value = pair.split("=", 1)
        out[key.strip()] = value
    return out


def resolve(specs: dict[str, dict[str, ParamSpec]], profile: dict, overrides: dict[str, object],
            lab_names: set[str] | None = None) -> dict[str, dict[str, object]]:
    """Per-notebook parameter values: profile-wide, then profile per-notebook, then overrides.

    `specs` maps notebook stem -> its parameters. Overrides apply to every notebook
    declaring them and must be declared by at least one of them; profile-wide values
    likewise, except that with `lab_names` (every parameter of the whole lab) they need
    only be declared somewhere in the lab, so that running one notebook (``--only``) that
    lacks a profile-wide parameter such as ``seed`` is no error. Per-notebook values must
    be declared by that notebook.
    """
    every = set().union(*(set(s) for s in specs.values())) if specs else set()
    overrides = _nest_dotted(overrides, every)
    for name in profile.get("parameters") or {}:
        if name not in (every if lab_names is None else lab_names):
            raise ParameterError(unknown_message(name, every if lab_names is None else lab_names, "profile parameters"))
    for name in overrides:
        if name not in every:
            raise ParameterError(unknown_message(name, every, "command line"))
    per_nb = profile.get("notebooks") or {}
    resolved = {}
    for stem, nb_specs in specs.items():
        values = {}
        layers = [((profile.get("parameters") or {}), "profile"), ((per_nb.get(stem) or {}), f"profile, {stem}"),
                  (overrides, "command line")]
        for layer, source in layers:
            for name, value in layer.items():
                if name not in nb_specs:
                    if source.startswith("profile, "):
                        raise ParameterError(unknown_message(name, set(nb_specs), f"{source}"))
                    continue
                spec = nb_specs[name]
                if spec.type_name.replace(" ", "") == "dict":
                    update = coerce(spec, value, source) if not isinstance(value, dict) else value
                    values[name] = merge_dict(spec, values.get(name, dict_default(spec)), update, source)
                else:
                    values[name] = coerce(spec, value, source)
        resolved[stem] = values
    return resolved


def _nest_dotted(overrides: dict[str, object], known: set[str]) -> dict[str, object]:
    """``{"budget.max_steps": "40"}`` -> ``{"budget": {"max_steps": 40}}`` (values parsed as YAML)."""
    out: dict[str, object] = {}
    for name, value in overrides.items():
        base, dot, key = name.partition(".")
        if not dot or name in known:
            out[name] = value
            continue
        if not key:
            raise ParameterError(f"override {name!r}: a key must follow the dot")
        if isinstance(value, str):
            try:
                value = yaml.safe_load(value)
            except yaml.YAMLError:
                pass
        target = out.setdefault(base, {})
        if not isinstance(target, dict):
            raise ParameterError(f"override {name!r} conflicts with the whole-value override of {base!r}")
        target[key] = value
    return out


def check_profile_notebooks(profile: dict, stems: set[str], profile_name: str) -> None:
    for stem in profile.get("notebooks") or {}:
        if stem not in stems:
            near = difflib.get_close_matches(stem, sorted(stems), n=1)
            hint = f" Did you mean {near[0]!r}?" if near else ""
            raise ParameterError(f"profile {profile_name!r} names unknown notebook {stem!r}.{hint}")
