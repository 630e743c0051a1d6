"""Running the ``pulse`` entry's short path and the click group side by side (issue 19 item 3).

Shared by the fast ``ls`` and ``show`` tests: both run the real entry
(``python -m pulse_transports.cli``) and the click group in new processes and
compare stdout, stderr and the exit code.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FAST = [sys.executable, "-m", "pulse_transports.cli"]
CLICK = [sys.executable, "-c", "from pulse_transports.cli import main; main(prog_name='pulse')"]
#: Variables that change how rich prints: left out unless a test gives them.
RICH_ENV = ("FORCE_COLOR", "TTY_COMPATIBLE", "TTY_INTERACTIVE", "NO_COLOR", "COLUMNS")


def env(**extra: str) -> dict[str, str]:
    """This environment without ``PULSE_*`` or rich's variables, this tree first, plus *extra*."""
    out = {k: v for k, v in os.environ.items() if not k.startswith("PULSE_") and k not in RICH_ENV}
    out["PYTHONPATH"] = os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])
    out.update(extra)
    return out


def run(
    command: list[str], args: list[str], cwd: Path, **extra: str
) -> subprocess.CompletedProcess[bytes]:
    """*command* with *args* in *cwd*, output captured."""
    return subprocess.run(
        [*command, *args], capture_output=True, cwd=cwd, env=env(**extra), timeout=120, check=False
    )


def same(argv: list[str], cwd: Path, **extra: str) -> subprocess.CompletedProcess[bytes]:
    """Run *argv* through the ``pulse`` entry and the click group; assert the same result."""
    fast = run(FAST, argv, cwd, **extra)
    slow = run(CLICK, argv, cwd, **extra)
    assert (fast.returncode, fast.stdout, fast.stderr) == (
        slow.returncode,
        slow.stdout,
        slow.stderr,
    )
    return fast
