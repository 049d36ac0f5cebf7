"""A stop signal ends the run in order even when its exception is lost on the way."""

from __future__ import annotations

import subprocess
import sys
import textwrap

from tests.support.paths import REPO

# Prefect's SIGTERM handler raises; when that happens inside a finalizer Python drops the exception
# ("Exception ignored in ..."). The stand-in handler here drops it outright.
SCRIPT = textwrap.dedent(
    """
    import os, signal, time
    from m3 import lifecycle

    steps = 0
    try:
        with lifecycle.run_scope():
            signal.signal(signal.SIGTERM, lambda *a: None)
            os.kill(os.getpid(), signal.SIGTERM)
            t0 = time.monotonic()
            while time.monotonic() - t0 < 5:
                lifecycle.raise_if_stopped()
                steps += 1
                time.sleep(0.01)
    except lifecycle.Stopped as exc:
        print("stopped in order:", exc)
    """
)


def test_a_dropped_stop_exception_still_stops_the_loop_in_order():
    out = subprocess.run([sys.executable, "-c", SCRIPT], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "stopped in order: stopped by SIGTERM" in out.stdout, (out.stdout, out.stderr)
    assert "shutdown took longer" not in out.stderr
