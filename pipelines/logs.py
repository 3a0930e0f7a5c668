"""Logs a person can read: one line per stage event on the console, Ray's detail in its own files.

The driver logs ``HH:MM:SS LEVEL message``. Ray Data's per-dataset INFO lines (execution plan,
"Running Dataset", the periodic operator table it prints when stderr is not a terminal) stay in
Ray's session log (``/tmp/ray/session_*/logs/ray-data.log``) and leave the console, in the
driver and, through :func:`quiet_worker` (Ray's ``worker_process_setup_hook``), in every worker
whose output Ray forwards to the driver (the Ray Train workers and their dataset shards).
Progress bars (Ray Data's and every tqdm bar, also those of diffusers and transformers) show
only when the driver writes to a terminal, unless ``ray.progress_bars`` says otherwise.

Imports nothing heavy: the command-line entry points call :func:`setup` before ``--help``.
"""
from __future__ import annotations

import importlib.util
import logging
import os
import sys

FORMAT = "%(asctime)s %(levelname)s %(message)s"
DATEFMT = "%H:%M:%S"
# third-party loggers that warn on every start about things a run does not use
QUIET = {
    "bitsandbytes": logging.ERROR,  # "Failed to load CPU gemm_4bit_forward ..." (no 4-bit kernels on CPU)
    "alembic": logging.WARNING,  # MLflow's SQLite migrations
    "mlflow.store.db.utils": logging.WARNING,
    "mlflow.system_metrics": logging.WARNING,  # "Started monitoring system metrics." per run
    "pyiqa": logging.WARNING,  # "Network [PIQE] is created." per metric and actor
    "httpx": logging.WARNING,
    "urllib3": logging.WARNING,
}
# environment that Ray's workers inherit from the driver (pipelines.common.init_ray)
WORKER_HOOK = "pipelines.logs.quiet_worker"


def setup(level: str | int = "INFO") -> None:
    """The driver's logging: compact lines on stderr, noisy third-party loggers turned down.

    Call before torch, diffusers or transformers are imported: tqdm reads ``TQDM_DISABLE`` when it
    is imported, so the driver's own bars (model saving, stage 0 run locally) are off from the
    start when stderr is not a terminal."""
    logging.basicConfig(level=level, format=FORMAT, datefmt=DATEFMT)
    for name, lvl in QUIET.items():
        logging.getLogger(name).setLevel(lvl)
    if not sys.stderr.isatty():
        os.environ.setdefault("TQDM_DISABLE", "1")
        os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")


def progress_wanted(setting: bool | str) -> bool:
    """``ray.progress_bars``: true, false, or "auto" (on when stderr is a terminal)."""
    if setting == "auto":
        return sys.stderr.isatty()
    return bool(setting)


def quiet_progress(enabled: bool) -> dict[str, str]:
    """Turn every tqdm bar off (tqdm reads ``TQDM_DISABLE``) when progress is not wanted.

    Returns the environment variables for Ray's workers."""
    if enabled:
        return {}
    os.environ["TQDM_DISABLE"] = "1"
    return {"TQDM_DISABLE": "1"}


class _Drop(logging.Filter):
    """Drops records whose message starts with one of ``prefixes`` or whose logger is in ``loggers``."""

    def __init__(self, *prefixes: str, loggers: tuple[str, ...] = ()):
        super().__init__()
        self.prefixes, self.loggers = prefixes, loggers

    def filter(self, record: logging.LogRecord) -> bool:
        return not (str(record.msg).startswith(self.prefixes) or record.name.endswith(self.loggers))


def quiet_ray_data(level: int = logging.WARNING) -> None:
    """Ray Data's console handler shows ``level`` and above; its file handler keeps everything."""
    import ray.data  # noqa: F401  (configures the "ray.data" logger and its handlers)

    for handler in logging.getLogger("ray.data").handlers:
        if not isinstance(handler, logging.FileHandler) and "File" not in type(handler).__name__:
            handler.setLevel(level)
            if not any(isinstance(f, _Drop) for f in handler.filters):
                # the bars are off on purpose (logs.progress_wanted): no warning per dataset about it;
                # the issue detector's memory advice (15 lines per operator that reads images) is
                # for tuning a cluster: it stays in ray-data.log
                handler.addFilter(_Drop("Progress bars disabled", loggers=("issue_detector_manager",)))


def quiet_worker() -> None:
    """Ray's ``worker_process_setup_hook``: the same quieting inside each Ray worker process.

    Also tells the worker which cluster it is in (RAY_ADDRESS): Ray Train's PlacementGroupCleaner
    asks the state API about its controller without an address, and on a machine with more than
    one Ray cluster that raises "Found multiple active Ray instances" in a thread, a traceback in
    the driver's log after every training run."""
    import warnings

    import ray

    for name, lvl in QUIET.items():
        logging.getLogger(name).setLevel(lvl)
    # Ray Train logs "Reporting training result N: TrainingReport(...)" per checkpoint on a logger
    # named after its file, outside "ray.train" (so outside its LoggingConfig)
    spec = importlib.util.find_spec("ray.train.v2._internal.execution.context")
    if spec is not None and spec.origin:
        logging.getLogger(spec.origin).setLevel(logging.WARNING)
    # Ray's own internals use its deprecated options (ExecutionOptions.exclude_resources)
    warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"ray\.")
    if not os.environ.get("RAY_ADDRESS") and ray.is_initialized():
        os.environ["RAY_ADDRESS"] = ray.get_runtime_context().gcs_address
    quiet_ray_data()


# worker output lines the driver does not echo: Ray's C++ core worker logs an ERROR for each of its
# own restartable actors created with arguments in the object store (Ray Train's
# PreemptionWatcher; ray-project/ray#53727), on every successful run
BENIGN = ("has constructor arguments in the object store and max_restarts > 0",)


def filter_worker_output() -> bool:
    """Drop the BENIGN lines from the worker output Ray echoes in the driver (log_to_driver).

    Wraps the handler Ray registers on its worker-stream dispatcher (a private API: when it is
    not there, nothing is filtered and False is returned)."""
    try:
        from ray._private.ray_logging import (
            global_worker_stdstream_dispatcher as dispatcher,
        )
    except ImportError:
        return False
    with dispatcher._lock:
        handlers = list(dispatcher.handlers)
        for i, (name, handle) in enumerate(handlers):
            if name == "ray_print_logs" and not getattr(handle, "_supir_filter", False):
                handlers[i] = (name, _filtered(handle))
        dispatcher.handlers = handlers
    return any(name == "ray_print_logs" for name, _ in handlers)


def _filtered(handle):
    def filtered(data):
        lines = [line for line in data.get("lines", []) if not any(b in line for b in BENIGN)]
        if lines:
            handle({**data, "lines": lines})

    filtered._supir_filter = True  # type: ignore[attr-defined]
    return filtered
