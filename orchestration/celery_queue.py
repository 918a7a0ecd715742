"""The Celery side of the cluster: one Celery app that `falco worker` serves and the `celery` executor submits to.

Both read the same environment, so a worker on another machine and the process that runs the job agree:

| variable | meaning | default |
| --- | --- | --- |
| `FALCO_BROKER_URL` | the Redis broker (`redis://host:6379/0`) | required |
| `FALCO_RESULT_BACKEND` | where step results go | the broker |
| `FALCO_VISIBILITY_TIMEOUT` | seconds after which a step taken by a worker that died is handed to another | 10800 |

Steps tagged `falco/device: gpu` carry `dagster-celery/queue: gpu` (GPU_STEP) and go to the queue `gpu`, the others
to `cpu`. Tasks are acknowledged late: a worker killed mid-step never acknowledged it, so Redis gives the step to
the next worker once the visibility timeout has passed (a live worker's step is never taken from it sooner, so the
timeout must exceed the longest step: a shard on the slowest GPU). Each worker process keeps its networks between
steps (orchestration.resources builds them once per process), which is why the GPU worker runs one process that
takes one step at a time (`--pool solo`).
"""

from __future__ import annotations

import logging
import os
import warnings
from typing import Any

from anon_core.errors import FalcoError

QUEUES = ("cpu", "gpu")
DEFAULT_QUEUE = "cpu"
DEVICE_TAG = "falco/device"
GPU_STEP = {DEVICE_TAG: "gpu", "dagster-celery/queue": "gpu"}  # op_tags of every step that runs networks
DEFAULT_VISIBILITY_TIMEOUT = 3 * 3600
LOG = logging.getLogger("falco.worker")


def broker_url() -> str:
    url = os.environ.get("FALCO_BROKER_URL", "").strip()
    if not url:
        raise FalcoError("pipeline.executor = celery needs the Redis broker: set FALCO_BROKER_URL (for example "
                         "redis://127.0.0.1:6379/0) for `falco pipeline` and every `falco worker`; `make cluster-demo` "
                         "starts one on this machine (README: Cluster)")
    if not url.startswith(("redis://", "rediss://")):
        raise FalcoError(f"FALCO_BROKER_URL = {url!r} must be a Redis URL (redis://host:6379/0)")
    return url


def visibility_timeout() -> int:
    text = os.environ.get("FALCO_VISIBILITY_TIMEOUT", str(DEFAULT_VISIBILITY_TIMEOUT))
    try:
        seconds = int(text)
    except ValueError:
        seconds = 0
    if seconds < 1:
        raise FalcoError(f"FALCO_VISIBILITY_TIMEOUT = {text!r} must be a whole number of seconds >= 1 (longer than "
                         "the longest step)")
    return seconds


def celery_settings() -> dict[str, Any]:
    """The Celery settings both sides use (lower-case Celery 4+ names)."""
    timeout = visibility_timeout()
    return {
        "task_default_queue": DEFAULT_QUEUE,
        "task_acks_late": True,  # acknowledged when the step is done, not when it is taken
        "task_reject_on_worker_lost": True,  # a pool process that dies puts its step back
        "worker_prefetch_multiplier": 1,  # a worker holds no step it is not running
        # A step running longer than the visibility timeout is handed out again, even to the worker running it,
        # which took the copy once done and ran the step again, as often as a run outlasted the timeout, while the
        # run waited. A copy of a step whose result says it succeeded is acknowledged and dropped instead.
        "worker_deduplicate_successful_tasks": True,
        "broker_connection_retry_on_startup": True,
        "result_expires": 7 * 24 * 3600,
        "broker_transport_options": {
            "visibility_timeout": timeout,
            # Look for the steps of dead workers about every tenth of the timeout (kombu's default: 100 s).
            "unacked_restore_interval": max(1, min(10, timeout // 10)),
            "unacked_restore_throttle": 1,
        },
        "result_backend_transport_options": {"visibility_timeout": timeout},
    }


def executor_config() -> dict[str, Any]:
    """The `celery` executor's config (dagster_celery.celery_executor)."""
    # dagster-celery registers its step task again on each submission; Celery 5.7 warns that the first one stays,
    # which is the same task. (Set here, in each process that builds the executor, not at import: the definitions
    # import the assets inside a warnings.catch_warnings block, which would undo it.)
    warnings.filterwarnings("ignore", message="Task name 'execute_plan' is already registered")
    broker = broker_url()
    return {"broker": broker, "backend": os.environ.get("FALCO_RESULT_BACKEND") or broker,
            "config_source": celery_settings()}


def make_celery_app():
    """The app `falco worker` serves: dagster-celery's step task, bound to the queues of QUEUES."""
    from dagster_celery.executor import CeleryExecutor
    from dagster_celery.make_app import make_app_with_task_routes
    from dagster_celery.tasks import create_task
    from kombu import Exchange, Queue

    config = executor_config()
    app = make_app_with_task_routes(task_routes={}, app_args=CeleryExecutor.for_cli(**config).app_args())
    # dagster-celery submits a step to the exchange named after its queue with the routing key "<queue>.execute_plan"
    app.conf.task_queues = [Queue(name, Exchange(name, type="direct"), routing_key=f"{name}.execute_plan")
                            for name in QUEUES]
    create_task(app)
    from celery.signals import task_prerun

    task_prerun.connect(_say_handed_out_again, weak=False)
    return app


def _say_handed_out_again(task=None, kwargs=None, **_) -> None:
    """A worker's log line for a step it runs that was handed out again (one that succeeded is dropped before):
    its first worker died, which is what the timeout is for, or it is still running there, which runs it twice."""
    if not (getattr(task.request, "delivery_info", None) or {}).get("redelivered"):
        return
    from dagster._grpc.types import ExecuteStepArgs
    from dagster._serdes import unpack_value

    try:
        packed = (kwargs or {})["execute_step_args_packed"]  # dagster-celery submits it by keyword
        steps = ", ".join(unpack_value(packed, as_type=ExecuteStepArgs).step_keys_to_execute or [])
    except Exception:  # only a log line: never stop a step over it
        steps = "?"
    LOG.warning(
        f"step {steps} was handed out again after FALCO_VISIBILITY_TIMEOUT ({visibility_timeout()} s): the worker "
        "that took it died, or it has run longer than that there and now runs twice; keep the timeout above the "
        "longest step")


def queues_without_worker(timeout: float = 2.0) -> list[str]:
    """The queues of QUEUES that no worker answered for within `timeout` (a one-process worker busy with a step
    answers only after it)."""
    from kombu.exceptions import OperationalError

    try:
        replies = make_celery_app().control.inspect(timeout=timeout).active_queues() or {}
    except OperationalError as err:
        raise FalcoError(f"cannot reach the Redis broker at {broker_url()} ({err}); start it (`falco cluster up` on "
                         "this machine) or fix FALCO_BROKER_URL") from None
    served = {queue["name"] for queues in replies.values() for queue in queues}
    return [name for name in QUEUES if name not in served]
