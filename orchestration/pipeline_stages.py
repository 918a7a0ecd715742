"""The pipeline's stages (what `falco stage NAME` and dvc.yaml's stages run, `falco pipeline` all three in order) and
its modes. Dagster-free, so that the command line's parser, which lists them, loads without Dagster."""

STAGES = ("prepare", "anonymize", "evaluate")
MODES = ("aligned", "photo")  # the face dataset graph, or photo mode's graph (prepare_photos, anonymize_photos)
