"""Variants: named sets of optimization parameters, so that runs of one dataset with other settings coexist.

A variant overrides keys of the `optimization:` section of params.yaml (the margin, the steps, ...); everything
else (data, fake pool, inversions, pairs) is shared by all variants. Its name says what it is:

- `default`: the optimization section as params.yaml (and its profile entry) gives it;
- a name defined under `variants:` in params.yaml, e.g. `strong_identity: {margin: 0.9, steps: 100}`;
- otherwise the name is read as its values: `m0.9` is margin 0.9, `m0.5_steps20_lr0.02` three keys at once
  (`VARIANT_KEYS` lists the short names). `variant_name` writes such a name back from values, so a sweep made on
  the command line (`--margin 0,0.5,0.9`) gets the names `m0`, `m0.5`, `m0.9` and any tool can read them again.

A sweep is a list of variants: the names under `sweep: {variants: [...]}` plus every combination of the value
lists under `sweep:` (`margin: [0.0, 0.9]`).
"""

from __future__ import annotations

import itertools
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from anon_core.errors import ParamsError

DEFAULT_VARIANT = "default"
SHARED_SETTINGS = ("seed", "pool_size", "truncation_psi", "pairing", "pairing_k")
"""What every variant shares and the fakes and pairs depend on (the swap baseline's too): the reports and the
baselines' MLflow runs name them."""
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,63}$")  # a folder name, a Dagster partition key


@dataclass(frozen=True)
class VariantKey:
    key: str  # the key of params.yaml's optimization section
    short: str  # its prefix in a variant name
    kind: type  # int or float


# Order = order in names. Longer prefixes are tried first when reading a name (`lattr` before `lr`).
VARIANT_KEYS = (
    VariantKey("margin", "m", float),
    VariantKey("steps", "steps", int),
    VariantKey("lr", "lr", float),
    VariantKey("lambda_id", "lid", float),
    VariantKey("lambda_attr", "lattr", float),
    VariantKey("lambda_consistency", "lcons", float),
    VariantKey("gamma", "gamma", float),
)
BY_KEY = {k.key: k for k in VARIANT_KEYS}
_BY_PREFIX = sorted(VARIANT_KEYS, key=lambda k: -len(k.short))
# Keys a `variants:` entry of params.yaml may set: the named ones plus the rest of the optimization section.
DEFINABLE_KEYS = (*BY_KEY, "milestones", "layer_start", "layer_stop")


def format_value(value: float | int) -> str:
    """The shortest text that reads back as the same number: 0.0 -> "0", 0.5 -> "0.5", 1e-05 -> "1e-05"."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ParamsError(f"variant value {value!r} is not a number")
    if isinstance(value, float) and not math.isfinite(value):
        raise ParamsError(f"variant value {value!r} is not a finite number")
    text = repr(value + 0)  # + 0: -0.0 is 0.0, one variant
    return text[:-2] if text.endswith(".0") else text


def variant_name(values: Mapping[str, Any]) -> str:
    """The name of a set of optimization values: {"margin": 0.5, "steps": 20} -> "m0.5_steps20";
    no values -> "default"."""
    unknown = sorted(set(values) - set(BY_KEY))
    if unknown:
        raise ParamsError(f"cannot name a variant by {', '.join(unknown)}; name it under `variants:` in params.yaml "
                          f"(keys with short names: {', '.join(BY_KEY)})")
    parts = [f"{k.short}{format_value(k.kind(values[k.key]) if k.kind is float else values[k.key])}"
             for k in VARIANT_KEYS if k.key in values]
    name = "_".join(parts) or DEFAULT_VARIANT
    if not NAME_PATTERN.match(name):  # too long: the values cannot name their variant, a word can
        settings = ", ".join(f"{k}: {values[k]!r}" for k in BY_KEY if k in values)
        raise ParamsError(f"these values would name their variant {name!r}, {len(name)} characters, more than the 64 "
                          f"a variant name may have (it names a folder and a Dagster partition); define it under "
                          f"`variants:` in params.yaml, e.g. `my_variant: {{{settings}}}`, and run it with "
                          "--variant my_variant (or list it under `sweep: variants:`)")
    return name


def parse_variant_name(name: str) -> dict[str, Any] | None:
    """The values a name made by `variant_name` stands for, or None when `name` is not such a name."""
    if name == DEFAULT_VARIANT:
        return {}
    values: dict[str, Any] = {}
    for token in name.split("_"):
        for k in _BY_PREFIX:
            if token.startswith(k.short) and len(token) > len(k.short):
                try:
                    value = k.kind(token[len(k.short):])
                except ValueError:
                    continue
                if k.key in values or (k.kind is float and not math.isfinite(value)):
                    return None
                values[k.key] = value
                break
        else:
            return None
    return values


# the evaluation's baselines (evaluation.baselines.BASELINES): they sit beside the variants in every report, MLflow
# experiment and `falco runs compare`, where a variant of the same name would be taken for the baseline
BASELINE_NAMES = ("blur", "pixelate", "mask", "swap")


def _yaml_read_as_value(name: Any, where: str) -> ParamsError:
    """The error for a variant name that YAML read as a value, not as text (`off:`, `yes`, `1:`, `~`)."""
    return ParamsError(f"{where}: the variant name {name!r} is not text: YAML reads an unquoted yes/no/on/off/true/false "
                       "as a bool, a number as a number and ~ as null; quote the name (e.g. \"off\", \"1\")")


def check_variant_name(name: str) -> str:
    if not isinstance(name, str) or not NAME_PATTERN.match(name):
        raise ParamsError(f"variant name {name!r} must be 1-64 letters, digits, '.', '_', '+' or '-', starting with a "
                          "letter or digit (it names a folder and a Dagster partition)")
    if name.lower() in BASELINE_NAMES:
        raise ParamsError(f"variant name {name!r} is the name of an evaluation baseline ({', '.join(BASELINE_NAMES)}), "
                          "which reports and `falco runs compare` show beside the variants; give the variant another "
                          f"name, e.g. {name.lower()}_like")
    return name


def variant_overrides(name: str, defined: Mapping[str, Mapping[str, Any]] | None = None,
                      source: str = "params.yaml") -> dict[str, Any]:
    """The optimization overrides of the variant `name`, as dotted keys ({"optimization.margin": 0.9}): from the
    `variants:` section (`defined`), else read from the name itself. ParamsError names the fix for anything else."""
    defined = defined or {}
    for key in defined:
        if not isinstance(key, str):
            raise _yaml_read_as_value(key, f"{source}: variants")
    check_variant_name(name)
    if name == DEFAULT_VARIANT:
        if name in defined:
            raise ParamsError(f"{source}: variants: '{DEFAULT_VARIANT}' is the optimization section itself and cannot "
                              "be redefined; give the variant another name")
        return {}
    if name in defined:
        if parse_variant_name(name) is not None:  # else `--margin 0.9` would run whatever m0.9 was defined as
            raise ParamsError(f"{source}: variants: {name!r} is a name made of values ({parse_variant_name(name)}), "
                              "which stands for those values and cannot be defined; give the variant a name of "
                              "words, e.g. keep_identity")
        values = defined[name]
        if not values:  # `keep:` or `keep: {}`: it ran as default under another name
            raise ParamsError(f"{source}: variants: {name} sets nothing, so it would run as '{DEFAULT_VARIANT}'; give "
                              "it values, e.g. {margin: 0.9}, or remove it")
        if not isinstance(values, Mapping):
            raise ParamsError(f"{source}: variants: {name} must map optimization keys to values, e.g. {{margin: 0.9}}")
        unknown = sorted(set(values) - set(DEFINABLE_KEYS))
        if unknown:
            raise ParamsError(f"{source}: variants: {name}: unknown key(s) {', '.join(unknown)}; a variant sets keys "
                              f"of the optimization section: {', '.join(DEFINABLE_KEYS)}")
        values = {k: yaml_number(v) if k in BY_KEY else v for k, v in values.items()}
        empty = sorted(k for k, v in values.items() if v is None)
        if empty:  # an override of None means "not given": it ran the section's value, and the report said None
            raise ParamsError(f"{source}: variants: {name}: {', '.join(empty)} is empty (null); give it a value")
    else:
        values = parse_variant_name(name)
        if values is None:
            shorts = ", ".join(f"{k.short} ({k.key})" for k in VARIANT_KEYS)
            raise ParamsError(f"variant {name!r} is not defined under `variants:` in {source} and is not a name made "
                              f"of values such as m0.9 or m0.5_steps20 (prefixes: {shorts}); define it there or use "
                              "such a name")
    return {f"optimization.{k}": v for k, v in values.items()}


def yaml_number(value: Any) -> Any:
    """A number that YAML 1.1 (PyYAML) read as text, `1e-3` (it wants `1.0e-3`), as its number, as params.yaml's
    other settings read it; any other value as it is."""
    if isinstance(value, str) and value.isascii():
        try:
            return float(value)
        except ValueError:
            pass
    return value


def grid_variants(grid: Mapping[str, Sequence[Any]]) -> list[str]:
    """Every combination of the value lists, as variant names: {"margin": [0, 0.9]} -> ["m0", "m0.9"]."""
    keys = [k.key for k in VARIANT_KEYS if k.key in grid]
    unknown = sorted(set(grid) - set(keys))
    if unknown:
        raise ParamsError(f"sweep: cannot sweep {', '.join(unknown)}; sweep keys: {', '.join(BY_KEY)} (other "
                          "settings: define named variants under `variants:`)")
    lists = []
    for key in keys:
        values = grid[key]
        values = [yaml_number(v) for v in (values if isinstance(values, (list, tuple)) else [values])]
        if not values:
            raise ParamsError(f"sweep: {key} has no values")
        for value in values:  # YAML reads `true` as a bool, which float() would take as 1.0
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ParamsError(f"sweep: {key}: {value!r} is not a number; give a number or a list of numbers")
            if not math.isfinite(value):
                raise ParamsError(f"sweep: {key}: {value!r} is not a finite number")
            if BY_KEY[key].kind is int and value != int(value):
                raise ParamsError(f"sweep: {key}: {value!r} is not a whole number")
        lists.append(values)
    return [variant_name(dict(zip(keys, combo))) for combo in itertools.product(*lists)] if keys else []


def canonical_name(name: str) -> str:
    """A name made of values as `variant_name` spells them ("m0.50" and "steps20_m0.5" -> "m0.5", "m0.5_steps20"),
    so that one setting is one variant, computed once; other names unchanged."""
    values = parse_variant_name(check_variant_name(name))
    return variant_name(values) if values else name


def sweep_variants(sweep: Mapping[str, Any] | None) -> list[str]:
    """The variants a `sweep:` section asks for: its `variants:` names, then its grid; ["default"] when empty."""
    sweep = dict(sweep or {})
    names = sweep.pop("variants", None)
    if names is None:
        names = []
    elif not isinstance(names, (list, tuple)):  # one name; `variants: off` is False, not "no names"
        names = [names]
    for name in names:
        if not isinstance(name, str):
            raise _yaml_read_as_value(name, "sweep: variants")
    names = [canonical_name(n) for n in names] + grid_variants(sweep)
    return list(dict.fromkeys(names)) or [DEFAULT_VARIANT]
