"""The jobs' console logger (orchestration.console_log) on real Dagster runs: a step failed by a blocking asset check
is one WARNING line naming the check, not two ERROR blocks with stack traces; any other failure keeps its ERROR
lines, without the trace below DEBUG."""

import dagster as dg

from orchestration.console_log import console_logger


@dg.asset
def upstream() -> int:
    return 1


@dg.asset_check(asset=upstream, blocking=True)
def privacy_like(upstream: int) -> dg.AssetCheckResult:
    return dg.AssetCheckResult(passed=False, severity=dg.AssetCheckSeverity.ERROR)


@dg.asset
def broken() -> int:
    raise ValueError("a real bug")


def _console(capfd, *assets, checks=()) -> str:
    defs = dg.Definitions(assets=list(assets), asset_checks=list(checks), loggers={"console": console_logger},
                          jobs=[dg.define_asset_job("job", selection=list(assets))])
    result = defs.resolve_job_def("job").execute_in_process(
        instance=dg.DagsterInstance.ephemeral(), raise_on_error=False,
        run_config={"loggers": {"console": {"config": {"log_level": "INFO"}}}})
    assert not result.success
    return capfd.readouterr().err


def test_a_failed_blocking_check_is_one_warning_line(capfd):
    """A sweep's m0.9 fails the privacy check on purpose: before, every shard printed STEP_FAILURE and RUN_FAILURE
    as ERROR blocks with DagsterAssetCheckFailedError, which read as a crash."""
    err = _console(capfd, upstream, checks=[privacy_like])
    failures = [line for line in err.splitlines() if "STEP_FAILURE" in line]
    assert len(failures) == 1 and " - WARNING - " in failures[0]
    assert failures[0].endswith('failed: a blocking asset check did not pass (upstream: privacy_like); the check\'s '
                                "verdict, not a crash (`falco pipeline` names the failed shards at the end)")
    assert "RUN_FAILURE" not in err and "DagsterAssetCheckFailedError" not in err and "Stack Trace" not in err


def test_any_other_failure_stays_an_error_without_its_trace(capfd):
    err = _console(capfd, broken)
    assert any(" - ERROR - " in line and "STEP_FAILURE" in line for line in err.splitlines())
    assert "RUN_FAILURE" in err and "ValueError: a real bug" in err
    assert "(stack trace: the run's page in the Dagster UI, or --log-level DEBUG)" in err and "Stack Trace:" not in err
