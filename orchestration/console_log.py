"""The console logger of every job: Dagster's colored console logger, with a failed step's stack trace left out
below DEBUG. The failure's own message (a FalcoError names the file and the fix) stays, `falco pipeline` repeats
it as one line at the end, and the full trace is in the run's page in the UI or with `--log-level DEBUG`. A step
interrupted by Ctrl-C or SIGTERM logs nothing there: falco's one line says the run was stopped, and by what. A step
failed by a blocking asset check (the privacy check) is one WARNING line naming the check, and its run's failure,
which repeats it, is left out."""

import logging

import dagster as dg

_TRACE = "\n\nStack Trace:"
_HINT = "\n(stack trace: the run's page in the Dagster UI, or --log-level DEBUG)"
_INTERRUPTED = "DagsterExecutionInterruptedError"  # a step stopped by a signal
_CHECK_FAILED = "\n\ndagster._core.errors.DagsterAssetCheckFailedError"  # a blocking asset check said no
_RUN_FAILED = "Execution of run for"


class _WithoutStackTraces(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        text = record.getMessage()
        if _INTERRUPTED in text:
            return False
        if _CHECK_FAILED in text:  # the check did its job (a sweep fails some on purpose): one line, not two traces
            if _RUN_FAILED in text:  # the run's failure repeats the step's; `falco pipeline` names it at the end
                return False
            step, error = text.split(_CHECK_FAILED, 1)
            checks = ", ".join(error.split(_TRACE, 1)[0].strip().splitlines()[1:])  # "<asset>: <check>" per line
            record.msg, record.args = (f"{step.rstrip('.')}: a blocking asset check did not pass ({checks}); the "
                                       "check's verdict, not a crash (`falco pipeline` names the failed shards at the "
                                       "end)"), ()
            record.levelno, record.levelname = logging.WARNING, "WARNING"
            return True
        cut = text.find(_TRACE)
        if cut >= 0:
            record.msg, record.args = text[:cut] + _HINT, ()
        return True


@dg.logger(dg.colored_console_logger.config_schema,
           description="Dagster's colored console logger; stack traces of failed steps only at DEBUG")
def console_logger(init_context: dg.InitLoggerContext) -> logging.Logger:
    logger = dg.colored_console_logger.logger_fn(init_context)
    if logger.getEffectiveLevel() > logging.DEBUG:
        logger.addFilter(_WithoutStackTraces())
    return logger
