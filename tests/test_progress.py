"""Progress lines: off a terminal, a stage's progress is lines of the lorabatch log, at most one per
interval and one when it closes; Ray Data's own progress output is off."""

import logging


def _lines(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "lorabatch.progress"]


def test_off_a_terminal_updates_log_at_most_one_line_per_interval(caplog, monkeypatch):
    from lorabatch import progress

    monkeypatch.setattr(progress, "_is_tty", lambda: False)
    caplog.set_level(logging.INFO, logger="lorabatch")
    quiet = progress.ProgressLine("generation (hf)", 4, "rows", interval=1e9)
    quiet.update(3, note="1.5 k tokens/s")
    assert _lines(caplog) == []  # nothing before the interval has passed
    quiet.update(1)
    quiet.close()
    assert len(_lines(caplog)) == 1
    assert _lines(caplog)[0].startswith("generation (hf): 4/4 rows (100 %), 1.5 k tokens/s in ")

    caplog.clear()
    every = progress.ProgressLine("few-shot (select)", 3, "tasks", interval=0)
    every.update(1)
    every.update(1)
    assert [ln.split(",")[0] for ln in _lines(caplog)] == [
        "few-shot (select): 1/3 tasks (33 %)",
        "few-shot (select): 2/3 tasks (67 %)",
    ]
    assert _lines(caplog)[0].endswith(" s left")
    every.update(1)
    every.close()  # its last line is already out: not logged twice
    assert len(_lines(caplog)) == 3 and _lines(caplog)[-1].startswith("few-shot (select): 3/3 tasks (100 %) in ")


def test_disabled_line_says_nothing(caplog, monkeypatch):
    from lorabatch import progress

    monkeypatch.setattr(progress, "_is_tty", lambda: False)
    caplog.set_level(logging.INFO, logger="lorabatch")
    line = progress.ProgressLine("x", 2, "rows", enabled=False, interval=0)
    line.update(2)
    line.close()
    assert _lines(caplog) == []


def test_quiet_ray_data_turns_its_console_output_off():
    import ray.data  # noqa: F401 - configures Ray Data's loggers
    from ray.data import DataContext

    from lorabatch.progress import quiet_ray_data

    DataContext.get_current().enable_progress_bars = True
    console = [h for h in logging.getLogger("ray.data").handlers if h.get_name() == "console"]
    assert console, "Ray Data's logging config has no console handler any more"
    quiet_ray_data()
    assert DataContext.get_current().enable_progress_bars is False
    assert all(h.level >= logging.WARNING for h in console)
    files = [h for h in logging.getLogger("ray.data").handlers if h.get_name() != "console"]
    assert files and all(h.level <= logging.INFO for h in files)  # its log file still gets everything
