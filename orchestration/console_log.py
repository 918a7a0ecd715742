"""The console logger of every job: Dagster's colored console logger, with a failed step's stack trace left out
below DEBUG. The failure's own message (a FalcoError names the file and the fix) stays, `falco pipeline` repeats
it as one line at the end, and the full trace is in the run's page in the UI or with `--log-level DEBUG`. A step
interrupted by Ctrl-C or SIGTERM logs nothing there: falco's one line says the run was stopped, and by what."""

import logging

import dagster as dg

_TRACE = "\n\nStack Trace:"
_HINT = "\n(stack trace: the run's page in the Dagster UI, or --log-level DEBUG)"
_INTERRUPTED = "DagsterExecutionInterruptedError"  # a step stopped by a signal


class _WithoutStackTraces(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        text = record.getMessage()
        if _INTERRUPTED in text:
            return False
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
