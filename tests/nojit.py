"""Run a Python snippet in a subprocess with numba's JIT on or off."""

from __future__ import annotations

import os
import subprocess
import sys


def run_python(script: str, *args: str, jit: bool = False) -> str:
    """Run ``python -c script args...`` with ``NUMBA_DISABLE_JIT`` set; return stdout.

    Fails the calling test (AssertionError with stderr) on a non-zero exit.
    """
    env = {**os.environ, "NUMBA_DISABLE_JIT": "0" if jit else "1"}
    proc = subprocess.run([sys.executable, "-c", script, *args], env=env,
                          capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout
