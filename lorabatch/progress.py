"""What a stage tells its user while it runs: one progress line per stage, Ray Data kept quiet.

On a terminal a `ProgressLine` is a tqdm bar on stderr; elsewhere (CI logs, `nohup`) it is a line
of the `lorabatch` log at most every `interval` seconds and when it closes:

    [lorabatch] generation: 3,200/12,600 rows (25 %), 9.8 k tokens/s, 41 s left

Ray Data's own progress (on a terminal its bars, elsewhere a dump of every operator every 10 s)
and its execution messages are turned off on the console by `quiet_ray_data`; Ray Data still
writes them to `ray-data.log` in the Ray session's log directory.
"""

from __future__ import annotations

import logging
import sys
import time

log = logging.getLogger("lorabatch.progress")


def _is_tty() -> bool:
    return sys.stderr.isatty()


class ProgressLine:
    """Progress of one stage: `update(n)` adds n done units; `close()` logs the last line.

    `extra()`, when given, returns text appended to each line (e.g. a rate)."""

    def __init__(self, desc: str, total: int | None, unit: str, enabled: bool = True, interval: float = 10.0):
        self.desc, self.total, self.unit = desc, total, unit
        self.done = 0
        self.logged: int | None = None  # `done` when the last line was logged
        self.started = time.perf_counter()
        self.last = self.started
        self.interval = interval
        self.enabled = enabled
        self.notes = ""
        self.bar = None
        if enabled and _is_tty():
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, desc=desc, unit=unit, leave=False)

    def update(self, n: int = 1, note: str | None = None) -> None:
        self.done += n
        if note is not None:
            self.notes = note
        if not self.enabled:
            return
        if self.bar is not None:
            if note is not None:
                self.bar.set_postfix_str(note, refresh=False)
            self.bar.update(n)
            return
        now = time.perf_counter()
        if now - self.last >= self.interval:
            self.last = now
            self.logged = self.done
            log.info(self.line())

    def line(self) -> str:
        """`desc: done/total unit (p %), notes, s left`."""
        elapsed = time.perf_counter() - self.started
        text = f"{self.desc}: {self.done:,}"
        if self.total:
            text += f"/{self.total:,} {self.unit} ({100 * self.done / self.total:.0f} %)"
        else:
            text += f" {self.unit}"
        if self.notes:
            text += f", {self.notes}"
        if self.total and 0 < self.done < self.total:
            text += f", {elapsed * (self.total - self.done) / self.done:.0f} s left"
        elif self.done and (not self.total or self.done >= self.total):
            text += f" in {elapsed:.1f} s"
        return text

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        if self.enabled and self.logged != self.done:  # not twice the same line
            log.info(self.line())


def quiet_ray_data() -> None:
    """Ray Data without progress output and with its INFO messages in its log file only (this
    process; the driver is where Ray Data executes)."""
    from ray.data import DataContext
    from ray.util.debug import log_once

    DataContext.get_current().enable_progress_bars = False
    log_once("ray_data_progress_manager_disabled")  # taken here: no warning that the bars are off
    for handler in logging.getLogger("ray.data").handlers:
        if handler.get_name() == "console":
            handler.setLevel(logging.WARNING)
