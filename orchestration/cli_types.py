"""Argument types and checks shared by the `falco` sub-commands."""

import argparse
from pathlib import Path


def given_path(text: str) -> Path:
    """A path argument; an empty one is refused: an unset shell variable (`falco anonymize "$IN" out`) would otherwise
    name the current folder, and a run would read or write there."""
    if not text.strip():
        raise argparse.ArgumentTypeError("an empty path (an unset shell variable?); give the folder or file")
    return Path(text)


def finite_float(text: str) -> float:
    """A float option's value; nan and inf (also `1e400`, which float() reads as inf) are refused by what was typed,
    not by the value a later range check would name. Digits are ASCII ones, as params.yaml reads them (Python reads
    `٣` as 3; YAML reads it as text)."""
    import math

    try:
        if not text.isascii():
            raise ValueError(text)
        value = float(text)
    except ValueError:
        sweep = "; one value here (`falco pipeline --margin 0,0.5` runs one variant per value)" if "," in text else ""
        raise argparse.ArgumentTypeError(f"{text!r} is not a number{sweep}") from None
    if not math.isfinite(value):
        shown = "" if text.strip().lower().lstrip("+-") in ("nan", "inf", "infinity") else f" ({value})"
        raise argparse.ArgumentTypeError(f"{text!r}{shown} is not a finite number")
    return value


def whole_number(text: str) -> int:
    """An integer option's value, written as params.yaml takes one: `3`, `3.0` or `1e3`; `3.5`, nan and inf are
    refused by what was typed."""
    if text.isascii():  # else finite_float says why not
        try:
            return int(text)
        except ValueError:
            pass
    try:
        value = finite_float(text)
    except argparse.ArgumentTypeError as error:
        raise argparse.ArgumentTypeError(str(error).replace("not a number", "not a whole number")) from None
    if not value.is_integer():
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number")
    return int(value)


def given_text(text: str) -> str:
    """A value that must not be empty (a URI, a list of names): empty, it would fall back to the default silently,
    where the user meant to give one."""
    if not text.strip():
        raise argparse.ArgumentTypeError("an empty value (an unset shell variable?); give one, or leave the option out "
                                         "for the default")
    return text


def name_list(text: str) -> list[str]:
    """A comma-separated list of names (`dlib,arcface_irse50`), each once, in order; empty is refused like
    `given_text`."""
    names = list(dict.fromkeys(name.strip() for name in given_text(text).split(",") if name.strip()))
    if not names:
        raise argparse.ArgumentTypeError(f"{text!r} names nothing; give comma-separated names")
    return names


# dest -> flag of the options that only one --mode reads (`falco anonymize`, `falco pipeline`)
ALIGNED_MODE_FLAGS = {"dataset": "--dataset", "labels": "--labels", "align": ("--align", "--no-align"),
                      "align_detector": "--align-detector"}
PHOTO_MODE_FLAGS = {"min_face_size": "--min-face-size", "min_anonymize_size": "--min-anonymize-size",
                    "cover": "--cover", "photo_format": "--photo-format"}


def check_mode_flags(args: argparse.Namespace) -> None:
    """FalcoError when an option of the other --mode is given: it would be ignored, and the run not be the one asked
    for (`--min-face-size 80` without `--mode photo` anonymizes the aligned dataset)."""
    other = PHOTO_MODE_FLAGS if args.mode == "aligned" else ALIGNED_MODE_FLAGS
    given = [(flag if isinstance(flag, str) else flag[0] if value else flag[1]) for dest, flag in other.items()
             if (value := getattr(args, dest, None)) is not None]  # (if true, if false) for a switch
    if args.mode == "photo":
        refuse_flags(given, "for aligned mode only; photo mode reads every image of the folder as a photo and aligns "
                            "each face itself (drop them, or use --mode aligned)")
    refuse_flags(given, "for photo mode only; aligned mode anonymizes one face per image (drop them, or add --mode "
                        "photo)")


def refuse_flags(given: list[str], reason: str) -> None:
    """FalcoError "<flags> is/are <reason>" when options that the command would not read were `given`."""
    from anon_core.errors import FalcoError

    if given:
        one = len(given) == 1
        raise FalcoError(f"{', '.join(given)} {'is' if one else 'are'} {reason.replace('drop them', 'drop it') if one else reason}")
