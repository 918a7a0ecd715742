"""Typed hyper-parameters of the method, resolved from `params.yaml`.

`params.yaml` at the repository root is the one place that holds default values (DVC reads it too); the
dataclasses below only give them types and checks. Resolution order: the file's `defaults`, then its
`profiles.<name>` entry, then explicit overrides (command-line flags, Dagster run config).
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import difflib
import functools
import json
import math
from collections.abc import Callable, Hashable, Iterator, Mapping, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import yaml

from anon_core.errors import ParamsError
from anon_core.networks.forms import RESIZE_FORMS, UP_FORMS

DEFAULT_PARAMS_PATH = Path(__file__).resolve().parents[1] / "params.yaml"


@dataclass(frozen=True)
class OptimizationParams:
    steps: int
    lr: float
    margin: float  # m: the identity loss pulls <f(x_anon), f(x_real)> toward m
    lambda_id: float
    lambda_attr: float
    lambda_consistency: float  # weight of 1 - <f(x_anon), f(G(w_fake))>: one pseudonym per fake (0: the paper)
    layer_start: int  # first trainable W+ layer
    layer_stop: int  # one past the last trainable W+ layer
    milestones: tuple[float, ...]  # fractions of `steps` where the learning rate is multiplied by gamma (sorted)
    gamma: float

    def milestone_steps(self) -> list[int]:
        return [int(round(f * self.steps)) for f in self.milestones]


@dataclass(frozen=True)
class InversionParams:
    method: str  # "e4e" or "optimization"
    steps: int
    lr: float


@dataclass(frozen=True)
class SpeedParams:
    """How the optimization runs on the device; none of it changes the method (amp changes float rounding)."""

    amp: str  # autocast dtype: "auto" (bf16 on CUDA, off on CPU), "bf16" or "off"; codes and Adam stay float32
    channels_last: bool  # convolutional networks in channels-last memory format on CUDA
    compile: bool  # torch.compile the optimization step (compiles once per batch shape, then runs faster)
    compile_blocks: bool  # torch.compile each repeated network block instead (regional); ignored when `compile` is on
    upsample_form: str  # UP_FORMS: the generator's batched up-sampling conv (same maths; docs/speed.md)
    resize_form: str  # auto or RESIZE_FORMS: the identity and attribute networks' input resize (same maths; docs/speed.md)
    auto_max_batch_size: int  # cap of batch_size: auto
    auto_memory_fraction: float  # share of the free GPU memory that batch_size: auto may plan to fill
    auto_cpu_batch_size: int  # what batch_size: auto means without a GPU (no device memory to measure)


AUTO = "auto"


@dataclass(frozen=True)
class FalcoParams:
    profile: str
    seed: int
    pool_size: int
    truncation_psi: float
    pairing_k: int
    pairing: str  # PAIRING_MODES: nearest (the paper's), unique, identity
    batch_size: int | str  # images optimized together, or "auto" (largest that fits the GPU, see speed)
    optimization: OptimizationParams
    inversion: InversionParams
    speed: SpeedParams

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    def replace(self, **overrides: Any) -> FalcoParams:
        """A copy with overrides (checked); nested keys as `optimization.steps` or `optimization={"steps": 5}`."""
        params = _build(FalcoParams, _merge(self.to_dict(), _nest(overrides)), "overrides")
        _check(params, "overrides")
        return params


MAX_SEED = 2**12 - 1  # fake i is drawn from torch seed seed * 2**20 + i, and torch keeps 32 bits of a seed
MAX_STEPS = 100_000  # optimization and inversion steps: the paper's 50, 2000 times over
INVERSION_METHODS = ("e4e", "optimization")
PAIRING_MODES = ("nearest", "unique", "identity")
AMP_MODES = ("auto", "bf16", "off")  # speed.amp; auto: bf16 on CUDA, off elsewhere


# The sections of FalcoParams that are dataclasses of their own.
NESTED = {"optimization": OptimizationParams, "inversion": InversionParams, "speed": SpeedParams}


def load_params(profile: str, path: Path | None = None, *, sources: Mapping[str, str] | None = None,
                **overrides: Any) -> FalcoParams:
    """Resolve the parameters of `profile` from a params file (default: the repository's `params.yaml`).

    Overrides whose value is None are ignored, so command-line flags that were not given fall through. `sources`:
    the flag that set an override ({"seed": "--seed"}), named by the error when its value is out of range.
    """
    path, raw = _read(path)
    if "defaults" not in raw:
        raise ParamsError(f"{path} has no top-level 'defaults:' section")
    profiles = raw.get("profiles") or {}
    if profile not in profiles:
        known = f"known: {', '.join(sorted(profiles))}" if profiles else "it has no 'profiles:' section"
        raise ParamsError(f"profile {profile!r} is not in {path} ({known}); add it under 'profiles:' or pick a known "
                          "one")
    if not isinstance(profiles, dict) or not all(isinstance(v, dict) or v is None for v in profiles.values()):
        raise ParamsError(f"{path}: 'profiles:' must map each profile's name to its settings")
    for name in [profile, *sorted(set(profiles) - {profile})]:  # the file as written, every profile: a bad value
        # under `defaults:` that this profile replaces would otherwise wait for a run of another profile
        empty = _null_keys(profiles[name] or {})
        if empty:  # named where it is: "optimization.lr is empty" sent the reader to `defaults:`, which has a value
            raise ParamsError(f"{path}: profiles: {name}: {empty[0]} is empty (null); give it a value, or remove the "
                              "line to take the one under `defaults:`")
        source = str(path) if name == profile else f"{path} (profile {name})"
        _check(_build(FalcoParams, {**_merge(raw["defaults"], profiles[name] or {}), "profile": name}, source), source)
    merged = _merge(raw["defaults"], profiles[profile] or {})
    given = {k: v for k, v in overrides.items() if v is not None}
    if not given:
        return _build(FalcoParams, {**merged, "profile": profile}, str(path))
    merged = _merge(merged, _nest(given))
    source = "overrides (command line, variant or run config)"
    label = f"{source}: invalid parameters"  # as _check words its error
    with naming_sources(label, given, sources or {}):  # a value of the wrong type too: `margin: abc` in a variant
        params = _build(FalcoParams, {**merged, "profile": profile}, label)
        _check(params, source)
    return params


# The top-level sections of params.yaml besides `defaults` and `profiles` (the method's): what `load_section` reads.
SECTIONS = ("data", "photo", "variants", "sweep", "pipeline", "evaluation", "checks", "attribute_classifier")
# The keys of the sections that no reader of their own checks for strays (photo's, attribute_classifier's, the
# variants' and the sweep's readers name an unknown key themselves).
SECTION_KEYS = {
    "data": ("dataset", "labels_csv", "align", "align_detector"),
    "pipeline": ("shard_size", "executor", "max_concurrent"),
    "evaluation": ("baselines", "show_real_faces"),
    "checks": ("privacy_max_match_share",),
}
METHOD_KEYS = ("seed", "pool_size", "truncation_psi", "pairing_k", "pairing", "batch_size", "optimization", "inversion", "speed")


def split_overrides(overrides: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Dotted overrides ({"pool_size": 40, "pipeline.shard_size": 3}) -> (the method's, the sections'); ParamsError
    for a key that is neither."""
    method, sections = {}, {}
    for key, value in overrides.items():
        head = key.split(".", 1)[0]
        if head in METHOD_KEYS:
            method[key] = value
        elif head in SECTIONS and "." in key:
            sections[key] = value
        else:
            raise ParamsError(f"unknown setting {key!r}: settings are the method's ({', '.join(METHOD_KEYS)}) or "
                              f"<section>.<key> of a section ({', '.join(SECTIONS)})")
    return method, sections


def load_section(name: str, profile: str, path: Path | None = None,
                 overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """A top-level section of the params file other than the method's (e.g. `checks`, `attribute_classifier`),
    with its own `profiles.<profile>` entry applied, then the dotted `overrides` that start with `<name>.` (None
    values ignored); {} when the file has no such section."""
    path, raw = _read(path)
    section = dict(raw.get(name) or {})  # a mapping: _read checked every section
    per_profile = section.pop("profiles", None) or {}
    mine = {k.split(".", 1)[1]: v for k, v in (overrides or {}).items() if k.startswith(f"{name}.") and v is not None}
    return _merge(_merge(section, per_profile.get(profile) or {}), _nest(mine))


def _check_sections(raw: dict[str, Any], path: Path) -> None:
    """ParamsError naming a top-level key of the file that is not a section, or a key of a section of SECTION_KEYS
    (or of one of its profiles' entries) that is not one of its settings: YAML hands a misspelt key to no reader, so
    the setting it meant would keep its default without a word. Checked on every read, whichever sections the
    command reads."""
    sections = ("defaults", "profiles", *SECTIONS)
    unknown = [str(key) for key in raw if key not in sections]
    if unknown:
        # a method's setting written at the top level, maybe misspelt: `optimisation:`, `steps:`
        method = {**{f.name: f"{name}.{f.name}" for name, cls in (("speed", SpeedParams), ("inversion", InversionParams),
                                                                   ("optimization", OptimizationParams))
                     for f in fields(cls)}, **{key: key for key in METHOD_KEYS}}
        key = unknown[0]
        close = [key] if key in method else difflib.get_close_matches(key, method, 1, 0.75)
        where = (f": the method's settings ({method[close[0]]}) go under 'defaults:' or 'profiles: <name>:'" if close
                 else _did_you_mean(key, sections))
        verb = "is not a section" if len(unknown) == 1 else "are not sections"
        raise ParamsError(f"{path}: {', '.join(map(repr, unknown))} {verb}{where}; the file's sections are "
                          f"{', '.join(sections)} (variables of your own for dvc.yaml go under its 'vars:')")
    for name in SECTIONS:
        if not isinstance(raw.get(name) or {}, dict):
            raise ParamsError(f"{path}: '{name}:' must be a mapping of settings")
    for name, known in SECTION_KEYS.items():
        section = raw.get(name) or {}
        entries = [section, *((section.get("profiles") or {}).values() if isinstance(section.get("profiles"), dict)
                              else ())]
        strays = sorted({key for entry in entries if isinstance(entry, dict) for key in entry
                         if key not in known and key != "profiles"}, key=str)
        if strays:
            raise ParamsError("; ".join(f"{path}: {name}.{key} is not a setting{_did_you_mean(key, known)}"
                                        for key in strays) + f" (known: {', '.join(known)})")
    # the release gate's bound, in every profile's entry: a bad one fails any run, not the first run of its profile
    checks = raw.get("checks") or {}
    profiles = checks.get("profiles") if isinstance(checks.get("profiles"), dict) else {}
    entries = [(str(path), checks), *((f"{path} (profile {name})", entry) for name, entry in profiles.items())]
    for where, entry in entries:
        if isinstance(entry, dict) and "privacy_max_match_share" in entry:
            _match_share(entry["privacy_max_match_share"], where)


PIPELINE_EXECUTORS = ("multiprocess", "in_process", "celery")
"""`pipeline.executor`: Dagster's executors that `falco pipeline` runs its steps with (orchestration/jobs.py)."""


def pipeline_settings(section: Mapping[str, Any], params_file: Path | str) -> dict[str, Any]:
    """params.yaml's `pipeline:` section (`load_section`, with its overrides), checked: ParamsError naming every
    missing or bad key."""
    problems = [f"pipeline.{key} is missing; add it (see the project's params.yaml)"
                for key in SECTION_KEYS["pipeline"] if key not in section]
    for key, unit in (("shard_size", "images"), ("max_concurrent", "steps at a time")):
        value = section.get(key, 1)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            problems.append(f"pipeline.{key} = {value!r} must be a whole number of {unit} >= 1")
    if section.get("executor", PIPELINE_EXECUTORS[0]) not in PIPELINE_EXECUTORS:
        problems.append(f"pipeline.executor = {section['executor']!r} must be one of {', '.join(PIPELINE_EXECUTORS)}")
    if problems:
        raise ParamsError(f"{params_file}: " + "; ".join(problems))
    return {key: section[key] for key in SECTION_KEYS["pipeline"]}


def check_every_profile(path: Path | str | None, readers: Mapping[str, Callable[[dict[str, Any], str], Any]],
                        first: str | None = None) -> None:
    """Each section of `readers` ({section: its checking reader, called with the section and where it is}) as every
    profile reads it from the file, flags aside: a bad value that another profile reads (`pipeline: profiles:
    ffhq1024: shard_size: 0`) or that a flag replaces fails any run, as the method's settings do (`load_params`), not
    the first run of that profile, hours later on a GPU."""
    from anon_core.profiles import PROFILES

    file = path or DEFAULT_PARAMS_PATH
    for profile in sorted(PROFILES, key=lambda name: (name != first, name)):  # `first`, the command's, named first
        for name, read in readers.items():
            read(load_section(name, profile, path), f"{file} (profile {profile})")


def _did_you_mean(key: Any, known: Sequence[str]) -> str:
    close = difflib.get_close_matches(str(key), known, n=1, cutoff=0.75)
    return f" (did you mean {close[0]}?)" if close else ""


def privacy_bound(checks: Mapping[str, Any], params_file: Path | str) -> float:
    """`checks.privacy_max_match_share` of a `checks` section (`load_section`), checked: the share of faces, 0 to 1,
    that dlib may still match to their own source before a privacy check fails. A value out of range would let the
    release gate pass anything (5 meant as 5 % allows 500 %), so it is refused, naming the file. (Every profile's
    value in the file is checked on each read, `_check_sections`.)"""
    if "privacy_max_match_share" not in checks:
        raise ParamsError(f"{params_file}: checks.privacy_max_match_share is missing; add it (e.g. 0.05: at most 5% "
                          "of the faces may still be matched to their source; see the project's params.yaml)")
    return _match_share(checks["privacy_max_match_share"], f"{params_file}")


def _match_share(value: Any, where: str) -> float:
    """A `privacy_max_match_share` value as a float in [0, 1]; a number YAML read as text (`1e-4`, YAML 1.1 wants
    `1.0e-4`) is taken, as the method's settings take it."""
    if value is None:
        raise ParamsError(f"{where}: checks.privacy_max_match_share is empty (null); give it a value (e.g. 0.05: at "
                          "most 5% of the faces may still be matched to their source)")
    number = value
    if isinstance(value, str):
        with contextlib.suppress(ValueError):
            number = float(value)
    if isinstance(number, bool) or not isinstance(number, (int, float)) or not 0 <= number <= 1:
        hint = f"; for {number:g}% write {number / 100:g}" if isinstance(number, (int, float)) and 1 < number <= 100 \
            else ""  # (True is 1: no hint)
        raise ParamsError(f"{where}: checks.privacy_max_match_share = {value!r} must be a share between 0 and 1 "
                          f"(0.05 allows 5% of the faces to be matched to their source){hint}")
    return float(number)


def given_flags(flags: Mapping[str, tuple[str, Any]]) -> tuple[dict[str, Any], dict[str, str]]:
    """{dotted key: (flag, value)} -> (the overrides that were given, {key: the flag that gave it}); a None value (the
    flag left out) is no override."""
    given = {key: (flag, value) for key, (flag, value) in flags.items() if value is not None}
    return {key: value for key, (_, value) in given.items()}, {key: flag for key, (flag, _) in given.items()}


@contextlib.contextmanager
def naming_sources(label: Path | str, overrides: Mapping[str, Any], sources: Mapping[str, str]) -> Iterator[None]:
    """A ParamsError raised inside about a setting that an override set names the override's source (`sources`:
    dotted key -> "--shard-size", or an environment variable), not the params file. The checkers word their errors
    `<label>: <key> = <value> <requirement>[; <key> = ...]` (`label`: the params file); such a problem becomes
    `--shard-size 0: must be ...`, and the file's own problems keep the label."""
    try:
        yield
    except ParamsError as err:
        message = _name_sources(str(err), f"{label}: ", overrides, sources)
        if message == str(err):
            raise
        raise ParamsError(message) from None


def _name_sources(message: str, prefix: str, overrides: Mapping[str, Any], sources: Mapping[str, str]) -> str:
    if not message.startswith(prefix):
        return message
    from_sources, from_file = [], []
    for problem in message[len(prefix):].split("; "):
        key, equals, rest = problem.partition(" = ")
        if not equals or key not in sources:
            from_file.append(problem)
            continue
        value = overrides.get(key)
        shown = next((text for text in (str(value), repr(value)) if rest.startswith(f"{text} ")), None)
        from_sources.append(f"{sources[key]} {shown}: {rest[len(shown) + 1:]}" if shown is not None
                            else f"{sources[key]}: {problem}")
    return "; ".join([*from_sources, *([prefix + "; ".join(from_file)] if from_file else [])])


class _UniqueKeyLoader(yaml.SafeLoader):
    """YAML's safe loader, refusing a key written twice in one mapping: YAML keeps the last silently, so a second
    `fast:` variant (or `margin:`) would replace the first without a word."""

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            seen = set()
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *defaults` is overridden on purpose
                    continue
                key = self.construct_object(key_node, deep=deep)
                if not isinstance(key, Hashable):  # the base loader says what is wrong with it
                    continue
                if key in seen:
                    raise yaml.constructor.ConstructorError(
                        None, None, f"the key {key!r} is written twice in one mapping (YAML would keep only the last)",
                        key_node.start_mark)
                seen.add(key)
        return super().construct_mapping(node, deep)


@functools.lru_cache(maxsize=16)
def _parse(text: str) -> Any:
    """A params file's YAML, parsed once per text: a command reads its sections one by one, and each profile's (21
    reads of one file in `falco anonymize`, a second of its start-up)."""
    return yaml.load(text, Loader=_UniqueKeyLoader)


def _read(path: Path | None) -> tuple[Path, dict[str, Any]]:
    path = Path(path) if path is not None else DEFAULT_PARAMS_PATH
    if not path.is_file():
        what = "is not a regular file" if path.exists() else "not found"
        raise ParamsError(f"parameter file {path} {what}; pass --params PATH to a params.yaml")
    try:
        raw = copy.deepcopy(_parse(path.read_text(encoding="utf-8"))) or {}
    except UnicodeDecodeError:
        raise ParamsError(f"{path} is not a text file; pass --params PATH to a params.yaml") from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise ParamsError(f"{path} is not valid YAML{where}: {problem}; compare it with the project's "
                          "params.yaml") from None
    if not isinstance(raw, dict):
        raise ParamsError(f"{path} must hold a mapping of sections ('defaults:', 'profiles:', ...)")
    _check_sections(raw, path)
    return path, raw


def _nest(flat: dict[str, Any]) -> dict[str, Any]:
    nested: dict[str, Any] = {}
    for key, value in flat.items():
        head, _, tail = key.partition(".")
        if tail:
            nested.setdefault(head, {})[tail] = value
        else:
            nested[key] = value
    return nested


def _null_keys(section: dict[str, Any], cls: type | None = None, prefix: str = "") -> list[str]:
    """The dotted keys of a params section (of the dataclass `cls`, default FalcoParams) whose value is empty (null);
    keys that are not parameters are left to the unknown-key check."""
    cls = cls or FalcoParams
    known = {f.name for f in fields(cls)}
    found = []
    for key, value in section.items():
        if key not in known:
            continue
        if value is None:
            found.append(f"{prefix}{key}")
        elif isinstance(value, dict) and cls is FalcoParams and key in NESTED:
            found += _null_keys(value, NESTED[key], f"{prefix}{key}.")
    return found


def _merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def _build(cls: type, data: dict[str, Any], source: str, prefix: str = "") -> Any:
    known = {f.name: f for f in fields(cls)}
    unknown = sorted(set(data) - set(known))
    if unknown:
        raise ParamsError(f"{source}: unknown parameter(s) {', '.join(prefix + u for u in unknown)}")
    missing = sorted(set(known) - set(data))
    if missing:
        raise ParamsError(f"{source}: missing parameter(s) {', '.join(prefix + m for m in missing)}")
    values = {}
    for name, f in known.items():
        value = data[name]
        nested = NESTED.get(name)
        if nested is not None and cls is FalcoParams:
            if not isinstance(value, dict):
                raise ParamsError(f"{source}: {prefix}{name} must be a mapping")
            values[name] = _build(nested, value, source, prefix=f"{name}.")
        else:
            values[name] = coerce_value(value, f.type, f"{source}: {prefix}{name}")
    return cls(**values)


def coerce_value(value: Any, type_name: Any, where: str) -> Any:
    """A params file's value as `type_name` ("int", "float", "bool", "str", "int | str", "tuple[float, ...]"): a
    number written as text ("3e-3", which YAML 1.1 reads as a string) is read as its number; a bool is never a number
    and only a bool is one; ParamsError naming `where` otherwise."""
    type_name = str(type_name)
    if value is None:  # `key:` or `key: null`; str(None) would pass as the word "None"
        raise ParamsError(f"{where} is empty (null); give it a value (the repository's params.yaml has the default)")
    if isinstance(value, bool) and type_name in ("int", "float", "int | str"):
        raise ParamsError(f"{where} = {value!r} is not a number (YAML reads true/false/yes/no/on/off as such)")
    try:
        if type_name == "int | str":  # batch_size: a number or "auto"
            return AUTO if value == AUTO else coerce_value(value, "int", where)
        if type_name == "bool":
            if not isinstance(value, bool):
                raise ValueError
            return value
        if type_name == "str" and value is False:  # YAML 1.1 reads a bare `off` as false
            return "off"
        if type_name == "int":
            number = value
            if isinstance(value, str) and value.strip().isascii():  # `1e3`, which YAML 1.1 reads as text
                number = float(value) if any(c in value.lower() for c in ".e") else int(value)
            if isinstance(number, float) and not number.is_integer():
                raise ValueError
            return int(number)
        if type_name == "float":
            return float(value)
        if type_name == "str":
            return str(value)
        if type_name.startswith("tuple"):
            if isinstance(value, (bool, str)) or any(isinstance(v, (bool, str)) for v in value):
                raise ValueError
            # milestones: MultiStepLR's schedule is the same in any order; sorted, one order is one setting (its
            # stored outputs are reused, the report shows one variant)
            return tuple(sorted(float(v) for v in value))
    except (TypeError, ValueError, OverflowError):
        if type_name.startswith("tuple"):
            raise ParamsError(f"{where} = {value!r} is not a list of numbers (e.g. [0.5, 0.75])") from None
        raise ParamsError(f"{where} = {value!r} is not a valid {type_name}") from None
    return value


def _finite(x: float) -> bool:
    return math.isfinite(x)


FLOAT32_MAX = 3.4028234663852886e38
# Adam takes its learning rate into float32 arithmetic: a larger one stops the first step with torch's overflow error
LEARNING_RATE_RULE = "a finite number > 0 that float32 holds (at most 3.4e38)"


def _learning_rate(x: float) -> bool:
    return _finite(x) and 0 < x <= FLOAT32_MAX


# (name, value of the params, test, requirement): every parameter with its range, checked in one place.
_RANGES = (
    ("seed", lambda p: p.seed, lambda v: 0 <= v <= MAX_SEED,
     "in [0, 4096) (fake i of the pool is drawn from torch seed seed * 2**20 + i, and torch keeps 32 bits of a seed)"),
    ("pool_size", lambda p: p.pool_size, lambda v: v >= 1, ">= 1"),
    ("batch_size", lambda p: p.batch_size, lambda v: v == AUTO or v >= 1, ">= 1 or auto"),
    ("pairing_k", lambda p: (p.pairing_k, p.pool_size), lambda v: v[0] >= 1 and (v[1] < 1 or v[0] <= v[1]),
     "in [1, pool_size]"),  # a pool_size below 1 is its own error
    ("pairing", lambda p: p.pairing, lambda v: v in PAIRING_MODES, f"one of {PAIRING_MODES}"),
    ("truncation_psi", lambda p: p.truncation_psi, lambda v: 0.0 < v <= 1.0,
     "in (0, 1] (at 0 every fake is the average face w_avg)"),
    ("optimization.steps", lambda p: p.optimization.steps, lambda v: 1 <= v <= MAX_STEPS, f"in [1, {MAX_STEPS}]"),
    ("optimization.lr", lambda p: p.optimization.lr, _learning_rate, LEARNING_RATE_RULE),
    ("optimization.margin", lambda p: p.optimization.margin, lambda v: 0.0 <= v <= 1.0,
     "in [0, 1] (a cosine similarity to aim at: 0 unrelated, 1 the same face)"),
    ("optimization.lambda_id", lambda p: p.optimization.lambda_id, lambda v: _finite(v) and v >= 0,
     "a finite number >= 0 (a negative weight would pull the identity toward the real one)"),
    ("optimization.lambda_attr", lambda p: p.optimization.lambda_attr, lambda v: _finite(v) and v >= 0,
     "a finite number >= 0"),
    ("optimization.lambda_consistency", lambda p: p.optimization.lambda_consistency, lambda v: _finite(v) and v >= 0,
     "a finite number >= 0"),
    ("optimization.lambda_id/attr/consistency",
     lambda p: (p.optimization.lambda_id, p.optimization.lambda_attr, p.optimization.lambda_consistency),
     lambda v: not all(_finite(x) and x >= 0 for x in v) or any(x > 0 for x in v),  # each one's range comes above
     "not all 0 (the loss would be 0 and the codes would stay the real faces' inversions)"),
    ("optimization.layer_start/stop", lambda p: (p.optimization.layer_start, p.optimization.layer_stop),
     lambda v: 0 <= v[0] < v[1], "such that 0 <= start < stop"),
    ("optimization.milestones", lambda p: p.optimization.milestones, lambda v: all(0.0 < m <= 1.0 for m in v),
     "fractions in (0, 1]"),
    ("optimization.gamma", lambda p: p.optimization.gamma, lambda v: 0.0 < v <= 1.0, "in (0, 1]"),
    ("inversion.method", lambda p: p.inversion.method, lambda v: v in INVERSION_METHODS, f"one of {INVERSION_METHODS}"),
    ("inversion.steps", lambda p: p.inversion.steps, lambda v: 1 <= v <= MAX_STEPS, f"in [1, {MAX_STEPS}]"),
    ("inversion.lr", lambda p: p.inversion.lr, _learning_rate, LEARNING_RATE_RULE),
    ("speed.amp", lambda p: p.speed.amp, lambda v: v in AMP_MODES, f"one of {AMP_MODES}"),
    ("speed.upsample_form", lambda p: p.speed.upsample_form, lambda v: v in UP_FORMS, f"one of {UP_FORMS}"),
    ("speed.resize_form", lambda p: p.speed.resize_form, lambda v: v in ("auto", *RESIZE_FORMS),
     f"one of {('auto', *RESIZE_FORMS)}"),
    ("speed.auto_max_batch_size", lambda p: p.speed.auto_max_batch_size, lambda v: v >= 1, ">= 1"),
    ("speed.auto_cpu_batch_size", lambda p: p.speed.auto_cpu_batch_size, lambda v: v >= 1, ">= 1"),
    ("speed.auto_memory_fraction", lambda p: p.speed.auto_memory_fraction, lambda v: 0.0 < v <= 1.0, "in (0, 1]"),
)


def _check(p: FalcoParams, source: str) -> None:
    """ParamsError listing every parameter outside its range (NaN and infinities are outside every range)."""
    problems = []
    for name, value, ok, requirement in _RANGES:
        v = value(p)
        if not ok(v):
            shown = v[0] if name == "pairing_k" else v
            if name == "pairing_k":  # the pool it draws from, as the reader may not know its size
                requirement = f"{requirement} (pool_size = {v[1]!r})"
            problems.append(f"{name} = {shown!r} must be {requirement}")
    if problems:
        raise ParamsError(f"{source}: invalid parameters: " + "; ".join(problems))
