"""A stop signal whose handler's exception Python drops (raised inside a garbage-collection or weakref callback, as
SQLAlchemy's inside MLflow calls) still stops the command: the CI once saw a SIGTERMed pipeline run to its end."""

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


@pytest.mark.parametrize("command, again", [("evaluate", "to start it over (it leaves nothing half-written)"),
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
