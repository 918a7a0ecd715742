"""Several anonymization runs side by side: each run is labelled by the parameters in which it differs from the
others (e.g. "m=0.5" for runs that differ only in the identity margin), so a table row or a scatter point says
what was changed. Parameters are flat `{"optimization.margin": "0.5", ...}` dicts of strings, as MLflow stores
them and as `orchestration.tracking.flatten` makes them from a run's params.json."""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence

SHORT_NAMES = {"optimization.margin": "m"}  # the paper's symbol for the identity margin
UNSET = "unset"  # shown for a parameter one run has and another does not


def differing_keys(params: Sequence[Mapping[str, str]]) -> list[str]:
    """The parameter names whose values are not the same in every run (a missing key counts as a value)."""
    keys = sorted({k for p in params for k in p})
    return [k for k in keys if len({p.get(k, UNSET) for p in params}) > 1]


def _short_names(keys: list[str]) -> dict[str, str]:
    """`optimization.margin` -> `m`; otherwise the last dotted part, unless two keys would share it."""
    tails = Counter(k.rsplit(".", 1)[-1] for k in keys)
    return {k: SHORT_NAMES.get(k) or (k.rsplit(".", 1)[-1] if tails[k.rsplit(".", 1)[-1]] == 1 else k) for k in keys}


def _sections(keys: list[str]) -> list[list[str]]:
    """Keys grouped by their dotted prefix ("speed.amp", "speed.compile" -> one group), in order; top-level keys
    alone."""
    groups: dict[str, list[str]] = {}
    for k in keys:
        groups.setdefault(k.rsplit(".", 1)[0] if "." in k else k, []).append(k)
    return list(groups.values())


def run_labels(params: Sequence[Mapping[str, str]], fallbacks: Sequence[str]) -> list[str]:
    """One unique label per run: "name=value" for every differing parameter (", "-joined), e.g. "m=0.5";
    parameters missing from some runs count only when no parameter that all runs have differs.

    `fallbacks` (e.g. the runs' folder names) label runs whose parameters are all equal, and are appended,
    in brackets, to labels that would otherwise repeat."""
    if len(params) != len(fallbacks):
        raise ValueError(f"{len(params)} parameter sets but {len(fallbacks)} fallback labels")
    keys = differing_keys(params)
    # A key that only some runs have was added (or dropped) by a code change, not chosen by the user: it labels
    # runs only when nothing that every run has differs, and then a section of more than two such keys (a new
    # `speed:` block, say) is one "speed.*=set" / "speed.*=unset" rather than every key and value.
    shared = [k for k in keys if all(k in p for p in params)]
    parts = [[k] for k in shared] if shared else _sections(keys)
    short = _short_names(keys)

    def part(p: Mapping[str, str], group: list[str]) -> str:
        # Keys with one value wherever they are set tell runs apart only by being there or not; more than two
        # such keys of a section become one "section.*=set|unset". A key whose values differ keeps its value.
        uniform = [k for k in group if len({q[k] for q in params if k in q}) == 1]
        if len(uniform) <= 2:
            uniform = []
        named = [f"{short[k]}={p.get(k, UNSET)}" for k in group if k not in uniform]
        if uniform:
            named.insert(0, f"{uniform[0].rsplit('.', 1)[0]}.*={'set' if any(k in p for k in uniform) else UNSET}")
        return ", ".join(named)

    labels = [", ".join(part(p, g) for g in parts) or str(f) for p, f in zip(params, fallbacks)]
    counts = Counter(labels)
    labels = [f"{label} [{f}]" if counts[label] > 1 and label != str(f) else label
              for label, f in zip(labels, fallbacks)]
    counts = Counter(labels)
    return [f"{label} #{i + 1}" if counts[label] > 1 else label for i, label in enumerate(labels)]
