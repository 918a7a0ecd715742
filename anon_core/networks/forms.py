"""Names of the equal formulations some network ops can run in (`speed:` in params.yaml picks them). Torch-free, so
a params file is checked without importing torch."""

UP_FORMS: tuple[str, ...] = ("transposed", "polyphase")  # ModulatedConv2d.up_form: the batched up-sampling conv
RESIZE_FORMS: tuple[str, ...] = ("interpolate", "matmul")  # resample: the reference op, or its two matrices
