"""Ctrl-C always stops a command: a swallowed KeyboardInterrupt still ends the process (status
130) after the grace period, and a second Ctrl-C ends it at once."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
import time

SWALLOWS = textwrap.dedent(
    """
    import os, signal, sys, time
    from lorabatch import interrupt

    interrupt.install(grace_s={grace})
    deadline = time.monotonic() + 60
    ready = False
    while time.monotonic() < deadline:  # a finaliser that eats the interrupt, as Python's do
        try:
            if not ready:
                ready = True
                print("ready", flush=True)
            time.sleep(0.05)
        except KeyboardInterrupt:
            print("swallowed", flush=True)
    print("ran to the end", flush=True)
    """
)


def _start(grace: float) -> subprocess.Popen:
    proc = subprocess.Popen(
        [sys.executable, "-c", SWALLOWS.format(grace=grace)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    assert proc.stdout.readline().strip() == "ready"
    return proc


def test_a_swallowed_interrupt_still_ends_the_process_after_the_grace_period():
    proc = _start(grace=1.0)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 130, (out, err)
    assert "swallowed" in out and "ran to the end" not in out
    assert "still running" in err


def test_a_second_interrupt_ends_the_process_at_once():
    proc = _start(grace=60.0)
    proc.send_signal(signal.SIGINT)
    time.sleep(0.5)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=30)  # long before the 60 s grace period
    assert proc.returncode == 130, (out, err)
    assert "ran to the end" not in out
    assert "interrupted (Ctrl-C) again: exiting now" in err


def test_an_uncaught_interrupt_propagates_as_usual():
    script = "from lorabatch import interrupt\nimport os, signal\ninterrupt.install()\nos.kill(os.getpid(), signal.SIGINT)\nprint('after')"
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=30)
    assert "KeyboardInterrupt" in proc.stderr and "after" not in proc.stdout


RAY_THEN_WAIT = textwrap.dedent(
    """
    import sys, time
    from lorabatch import interrupt
    from lorabatch.raysession import ensure_ray

    interrupt.install(grace_s=60)
    ensure_ray(num_cpus=1)  # ray.init installs SIGTERM handlers of its own
    print("ready", flush=True)
    try:
        time.sleep(120)
    except KeyboardInterrupt:
        print(f"stopped, status {interrupt.received()}", flush=True)
        sys.exit(interrupt.received())
    """
)


def test_sigterm_after_ray_connects_stops_like_ctrl_c_with_status_143(ray_env):
    proc = subprocess.Popen(
        [sys.executable, "-c", RAY_THEN_WAIT], env=ray_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    assert proc.stdout.readline().strip() == "ready"
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    # Ray's own handlers would exit with status 15 (its Python one) or abort with a stack dump.
    assert proc.returncode == 143, (out, err)
    assert "stopped, status 143" in out
    assert "terminated (SIGTERM): stopping; what is finished is kept" in err
    assert "SIGTERM received at time" not in err
