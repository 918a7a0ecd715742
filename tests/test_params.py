import re

import pytest

from anon_core.errors import ParamsError
from anon_core.params import DEFAULT_PARAMS_PATH, load_params


def test_paper_defaults_come_from_params_yaml():
    p = load_params("ffhq1024")
    o = p.optimization
    assert (o.margin, o.lambda_id, o.lambda_attr, o.lr, o.steps, o.gamma) == (0.0, 10.0, 0.1, 0.01, 50, 0.8)
    assert (o.layer_start, o.layer_stop) == (3, 8)
    assert o.milestone_steps() == [38, 45]  # 0.75 and 0.9 of 50 steps
    assert p.truncation_psi == 0.7 and p.pool_size == 60000


def test_profile_entry_then_overrides_win():
    p = load_params("tiny", pool_size=None, **{"optimization.steps": 7, "seed": 3})
    assert p.pool_size == 1000  # from profiles.tiny, the None override falls through
    assert p.optimization.steps == 7 and p.seed == 3
    assert p.optimization.lambda_id == 10.0  # from defaults


def test_unknown_profile_and_keys_are_named(tmp_path):
    with pytest.raises(ParamsError, match="profile 'nope'"):
        load_params("nope")
    bad = tmp_path / "params.yaml"
    bad.write_text(DEFAULT_PARAMS_PATH.read_text().replace("  seed: 0", "  sead: 0"))
    with pytest.raises(ParamsError, match="sead"):
        load_params("tiny", bad)


def test_invalid_values_are_refused():
    with pytest.raises(ParamsError, match="batch_size"):
        load_params("tiny", batch_size=0)
    with pytest.raises(ParamsError, match="layer_start"):
        load_params("tiny", **{"optimization.layer_start": 8})
    with pytest.raises(ParamsError, match="steps"):
        load_params("tiny", **{"optimization.steps": "many"})


def test_an_empty_setting_is_named_not_read_as_the_word_none(tmp_path):
    text = DEFAULT_PARAMS_PATH.read_text()
    for line, name in (("  resize_form: auto", "speed.resize_form"), ("  seed: 0", "seed")):
        assert line in text, line
        bad = tmp_path / f"{name}.yaml"
        bad.write_text(text.replace(line, line.split(":")[0] + ":", 1))
        with pytest.raises(ParamsError, match=rf"{bad}: {name} is empty \(null\); give it a value") as err:
            load_params("tiny", bad)
        assert "None" not in str(err.value)


def test_replace_and_round_trip():
    p = load_params("tiny")
    q = p.replace(**{"optimization.margin": 0.5})
    assert q.optimization.margin == 0.5 and p.optimization.margin == 0.0
    assert q.replace(**q.to_dict()) == q


def test_the_pools_of_two_seeds_share_no_fake():
    """With fake i drawn from seed + i, seeds 0 and 1 shared all fakes but one: a sweep over seeds measured no
    variance. Seed 0's pool is what it was; torch keeps 32 bits of a seed, so the seeds stop where they would wrap."""
    import torch

    from anon_core.fake_pool import SEED_STRIDE, pool_seeds, sample_z

    assert torch.equal(sample_z([2**32], 8), sample_z([0], 8))  # why: torch's CPU generator, 32-bit seeds
    assert pool_seeds(0, 5).tolist() == [0, 1, 2, 3, 4]
    last = load_params("tiny", seed=4095).seed
    pools = [sample_z(pool_seeds(seed, 300), 16) for seed in (0, 1, 2, last)]
    rows = torch.cat(pools)
    assert len(torch.unique(rows, dim=0)) == len(rows)  # no z twice, within or across pools
    assert pool_seeds(last, SEED_STRIDE)[-1] == 2**32 - 1  # the last fake of the largest disjoint pool: no wrap
    with pytest.raises(ParamsError, match=r"seed = 4096 must be in \[0, 4096\)"):
        load_params("tiny", seed=4096)
    with pytest.raises(ParamsError, match=r"--seed 4096: must be"):
        load_params("tiny", sources={"seed": "--seed"}, seed=4096)


def test_the_privacy_bound_is_a_share_and_a_percent_gets_the_value_to_write():
    from anon_core.params import privacy_bound

    assert [privacy_bound({"privacy_max_match_share": v}, "p.yaml") for v in (0, 0.05, 1)] == [0.0, 0.05, 1.0]
    with pytest.raises(ParamsError, match=r"p.yaml: checks.privacy_max_match_share = 5 must be a share between 0 "
                                          r"and 1 .*; for 5% write 0.05"):
        privacy_bound({"privacy_max_match_share": 5}, "p.yaml")  # would let 500% through: any run passes
    for bad in (-0.1, 1.5, float("nan"), "5%", True):
        with pytest.raises(ParamsError, match="must be a share between 0 and 1"):
            privacy_bound({"privacy_max_match_share": bad}, "p.yaml")
    with pytest.raises(ParamsError, match="p.yaml: checks.privacy_max_match_share is missing"):
        privacy_bound({}, "p.yaml")
    with pytest.raises(ParamsError, match=r"p.yaml: checks.privacy_max_match_share is empty \(null\); give it a value"):
        privacy_bound({"privacy_max_match_share": None}, "p.yaml")
    # YAML 1.1 reads 1e-4 (no dot) as text; the method's settings take it as the number, so does the bound
    assert privacy_bound({"privacy_max_match_share": "1e-4"}, "p.yaml") == 1e-4


def test_a_bad_privacy_bound_in_any_profile_is_refused_by_every_run(tmp_path):
    """A bound of 5 (meant as 5 %) under `checks: profiles: ffhq1024:` let every tiny run go, and failed only the
    first run of ffhq1024; as with the method's settings, every profile's value is checked on every read."""
    from anon_core.params import load_section

    path = _edited(tmp_path, "bound", lambda d: d["checks"].update(profiles={"ffhq1024": {"privacy_max_match_share": 5}}))
    expected = rf"^{path} \(profile ffhq1024\): checks.privacy_max_match_share = 5 must be a share between 0 and 1"
    with pytest.raises(ParamsError, match=expected):
        load_params("tiny", path)
    with pytest.raises(ParamsError, match=expected):
        load_section("data", "tiny", path)
    fine = _edited(tmp_path, "fine", lambda d: d["checks"].update(profiles={"tiny": {"privacy_max_match_share": 0.2}}))
    assert load_section("checks", "tiny", fine)["privacy_max_match_share"] == 0.2


def _edited(tmp_path, name: str, edit) -> "Path":
    import yaml

    data = yaml.safe_load(DEFAULT_PARAMS_PATH.read_text())
    edit(data)
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_a_bad_value_is_refused_also_where_the_profile_run_replaces_it(tmp_path):
    """tiny replaces the learning rate and the pool size, so a broken `defaults:` value passed every tiny run and
    failed only in the first run of a real profile."""
    lr = _edited(tmp_path, "lr", lambda d: d["defaults"]["optimization"].update(lr="abc"))
    with pytest.raises(ParamsError, match=rf"^{lr} \(profile ffhq1024\): optimization.lr = 'abc' is not a valid float$"):
        load_params("tiny", lr)
    pool = _edited(tmp_path, "pool", lambda d: d["defaults"].update(pool_size=10.5))
    with pytest.raises(ParamsError, match=r"\(profile ffhq1024\): pool_size = 10.5 is not a valid int"):
        load_params("tiny", pool, pool_size=5)  # a flag replacing it too
    broken = _edited(tmp_path, "ffhq512", lambda d: d["profiles"]["ffhq512"].update(seed=-3))
    with pytest.raises(ParamsError, match=r"\(profile ffhq512\): invalid parameters: seed = -3 must be"):
        load_params("ffhq1024", broken)
    assert load_params("tiny").optimization.lr == 0.05  # the project's file passes for every profile
    # an empty value under a profile is named there, not as if `defaults:` lacked it
    empty = _edited(tmp_path, "empty", lambda d: d["profiles"]["ffhq512"].setdefault("optimization", {}).update(lr=None))
    with pytest.raises(ParamsError, match=rf"^{empty}: profiles: ffhq512: optimization.lr is empty \(null\); give "):
        load_params("tiny", empty)
    misspelt = _edited(tmp_path, "misspelt", lambda d: d["profiles"]["tiny"].update(pool_sise=None))
    with pytest.raises(ParamsError, match=r"unknown parameter\(s\) pool_sise"):  # (hJ: it was "is empty")
        load_params("tiny", misspelt)
    # a count in YAML's exponent form, `pool_size: 1e3` (text to YAML 1.1), is its number, as `--steps 1e1` is
    thousand = _edited(tmp_path, "thousand", lambda d: d["profiles"]["tiny"].update(pool_size="1e3"))
    assert load_params("tiny", thousand).pool_size == 1000


@pytest.mark.parametrize("edit, message", [
    (lambda d: d.update(optimisation={"steps": 3}), "'optimisation' is not a section: the method's settings "
                                                    "(optimization) go under 'defaults:' or 'profiles: <name>:'"),
    (lambda d: d.update(steps=3), "'steps' is not a section: the method's settings (optimization.steps) go under"),
    (lambda d: d.update(chekcs={"privacy_max_match_share": 0.1}), "'chekcs' is not a section (did you mean checks?)"),
    (lambda d: d["pipeline"].update(shard_sise=4), "pipeline.shard_sise is not a setting (did you mean shard_size?) "
                                                   "(known: shard_size, executor, max_concurrent)"),
    (lambda d: d["pipeline"]["profiles"]["tiny"].update(executr="celery"), "pipeline.executr is not a setting (did "
                                                                           "you mean executor?)"),
    (lambda d: d["data"].update(labels="x.csv"), "data.labels is not a setting (did you mean labels_csv?)"),
    (lambda d: d["evaluation"].update(show_real=True), "evaluation.show_real is not a setting"),
    (lambda d: d.update(pipeline=[1, 2]), "'pipeline:' must be a mapping of settings"),
])
def test_a_misspelt_section_or_setting_is_refused_not_ignored(tmp_path, edit, message):
    """YAML hands a misspelt key to no reader: the setting meant kept its default without a word, whichever
    command read the file."""
    from anon_core.params import load_section

    path = _edited(tmp_path, "typo", edit)
    for read in (lambda: load_params("tiny", path), lambda: load_section("photo", "tiny", path)):
        with pytest.raises(ParamsError, match="^" + re.escape(f"{path}: {message}")):
            read()


@pytest.mark.parametrize("edit, message", [
    (lambda d: d["pipeline"].update(shard_size=0),
     r"\(profile ffhq1024\): pipeline.shard_size = 0 must be a whole number of images >= 1"),  # tiny sets its own
    (lambda d: d["pipeline"].update(max_concurrent=0),
     r"\(profile tiny\): pipeline.max_concurrent = 0 must be a whole number of steps at a time >= 1"),
    (lambda d: d["pipeline"].update(executor="threads"),
     r"\(profile ffhq1024\): pipeline.executor = 'threads' must be one of multiprocess, in_process, celery"),
    (lambda d: d["attribute_classifier"].update(epochs=0), r"\(profile ffhq1024\): attribute_classifier: epochs = 0"),
    (lambda d: d["photo"].update(cover="black"), r"\(profile tiny\): photo.cover = 'black' must be one of"),
    # text, which `bool` read as true: the report and the grids showed the real faces
    (lambda d: d["evaluation"].update(show_real_faces="flase"),
     r"\(profile tiny\): evaluation.show_real_faces = 'flase' is not a valid bool"),
    (lambda d: d["evaluation"].update(baselines=["blurr"]), r"\(profile tiny\): evaluation.baselines = \['blurr'\]"),
    (lambda d: d["photo"].update(profiles={"ffhq1024": {"turns": "sometimes"}}),
     r"\(profile ffhq1024\): photo.turns = 'sometimes' must be one of"),
    # `falco anonymize` ran with it; the pipeline refused it
    (lambda d: d.update(variants={"keep": None}), r"\(profile tiny\): variants: keep sets nothing"),
])
def test_every_section_of_every_profile_is_checked_by_any_command_before_any_work(tmp_path, capsys, edit, message):
    """A `tiny` run passed with `pipeline.shard_size: 0` (tiny sets its own), `max_concurrent: 0` (then no limit),
    `attribute_classifier.epochs: 0`, and `falco anonymize` in aligned mode with any `photo:` value; each failed only
    in the command or profile that reads it. Now `falco anonymize` (either mode) and `falco pipeline` refuse them in
    one line, naming the file and the profile, before writing anything."""
    from orchestration.cli import main

    params = _edited(tmp_path, "bad", edit)
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.png").write_bytes(b"not read")
    for command in (["anonymize", str(tmp_path / "in"), str(tmp_path / "out")],
                    ["anonymize", str(tmp_path / "in"), str(tmp_path / "out"), "--mode", "photo"],
                    ["pipeline", "--input", str(tmp_path / "in"), "--storage", str(tmp_path / "store")]):
        assert main([*command, "--profile", "tiny", "--params", str(params)]) == 2
        # the command's own profile is named, or (read with the command's flags) the file alone
        own = message.replace(r"\(profile tiny\)", r"(?:\(profile tiny\))?")
        assert re.search(rf"^falco: error: {re.escape(str(params))} ?{own}", capsys.readouterr().err, re.M)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.yaml", "in"]


def test_the_executor_of_the_environment_is_named_when_it_is_wrong(tmp_path, capsys, monkeypatch):
    """`FALCO_EXECUTOR=threads falco pipeline` made the storage and the Dagster home, then blamed params.yaml's
    `pipeline.executor`."""
    from orchestration.cli import main

    monkeypatch.setenv("FALCO_EXECUTOR", "threads")
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "home"))
    (tmp_path / "in").mkdir()
    assert main(["pipeline", "--input", str(tmp_path / "in"), "--storage", str(tmp_path / "store")]) == 2
    assert capsys.readouterr().err == ("falco: error: FALCO_EXECUTOR 'threads': must be one of multiprocess, "
                                       "in_process, celery\n")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in"]


def test_milestones_in_any_order_are_one_setting(tmp_path):
    """MultiStepLR's schedule does not depend on the order of its milestones: [0.9, 0.75] is the paper's [0.75, 0.9],
    the same params (so the same stored outputs and one variant in a report), not a different run."""
    given = load_params("tiny", **{"optimization.milestones": [0.9, 0.75]})
    paper = load_params("tiny", **{"optimization.milestones": [0.75, 0.9]})
    assert given == paper and given.to_dict() == paper.to_dict()
    assert given.optimization.milestone_steps() == [38, 45]  # of 50 steps


@pytest.mark.parametrize("key", ["optimization.lr", "inversion.lr"])
def test_a_learning_rate_float32_cannot_hold_is_refused_by_name(key):
    """Adam computes in float32: lr 1e300 stopped the first step with torch's `value cannot be converted to type
    float without overflow`, deep in its update; it is refused with the parameters instead."""
    with pytest.raises(ParamsError, match=rf"{key} = 1e\+300 must be a finite number > 0 that float32 holds"):
        load_params("tiny", **{key: 1e300})
    assert getattr(load_params("tiny", **{key: 3e38}), key.split(".")[0]).lr == 3e38


def test_a_params_file_is_read_as_it_is_now_and_its_sections_are_the_callers_own(tmp_path):
    """One process reads params.yaml many times (parsed once per text): an edit between two reads is seen, and a
    section a caller changes is not what the next read gives."""
    from anon_core.params import load_section

    path = tmp_path / "params.yaml"
    text = DEFAULT_PARAMS_PATH.read_text()
    path.write_text(text)
    load_section("sweep", "tiny", path)["variants"].append("m0.9")  # a nested value, changed in place
    load_section("photo", "tiny", path)["min_face_size"] = -1
    assert load_section("sweep", "tiny", path) == load_section("sweep", "tiny", DEFAULT_PARAMS_PATH) == \
        {"variants": ["default"]}
    assert load_section("photo", "tiny", path)["min_face_size"] == 16
    path.write_text(text.replace("min_face_size: 16", "min_face_size: 24", 1))
    assert load_section("photo", "tiny", path)["min_face_size"] == 24
    assert load_params("tiny", path).optimization.margin == load_params("tiny").optimization.margin
