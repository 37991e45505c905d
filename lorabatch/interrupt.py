"""Ctrl-C and SIGTERM that always stop a command, keeping what is finished.

Python turns SIGINT into `KeyboardInterrupt` in the main thread at the next bytecode it runs. When
that bytecode belongs to a finaliser (`__del__`, a weakref callback, the garbage collector — Ray's
object references and Ray Data's iterators run many), the exception is printed as "ignored" and
the command carries on, so one Ctrl-C in a hundred could let a sweep run to its end. The handler
here raises as Python's does, and a watchdog thread makes sure the interrupt lands: if the command
has not exited `grace_s` seconds after the first signal, it stops Ray and ends the process.
Everything a stage writes is written atomically, so what was finished is kept and the next run
resumes from it. A second signal ends the process at once.

SIGTERM — what `timeout`, `ray job stop` and Kubernetes send — is handled the same way. Ray
claims SIGTERM when it connects (`ray.init` installs a handler that exits with status 15, and its
C++ core a failure handler that dumps a stack and aborts, status 134), so `ensure_ray` calls
`reclaim()` right after connecting. Exit status: 130 after SIGINT, 143 after SIGTERM (128 + the
signal number, what a shell reports for a command a signal stopped).
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time

log = logging.getLogger(__name__)

EXIT_INTERRUPTED = 130  # 128 + SIGINT
EXIT_TERMINATED = 143  # 128 + SIGTERM
GRACE_S = 15.0
_NAMES = {signal.SIGINT: "interrupted (Ctrl-C)", signal.SIGTERM: "terminated (SIGTERM)"}


class _Interrupts:
    def __init__(self, grace_s: float) -> None:
        self.grace_s = grace_s
        self.first_at: float | None = None
        self.signum: int | None = None

    def exit_status(self) -> int:
        return EXIT_TERMINATED if self.signum == signal.SIGTERM else EXIT_INTERRUPTED

    def handle(self, signum, frame) -> None:
        if self.first_at is not None:
            log.warning("%s again: exiting now", _NAMES.get(signum, f"signal {signum}"))
            os._exit(self.exit_status())
        self.first_at = time.monotonic()
        self.signum = signum
        log.warning(
            "%s: stopping; what is finished is kept and the same command resumes from it (exit status %d)",
            _NAMES.get(signum, f"signal {signum}"),
            self.exit_status(),
        )
        threading.Thread(target=self._watch, name="lorabatch-interrupt", daemon=True).start()
        raise KeyboardInterrupt

    def _watch(self) -> None:
        time.sleep(self.grace_s)
        # Still running: the KeyboardInterrupt was swallowed or the shutdown is stuck.
        log.warning("still running %.0f s after the signal: stopping Ray and exiting", self.grace_s)
        stopper = threading.Thread(target=_stop_ray, daemon=True)
        stopper.start()
        stopper.join(self.grace_s)
        os._exit(self.exit_status())


_installed: _Interrupts | None = None


def _stop_ray() -> None:
    try:
        import ray

        if ray.is_initialized():
            ray.shutdown()
    except Exception:  # exiting anyway; Ray's daemons go when this process goes
        pass


def install(grace_s: float = GRACE_S) -> None:
    """Handle SIGINT and SIGTERM as described above (main thread only, as Python requires)."""
    global _installed
    if threading.current_thread() is threading.main_thread():
        _installed = _Interrupts(grace_s)
        reclaim()


def reclaim() -> None:
    """Re-install the handlers if `install` ran (after `ray.init`, which replaces SIGTERM's)."""
    if _installed is not None and threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, _installed.handle)
        signal.signal(signal.SIGTERM, _installed.handle)


def received() -> int | None:
    """The exit status the signal that stopped this command asks for; None if none arrived."""
    return _installed.exit_status() if _installed is not None and _installed.signum is not None else None
