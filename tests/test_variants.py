"""Variant names and sweeps (anon_core.variants): names made of values read back as the same values (and cannot be
redefined in params.yaml), other names come from params.yaml's definitions, and every bad name or key is one ParamsError that says what to do."""

import argparse

import pytest

from anon_core.errors import ParamsError
from anon_core.params import load_params
from anon_core.variants import (
    DEFAULT_VARIANT,
    canonical_name,
    format_value,
    grid_variants,
    parse_variant_name,
    sweep_variants,
    variant_name,
    variant_overrides,
)


@pytest.mark.parametrize("values", [
    {"margin": 0.0}, {"margin": 0.9}, {"margin": 0.5, "steps": 20}, {"lr": 1e-05}, {"lambda_attr": 0.25, "lr": 0.02},
    {"lambda_id": 3.0, "gamma": 0.5, "margin": 1.0}, {"margin": 0.1 + 0.2},
])
def test_names_made_of_values_read_back_as_those_values(values):
    name = variant_name(values)
    assert parse_variant_name(name) == values
    assert variant_overrides(name) == {f"optimization.{k}": v for k, v in values.items()}


def test_names_are_short_and_stable():
    assert variant_name({"margin": 0.0}) == "m0" and variant_name({"margin": 0.5}) == "m0.5"
    assert variant_name({"steps": 20, "margin": 0.5}) == "m0.5_steps20"  # VARIANT_KEYS order, not the dict's
    assert variant_name({"lambda_attr": 0.1, "lr": 0.02}) == "lr0.02_lattr0.1"
    assert variant_name({}) == DEFAULT_VARIANT and parse_variant_name(DEFAULT_VARIANT) == {}
    assert format_value(1e-05) == "1e-05" and format_value(10.0) == "10" and format_value(3) == "3"


@pytest.mark.parametrize("name", ["keep_identity", "m", "mx", "m0.5_m0.9", "steps2.5", "mnan", "minf", "m0.5__lr1"])
def test_other_names_are_not_read_as_values(name):
    assert parse_variant_name(name) is None
    with pytest.raises(ParamsError, match="not defined under `variants:`"):
        variant_overrides(name)


def test_params_yaml_definitions_are_used_and_checked():
    defined = {"keep_identity": {"margin": 0.9, "steps": 100}}
    assert variant_overrides("keep_identity", defined) == {"optimization.margin": 0.9, "optimization.steps": 100}
    for name in ("m0.5", "m0.9_steps100"):  # `--margin 0.5` would otherwise run whatever m0.5 was defined as
        with pytest.raises(ParamsError, match=f"'{name}' is a name made of values .* cannot be defined"):
            variant_overrides(name, {name: {"margin": 0.7}})
    with pytest.raises(ParamsError, match="unknown key.*pool_size"):
        variant_overrides("bad", {"bad": {"pool_size": 3}})
    with pytest.raises(ParamsError, match="cannot be redefined"):
        variant_overrides(DEFAULT_VARIANT, {DEFAULT_VARIANT: {"margin": 0.5}})
    # `margin:` left empty ran the section's margin (and the report said None); an empty variant ran as default
    with pytest.raises(ParamsError, match=r"variants: nullm: margin is empty \(null\); give it a value$"):
        variant_overrides("nullm", {"nullm": {"margin": None, "steps": 10}})
    for empty in (None, {}):
        with pytest.raises(ParamsError, match="variants: keep sets nothing, so it would run as 'default'"):
            variant_overrides("keep", {"keep": empty})
    for bad in ("", "a/b", "a|b", "-x", "x" * 65, "m 0.5"):
        with pytest.raises(ParamsError, match="variant name"):
            variant_overrides(bad)
    # a variant named like a baseline was two `blur` columns in `falco runs compare`, and its point left the plot
    from anon_core.variants import BASELINE_NAMES
    from evaluation.baselines import BASELINES

    assert set(BASELINE_NAMES) == set(BASELINES)
    for name in ("blur", "Pixelate"):
        with pytest.raises(ParamsError, match=f"variant name '{name}' is the name of an evaluation baseline"):
            variant_overrides(name, {name: {"margin": 0.5}})


def test_a_variant_resolves_on_top_of_the_profile():
    params = load_params("tiny", **variant_overrides("m0.9_steps3"))
    assert params.optimization.margin == 0.9 and params.optimization.steps == 3
    assert params.optimization.lr == load_params("tiny").optimization.lr  # tiny's own lr, untouched


def test_sweeps_are_names_then_every_combination():
    assert sweep_variants(None) == [DEFAULT_VARIANT] and sweep_variants({"variants": []}) == [DEFAULT_VARIANT]
    assert sweep_variants({"variants": ["default"], "margin": [0.0, 0.5, 0.9]}) == ["default", "m0", "m0.5", "m0.9"]
    assert grid_variants({"steps": [10, 20], "margin": [0, 0.9]}) == ["m0_steps10", "m0_steps20", "m0.9_steps10",
                                                                      "m0.9_steps20"]
    assert sweep_variants({"variants": ["m0.5", "m0.5"], "margin": 0.5}) == ["m0.5"]  # duplicates once
    with pytest.raises(ParamsError, match="cannot sweep pool_size"):
        grid_variants({"pool_size": [1, 2]})
    # before: "variant 'steps10.5' is not defined under variants:", and "variant value inf" without the key
    with pytest.raises(ParamsError, match=r"^sweep: steps: 10.5 is not a whole number$"):
        grid_variants({"steps": [10, 10.5]})
    with pytest.raises(ParamsError, match=r"^sweep: lr: inf is not a finite number$"):
        grid_variants({"lr": [float("inf")]})
    from orchestration.cli_pipeline import _values

    with pytest.raises(argparse.ArgumentTypeError, match="^'0,nan': 'nan' is not a finite number$"):
        _values(float)("0,nan")  # argparse names the flag: "argument --margin: '0,nan': 'nan' is ..."
    with pytest.raises(ParamsError, match="no values"):
        grid_variants({"margin": []})


def test_one_setting_spelled_two_ways_is_one_variant():
    assert canonical_name("m0.50") == canonical_name("m0.5") == "m0.5"
    assert canonical_name("steps20_m0.5") == "m0.5_steps20"
    assert canonical_name("keep_identity") == "keep_identity" and canonical_name(DEFAULT_VARIANT) == DEFAULT_VARIANT
    assert sweep_variants({"variants": ["m0.50", "m0.5"], "margin": [0.5]}) == ["m0.5"]  # computed once
    # -0 is 0: `--margin=0,-0` made a variant m-0 beside m0 and optimized every image again for it
    assert canonical_name("m-0") == canonical_name("m-0.0") == variant_name({"margin": -0.0}) == "m0"
    assert sweep_variants({"margin": [0.0, -0.0]}) == ["m0"]


def test_a_variant_asked_for_twice_on_the_command_line_is_said_to_run_once(capsys):
    from orchestration.cli import build_parser
    from orchestration.cli_pipeline import resources_from_args

    args = build_parser().parse_args(["pipeline", "--margin", "0.5,.5,0.50,0.9", "--variant", "m0.90,keep"])
    _, networks, wanted = resources_from_args(args)
    networks = networks.model_copy(update={"sweep_variants": wanted})
    assert networks.sweep() == ["m0.9", "keep", "m0.5"]
    assert capsys.readouterr().err == (
        "note: variant m0.9 is asked for 2 times (one value written 2 ways, or repeated); it runs once\n"
        "note: variant m0.5 is asked for 3 times (one value written 3 ways, or repeated); it runs once\n")
    resources_from_args(build_parser().parse_args(["pipeline", "--margin", "0.5,0.9"]))
    assert capsys.readouterr().err == ""
    # a value flag given twice adds its values (the last one alone ran, without a word)
    _, _, wanted = resources_from_args(build_parser().parse_args(
        ["pipeline", "--margin", "0.5", "--margin", "0.25", "--steps", "3", "--variant", "keep", "--variant", "m0.9"]))
    assert wanted == ["keep", "m0.9", "m0.5_steps3", "m0.25_steps3"]


def test_a_number_yaml_reads_as_text_is_a_number_in_a_sweep_as_in_a_variant():
    """PyYAML reads `1e-3` as text (YAML 1.1 wants 1.0e-3): a variant took it as 0.001, a sweep refused it as "not a
    number"."""
    assert grid_variants({"lr": ["1e-3", 5e-2], "steps": ["1e1"]}) == ["steps10_lr0.001", "steps10_lr0.05"]
    assert variant_overrides("alt", {"alt": {"lr": "1e-3"}}) == {"optimization.lr": 0.001}
    with pytest.raises(ParamsError, match=r"^sweep: lr: 'fast' is not a number"):
        grid_variants({"lr": ["fast"]})


def test_values_too_long_for_a_name_say_to_define_a_named_variant():
    """Before: "variant name 'm0.1234..._lattr0.12...' must be 1-64 letters ...", with no way out named."""
    from orchestration.cli import build_parser
    from orchestration.cli_pipeline import resources_from_args

    values = {"margin": 0.123456789012345, "lr": 0.0123456789012345, "lambda_id": 10.5,
              "lambda_attr": 0.123456789012345}
    flags = [a for k, v in values.items() for a in (f"--{k.replace('_', '-')}", str(v))]
    with pytest.raises(ParamsError) as raised:
        resources_from_args(build_parser().parse_args(["pipeline", *flags]))
    assert str(raised.value).startswith(
        "these values would name their variant 'm0.123456789012345_lr0.0123456789012345_lid10.5_lattr0.123456789012345'"
        ", 70 characters, more than the 64 a variant name may have")
    assert ("define it under `variants:` in params.yaml, e.g. `my_variant: {margin: 0.123456789012345, lr: "
            "0.0123456789012345, lambda_id: 10.5, lambda_attr: 0.123456789012345}`, and run it with --variant "
            "my_variant") in str(raised.value)
    # the definition it suggests runs those values
    suggested = variant_overrides("my_variant", {"my_variant": values})
    assert suggested == {f"optimization.{k}": v for k, v in values.items()}
    with pytest.raises(ParamsError, match="70 characters"):  # params.yaml's `sweep:` grid too
        sweep_variants({k: [v] for k, v in values.items()})


def test_the_pipeline_checks_every_definition_before_any_run_not_only_those_it_makes(tmp_path):
    """A bad definition in params.yaml surfaced only on the day someone ran that variant."""
    import yaml

    from orchestration.driver import check_settings
    from orchestration.resources import PROJECT_ROOT, NetworksResource, StorageResource

    raw = yaml.safe_load((PROJECT_ROOT / "params.yaml").read_text())
    storage = StorageResource(root=str(tmp_path / "store"), input_dir=str(tmp_path / "faces"))
    for variants, error in (({"keep": {"margin": 0.9}, "m0.9": {"margin": 0.1}}, "'m0.9' is a name made of values"),
                            ({"keep": {"margin": 0.9}, "odd": {"pool_size": 3}}, "odd: unknown key"),
                            (["keep"], "'variants:' must be a mapping")):
        (tmp_path / "params.yaml").write_text(yaml.safe_dump({**raw, "variants": variants}))
        networks = NetworksResource(params_path=str(tmp_path / "params.yaml"))
        with pytest.raises(ParamsError, match=error):
            check_settings(storage, networks, ["default"])
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({**raw, "variants": {"keep": {"layer_stop": 50}}}))
    from anon_core.errors import FalcoError

    with pytest.raises(FalcoError, match=r"layer_stop = 50 exceeds the \d+ W\+ layers of profile '\w+'; lower it in "
                                         r".*params.yaml, variants: keep$"):  # before: inside the variant's run
        check_settings(storage, NetworksResource(params_path=str(tmp_path / "params.yaml")), ["default"])
    # a value out of range names the variant and the file, not "overrides (command line, variant or run config)"
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({**raw, "variants": {"keep": {"margin": float("nan")}}}))
    with pytest.raises(ParamsError, match=r"params.yaml: variants: keep: margin nan: must be in \[0, 1\]"):
        check_settings(storage, NetworksResource(params_path=str(tmp_path / "params.yaml")), ["default"])
    # a value of the wrong type too (it named "overrides:"), and a bad `sweep:` names the file
    for variants, sweep, error in (({"keep": {"margin": "abc"}}, {}, r"params.yaml: variants: keep: margin 'abc': is "
                                    "not a valid float$"),
                                   ({"keep": {"milestones": 0.5}}, {}, r"params.yaml: variants: keep: milestones 0.5: "),
                                   ({}, {"margins": [0.5]}, r"params.yaml: sweep: cannot sweep margins"),
                                   ({}, {"margin": ["half"]}, r"params.yaml: sweep: margin: 'half' is not a number")):
        (tmp_path / "params.yaml").write_text(yaml.safe_dump({**raw, "variants": variants, "sweep": sweep}))
        networks = NetworksResource(params_path=str(tmp_path / "params.yaml"))
        with pytest.raises(ParamsError, match=error):
            check_settings(storage, networks, networks.sweep())
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({**raw, "variants": {"keep": {"margin": 0.9}}}))
    check_settings(storage, NetworksResource(params_path=str(tmp_path / "params.yaml")), ["default"])
    # a value of a name made of values names where that name came from: the file's `sweep:`, or the command line
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({**raw, "sweep": {"margin": [-0.5]}}))
    networks = NetworksResource(params_path=str(tmp_path / "params.yaml"))
    with pytest.raises(ParamsError, match=r"params.yaml: sweep: margin -0.5: must be in \[0, 1\]"):
        check_settings(storage, networks, networks.sweep())
    networks = NetworksResource(params_path=str(tmp_path / "params.yaml"), sweep_variants=["m1.5"])
    with pytest.raises(ParamsError, match=r"^--margin 1.5: must be in \[0, 1\]"):
        check_settings(storage, networks, networks.sweep())


def test_a_variant_of_another_params_file_is_left_out_with_how_to_run_or_drop_it(tmp_path):
    """A run with `--params mine.yaml --variant half` leaves the partition `half` in the instance; later runs with
    params.yaml cannot resolve it. Before, the warning gave the resolution error alone, on every run."""
    import dagster as dg
    import yaml

    from anon_core.params import DEFAULT_PARAMS_PATH
    from orchestration.graph import build_definitions
    from orchestration.partitions import variants
    from orchestration.resources import NetworksResource, StorageResource
    from orchestration.tracking import MlflowResource

    mine = tmp_path / "mine.yaml"
    raw = yaml.safe_load(DEFAULT_PARAMS_PATH.read_text())
    raw["variants"] = {**(raw.get("variants") or {}), "half": {"margin": 0.5}}
    mine.write_text(yaml.safe_dump(raw))
    instance = dg.DagsterInstance.ephemeral()
    instance.add_dynamic_partitions(variants.name, ["default", "half"])

    def observe(params_path):
        defs = build_definitions(StorageResource(root=str(tmp_path / "store"), input_dir=str(tmp_path)),
                                 NetworksResource(params_path=params_path),
                                 MlflowResource(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}"))
        result = defs.resolve_job_def("observe_settings").execute_in_process(instance=instance)
        assert result.success
        warned = [e.message for e in instance.all_logs(result.run_id) if e.level == 30 and "variant" in e.message]
        observed = instance.fetch_observations(dg.AssetKey("variant_settings"), limit=10).records
        return warned, {r.partition_key for r in observed if r.run_id == result.run_id}

    warned, observed = observe(str(mine))  # the file that defines it: both observed, no warning
    assert warned == [] and observed == {"default", "half"}
    warned, observed = observe(None)  # params.yaml
    assert observed == {"default"}
    assert len(warned) == 1 and warned[0].startswith("variant half is left out (it cannot run with these settings): "
                                                     "variant 'half' is not defined under `variants:`")
    assert warned[0].endswith("run it with the params file that defines it (--params FILE), or drop it by deleting "
                              "the partition half of `variants` (Dagster UI: an asset's Partitions tab, Delete "
                              "partitions)")


def test_an_empty_item_gets_an_example_of_its_kind(capsys):
    """`--variant ,` was told of numbers and a negative first margin."""
    import pytest

    from orchestration.cli import build_parser

    for flag, example in (("--variant", "names, e.g. default,m0.5\n"),
                          ("--margin", "values, e.g. 0,0.5,0.9 (a negative first value as --margin=-0.5,...)\n")):
        with pytest.raises(SystemExit):
            build_parser().parse_args(["pipeline", flag, "m0.5,"])
        assert capsys.readouterr().err.endswith(f"'m0.5,' has an empty item; give comma-separated {example}")


def test_a_whole_number_is_read_the_same_from_a_flag_and_from_params_yaml(capsys):
    """`steps: 20.0` in params.yaml (and in a variant) ran 20 steps while `--steps 20.0` was refused."""
    from orchestration.cli import build_parser
    from orchestration.cli_pipeline import resources_from_args

    assert sweep_variants({"steps": [20.0, 10]}) == ["steps20", "steps10"]  # params.yaml's sweep:
    args = build_parser().parse_args(["pipeline", "--steps", "20.0,1e1"])
    assert resources_from_args(args)[2] == ["steps20", "steps10"]
    assert build_parser().parse_args(["pipeline", "--pool-size", "64.0", "--seed", "3"]).pool_size == 64
    assert build_parser().parse_args(["anonymize", "in", "out", "--steps", "20.0"]).steps == 20
    for argv, said in ((["pipeline", "--steps", "20,20.5"], "argument --steps: '20,20.5': '20.5' is not a whole number"),
                       (["anonymize", "in", "out", "--steps", "nan"], "argument --steps: 'nan' is not a finite number"),
                       (["anonymize", "in", "out", "--seed", "x"], "argument --seed: 'x' is not a whole number"),
                       # Python's int() reads Arabic-Indic digits, params.yaml's YAML does not
                       (["anonymize", "in", "out", "--steps", "\u0662\u0660"], "'\u0662\u0660' is not a whole number"),
                       (["pipeline", "--margin", "0.5,\u0661"], "'\u0661' is not a number"),
                       (["sample-data", "out", "--size", "\u0666\u0664"], "'\u0666\u0664' is not a whole number"),
                       (["worker", "--concurrency", "\u0662"], "'\u0662' is not a whole number")):
        with pytest.raises(SystemExit):
            build_parser().parse_args(argv)
        assert capsys.readouterr().err.splitlines()[-1].endswith(said)


def test_a_variant_name_yaml_reads_as_a_value_is_told_to_be_quoted():
    """hE: `variants: {off: ...}` (YAML's False) gave "variant name False must be 1-64 letters" or, with --variant
    off, "variant 'off' is not defined", though it visibly was; `sweep: {variants: [yes]}` ran a variant 'True'."""
    import yaml

    from anon_core.variants import sweep_variants

    defined = yaml.safe_load("off: {margin: 0.9}\n1: {steps: 3}\n")
    for name in ("off", "1", "default"):
        with pytest.raises(ParamsError, match=r"params.yaml: variants: the variant name (False|1) is not text: YAML "
                                              r"reads an unquoted yes/no/on/off.*quote the name"):
            variant_overrides(name, defined)
    with pytest.raises(ParamsError, match=r"^sweep: variants: the variant name True is not text"):
        sweep_variants(yaml.safe_load("variants: [default, yes]"))
    for bare in ("off", "no", "0"):  # one name, not a list (hG: `or []` ran default without a word)
        with pytest.raises(ParamsError, match="is not text"):
            sweep_variants(yaml.safe_load(f"variants: {bare}"))
    assert sweep_variants(yaml.safe_load("variants: []")) == ["default"]
    assert variant_overrides("off", yaml.safe_load('"off": {margin: 0.9}')) == {"optimization.margin": 0.9}
