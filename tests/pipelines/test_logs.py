"""pipelines/logs.py: what leaves the console and what stays (Ray's files keep everything)."""
from __future__ import annotations

import logging

from pipelines import logs


def test_progress_wanted():
    assert logs.progress_wanted(True) and not logs.progress_wanted(False)
    assert logs.progress_wanted("auto") is False  # pytest's stderr is not a terminal


def test_ray_data_console_drops_info_and_advice_but_its_file_keeps_them():
    logs.quiet_ray_data()
    handlers = logging.getLogger("ray.data").handlers
    console = [h for h in handlers if "File" not in type(h).__name__]
    files = [h for h in handlers if "File" in type(h).__name__]
    assert console and files

    def shown(handler, name, level, msg):
        record = logging.LogRecord(name, level, __file__, 1, msg, None, None)
        return level >= handler.level and handler.filter(record)

    data = "ray.data._internal.execution.streaming_executor"
    advice = "ray.data._internal.issue_detection.issue_detector_manager"
    for h in console:
        assert not shown(h, data, logging.INFO, "Execution plan of Dataset ...")
        assert not shown(h, data, logging.WARNING, "Progress bars disabled. To enable, ...")
        assert not shown(h, advice, logging.WARNING, "Operator 'MapBatches(ReadPending)' uses 981.5MiB ...")
        assert shown(h, data, logging.WARNING, "a real warning")
        assert shown(h, data, logging.ERROR, "an error")
    for h in files:
        assert h.filter(logging.LogRecord(data, logging.INFO, __file__, 1, "Execution plan", None, None))


def test_worker_output_filter_drops_only_the_benign_lines():
    from ray._private.ray_logging import global_worker_stdstream_dispatcher as dispatcher

    seen = []
    dispatcher.add_handler("ray_print_logs", lambda data: seen.append(data["lines"]))
    try:
        assert logs.filter_worker_output()
        assert logs.filter_worker_output()  # idempotent: wrapped once
        dispatcher.emit({"lines": ["[2026 E 1 2] core_worker.cc:2465: Actor with class name: 'PreemptionWatcher' "
                                   "has constructor arguments in the object store and max_restarts > 0. If ..."],
                         "pid": 1, "is_err": True})
        dispatcher.emit({"lines": ["benign? no: a stage warning", "Traceback (most recent call last):"],
                         "pid": 2, "is_err": True})
    finally:
        dispatcher.remove_handler("ray_print_logs")
    assert seen == [["benign? no: a stage warning", "Traceback (most recent call last):"]]
