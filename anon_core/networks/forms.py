"""Names of the equal formulations some network ops can run in (`speed:` in params.yaml picks them). Torch-free, so
a params file is checked without importing torch."""

UP_FORMS: tuple[str, ...] = ("transposed", "polyphase")  # ModulatedConv2d.up_form: the batched up-sampling conv
RESIZE_FORMS: tuple[str, ...] = ("interpolate", "matmul")  # resample: the reference op, or its two matrices


def resolve_resize_form(setting: str, device_type: str) -> str:
    """`speed.resize_form` -> a RESIZE_FORMS entry: "auto" is the matrices on CUDA (measured 1.06x the whole step at
    1024 px on an H200, where the antialiased kernel's backward runs on atomic adds) and the reference op elsewhere
    (the matrices measured 0.80x for FaRL's resize on the project's CPU)."""
    if setting == "auto":
        return "matmul" if device_type == "cuda" else "interpolate"
    return setting
