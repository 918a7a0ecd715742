"""The sections of the params file that the commands read besides the method's, checked as every profile reads them
before any work (`anon_core.params.check_every_profile`): `falco anonymize` in either mode and `falco pipeline`
refuse a bad `photo:`, `pipeline:`, `data:`, `evaluation:`, `attribute_classifier:` or `variants:` value in one line, whichever of them the
command itself reads."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable


def section_readers() -> dict[str, Callable[[dict[str, Any], str], Any]]:
    """{section: the reader that checks it}: the same functions the commands and assets read the sections with."""
    from anon_core.ingest import data_settings
    from anon_core.params import pipeline_settings
    from anon_core.photo_faces import photo_settings
    from evaluation.attribute_classifier import classifier_config

    return {"data": data_settings, "photo": photo_settings, "pipeline": pipeline_settings,
            "attribute_classifier": classifier_config, "evaluation": evaluation_section, "variants": variants_section}


def variants_section(values: dict[str, Any], source: str) -> dict[str, dict[str, Any]]:
    """The `variants:` section checked as `falco pipeline` resolves each definition (`variants.variant_overrides`):
    an entry that sets nothing, an unknown key or a name made of values is refused by every command."""
    from anon_core.variants import variant_overrides

    return {name: variant_overrides(name, values, source) for name in values}


def evaluation_section(values: dict[str, Any], source: str) -> dict[str, Any]:
    """The `evaluation:` section checked: `baselines` a list of known baselines, `show_real_faces` true or false (a
    misspelt `flase`, being text, would show the real faces)."""
    from anon_core.errors import ParamsError
    from anon_core.params import coerce_value
    from evaluation.baselines import BASELINES

    names = values.get("baselines")
    if not isinstance(names, list) or any(n not in BASELINES for n in names):
        raise ParamsError(f"{source}: evaluation.baselines = {names!r} must be a list of {', '.join(BASELINES)} "
                          "(or [])")
    return {"baselines": names,
            "show_real_faces": coerce_value(values.get("show_real_faces"), "bool", f"{source}: evaluation.show_real_faces")}


def check_sections(params_path: Path | str | None, profile: str) -> None:
    """ParamsError, naming the file and profile (`profile`, the command's, first), for the first bad value of a
    section in any profile."""
    from anon_core.params import check_every_profile

    check_every_profile(params_path, section_readers(), first=profile)
