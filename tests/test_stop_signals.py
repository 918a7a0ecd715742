"""A stop signal whose handler's exception Python drops (raised inside a garbage-collection or weakref callback, as
SQLAlchemy's inside MLflow calls) still stops the command: the CI once saw a SIGTERMed pipeline run to its end."""

import signal
import subprocess
import sys
import textwrap

import pytest

SCRIPT = textwrap.dedent("""
    import contextlib, signal, sys, time, weakref
    from orchestration.cli import stop_signals

    class Session:
        pass

    dagster = sys.argv[1] == "dagster"
    with stop_signals() as stopped_by:
        if dagster:
            from dagster._core.errors import DagsterExecutionInterruptedError
            from dagster._utils.interrupts import raise_interrupts_as
            handlers = raise_interrupts_as(DagsterExecutionInterruptedError)
        else:
            handlers = contextlib.nullcontext()
        try:
            with handlers:
                session = Session()
                collected = weakref.ref(session, lambda ref: signal.raise_signal(signal.SIG{name}))
                del session  # its callback gets the signal; the handler's exception is dropped there
                started = time.monotonic()
                while time.monotonic() - started < 10:
                    pass
            print("ran to the end")
        except BaseException as error:
            print(type(error).__name__, stopped_by(), "after", round(time.monotonic() - started, 3), "s")
""")


@pytest.mark.parametrize("handler", ["falco", "dagster"])
@pytest.mark.parametrize("name", ["TERM", "INT"])
def test_a_stop_signal_dropped_in_a_callback_still_stops_the_command(handler, name):
    done = subprocess.run([sys.executable, "-c", SCRIPT.replace("{name}", name), handler], capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    expected = "KeyboardInterrupt" if handler == "falco" else "DagsterExecutionInterruptedError"
    words = done.stdout.split()
    assert words[:2] == [expected, "SIGTERM" if name == "TERM" else "Ctrl-C"], done.stdout + done.stderr
    assert float(words[3]) < 2, done.stdout  # within moments, not once the work is over
    assert "Exception ignored" not in done.stderr  # the dropped one is not printed as a traceback


@pytest.mark.parametrize("command, again", [("evaluate", "to evaluate again (it leaves nothing half-written; "
                                                         "what it finished reading is not read again)"),
                                            ("anonymize", "to resume where it stopped")])
def test_a_stopped_command_says_whether_running_it_again_resumes(tmp_path, monkeypatch, capsys, command, again):
    """`falco evaluate` stopped by Ctrl-C said "run the same command again to resume where it stopped"; it starts
    over. Here the stop lands in the command's work (its function raises what Ctrl-C raises)."""
    import orchestration.cli as cli
    import orchestration.cli_evaluate as cli_evaluate

    def stopped(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli_evaluate, "_evaluate", stopped)
    monkeypatch.setattr(cli, "_run_anonymize", stopped)
    (tmp_path / "in").mkdir()
    args = {"evaluate": ["evaluate", str(tmp_path / "in"), str(tmp_path / "run"), "--out", str(tmp_path / "r")],
            "anonymize": ["anonymize", str(tmp_path / "in"), str(tmp_path / "out")]}[command]
    assert cli.main(args) == 130
    assert capsys.readouterr().err.endswith(f"falco: stopped (Ctrl-C); run the same command again {again}\n")
    # a stage of `dvc repro` (DVC sets DVC_STAGE for its commands): the command to run again is DVC's
    monkeypatch.setenv("DVC_STAGE", "anonymize")
    assert cli.main(args) == 130
    assert capsys.readouterr().err.endswith(f"falco: stopped (Ctrl-C); run `dvc repro` again {again}\n")


BACKGROUND = textwrap.dedent("""
    import os, signal, time
    from dagster._core.errors import DagsterExecutionInterruptedError
    from dagster._utils.interrupts import raise_interrupts_as
    from orchestration import stop_request
    from orchestration.cli import stop_signals

    with stop_signals() as stopped_by:
        os.kill(os.getpid(), signal.SIGINT)  # ignored: falco goes on
        time.sleep(0.2)
        print("went on")
        try:
            with raise_interrupts_as(DagsterExecutionInterruptedError):  # as Dagster runs a job
                os.kill(os.getpid(), signal.SIGINT)
                time.sleep(5)
        except DagsterExecutionInterruptedError:
            print("stopped by", stopped_by(), "requested", stop_request.requested())
""")


def test_a_background_jobs_sigint_that_dagster_stops_a_run_on_is_a_stop_not_a_failure():
    """A script's background job starts with SIGINT ignored, and falco leaves it so; but Dagster puts its own handler
    on SIGINT while it runs a job (and its step processes take one too), so a Ctrl-C meant for the script's
    foreground stopped the run. The driver asked whether a stop was requested, heard no, and reported the run FAILED
    (exit 1, ChildProcessCrashException, the MLflow run FAILED) instead of stopped (130, KILLED)."""
    import signal

    done = subprocess.run([sys.executable, "-c", BACKGROUND], capture_output=True, text=True, timeout=60,
                          preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["went on", "stopped by Ctrl-C requested True"], done.stdout + done.stderr


LOST_BETWEEN_STEPS = textwrap.dedent("""
    import os, signal, sys, time
    from dagster._utils.interrupts import capture_interrupts
    import orchestration.driver as driver
    from orchestration.cli import main

    real = driver.execute

    def execute_and_stop(launch, *args):
        result = real(launch, *args)
        with capture_interrupts():  # where Dagster only notes a stop, to raise it at the next step (none here)
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(0.2)
        print("ran", launch.job, flush=True)
        return result

    driver.execute = execute_and_stop
    print("exit", main(sys.argv[1:]))
""")


def test_a_stop_that_dagster_notes_between_steps_and_forgets_stops_the_pipeline(tmp_path):
    """`timeout 15 falco pipeline` once ran to its end: the SIGTERM came while Dagster ran a job but outside a step,
    where Dagster's handler only notes it (to raise it at the next step) and forgets it when the run ends first. The
    driver now stops after that run, as for a stop that failed a run."""
    import os

    import numpy as np
    from PIL import Image

    (tmp_path / "in").mkdir()
    Image.fromarray(np.full((64, 64, 3), 128, np.uint8)).save(tmp_path / "in" / "a.png")
    env = {**os.environ, "DAGSTER_HOME": str(tmp_path / "home"), "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path}/m.db"}
    done = subprocess.run([sys.executable, "-c", LOST_BETWEEN_STEPS, "pipeline", "--input", str(tmp_path / "in"),
                           "--storage", str(tmp_path / "store"), "--log-level", "ERROR"],
                          capture_output=True, text=True, timeout=300, env=env)
    assert done.stdout.splitlines()[-2:] == ["ran observe_settings", "exit 143"], done.stdout + done.stderr
    assert done.stderr.endswith("falco: stopped (SIGTERM); run the same command again to resume where it stopped\n")


LOGGED_INTERRUPT = textwrap.dedent("""
    import logging, sys
    from orchestration.cli import stop_signals

    with stop_signals():
        try:
            raise KeyboardInterrupt
        except KeyboardInterrupt:  # as SQLAlchemy's pool does when a stop lands while it closes a connection
            logging.getLogger("sqlalchemy.pool.impl.QueuePool").error("Exception closing connection", exc_info=True)
        try:
            raise OSError("disk gone")
        except OSError:
            logging.getLogger("sqlalchemy.pool.impl.QueuePool").error("Exception closing connection", exc_info=True)
""")


def test_a_librarys_log_of_the_stop_is_not_a_traceback_but_other_errors_still_are():
    """`timeout 14 falco pipeline` printed SQLAlchemy's "Exception closing connection" with a 10-line traceback of
    DagsterExecutionInterruptedError before falco's own line."""
    done = subprocess.run([sys.executable, "-c", LOGGED_INTERRUPT], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "KeyboardInterrupt" not in done.stderr and done.stderr.count("Exception closing connection") == 1
    assert "OSError: disk gone" in done.stderr


SUBREAPER = textwrap.dedent("""
    import ctypes, os, signal, subprocess, sys

    ctypes.CDLL(None, use_errno=True).prctl(36, 1)  # PR_SET_CHILD_SUBREAPER: orphans below come here, not to init
    read, write = os.pipe()
    middle = subprocess.Popen([sys.executable, "-c", sys.argv[1], str(write)], pass_fds=(write,))
    os.close(write)
    pid = int(os.read(read, 32))  # the stage's pid, once it noted its parent and ended it
    middle.wait()
    _, status = os.waitpid(pid, 0)  # adopted: this process reaps it
    print(os.waitstatus_to_exitcode(status))
""")

MIDDLE = textwrap.dedent("""
    import subprocess, sys

    subprocess.Popen([sys.executable, "-c", sys.argv[2], sys.argv[1]], pass_fds=(int(sys.argv[1]),)).wait()
""")

STAGE = textwrap.dedent("""
    import os, signal, sys, time

    from orchestration.cli import STARTED_BY  # noted while its parent lives
    from orchestration.driver import end_with_parent

    os.kill(STARTED_BY, signal.SIGKILL)  # the parent (dvc) ends before the stage watches for it
    while os.getppid() == STARTED_BY:
        time.sleep(0.01)
    os.write(int(sys.argv[1]), str(os.getpid()).encode())
    end_with_parent(signal.SIGTERM, STARTED_BY)
    time.sleep(30)  # the stage's work, going on without dvc
    sys.exit(0)
""")


def test_a_stage_whose_parent_ended_first_stops_under_a_subreaper_too():
    """`falco stage` under DVC took "my parent ended" for "init adopted me": under a subreaper (a container's init,
    systemd --user) an orphan is adopted by it instead, and a stage whose `dvc repro` died in its first seconds ran
    on (hG). It compares its parent with the one it noted at start."""
    middle = MIDDLE.replace("sys.argv[2]", repr(STAGE))
    code = subprocess.run([sys.executable, "-c", SUBREAPER, middle], capture_output=True, text=True, timeout=60)
    assert code.stdout.strip() == str(-signal.SIGTERM), code.stdout + code.stderr
