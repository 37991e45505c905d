"""Ctrl-C that always stops a command.

Python turns SIGINT into `KeyboardInterrupt` in the main thread at the next bytecode it runs. When
that bytecode belongs to a finaliser (`__del__`, a weakref callback, the garbage collector — Ray's
object references and Ray Data's iterators run many), the exception is printed as "ignored" and
the command carries on, so one Ctrl-C in a hundred could let a sweep run to its end. The handler
here raises as Python's does, and a watchdog thread makes sure the interrupt lands: if the command
has not exited `grace_s` seconds after the first Ctrl-C, it stops Ray and ends the process with
status 130. Everything a stage writes is written atomically, so what was finished is kept and the
next run resumes from it. A second Ctrl-C ends the process at once.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time

log = logging.getLogger(__name__)

EXIT_INTERRUPTED = 130  # 128 + SIGINT, what a shell reports for a command stopped by Ctrl-C
GRACE_S = 15.0


class _Interrupts:
    def __init__(self, grace_s: float) -> None:
        self.grace_s = grace_s
        self.first_at: float | None = None

    def handle(self, signum, frame) -> None:
        if self.first_at is not None:
            log.warning("interrupted again: exiting now")
            os._exit(EXIT_INTERRUPTED)
        self.first_at = time.monotonic()
        log.warning("interrupted: stopping (what is finished is kept; Ctrl-C again to exit at once)")
        threading.Thread(target=self._watch, name="lorabatch-interrupt", daemon=True).start()
        raise KeyboardInterrupt

    def _watch(self) -> None:
        time.sleep(self.grace_s)
        # Still running: the KeyboardInterrupt was swallowed or the shutdown is stuck.
        log.warning("still running %.0f s after Ctrl-C: stopping Ray and exiting", self.grace_s)
        stopper = threading.Thread(target=_stop_ray, daemon=True)
        stopper.start()
        stopper.join(self.grace_s)
        os._exit(EXIT_INTERRUPTED)


def _stop_ray() -> None:
    try:
        import ray

        if ray.is_initialized():
            ray.shutdown()
    except Exception:  # noqa: BLE001 - exiting anyway; Ray's daemons go when this process goes
        pass


def install(grace_s: float = GRACE_S) -> None:
    """Handle SIGINT as described above (main thread only, as Python requires)."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, _Interrupts(grace_s).handle)
