"""The first ``make`` says what it is doing while pip compiles llama.cpp (issue 18).

``make demo`` / ``make test`` on a fresh clone build ``.venv``; pip runs with ``-q`` and
compiles llama-cpp-python from source for 8-10 minutes on 2 cores, so the Makefile has to
say so before that step, or the user sees a prompt that hangs. The test runs the real
Makefile with ``PYTHON`` set to a stand-in interpreter that records each command instead
of installing anything.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

# A "python" that makes a venv by copying itself and logs each pip command to stdout.
FAKE_PYTHON = f"""#!{sys.executable}
import os, shutil, stat, sys
args = sys.argv[1:]
if args[:2] == ["-m", "venv"]:
    bindir = os.path.join(args[2], "bin")
    os.makedirs(bindir, exist_ok=True)
    shutil.copy(__file__, os.path.join(bindir, "python"))
    os.chmod(os.path.join(bindir, "python"), 0o755)
else:
    print("RAN:", " ".join(args), flush=True)
"""


@pytest.mark.skipif(shutil.which("make") is None, reason="GNU make is not installed")
def test_the_first_make_says_it_compiles_and_for_how_long(tmp_path: Path) -> None:
    fake = tmp_path / "python3"
    fake.write_text(FAKE_PYTHON)
    fake.chmod(0o755)
    venv = tmp_path / "venv"
    r = subprocess.run(
        ["make", "-C", str(ROOT), f"PYTHON={fake}", f"VENV={venv}", f"{venv}/.installed"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 0, r.stdout + r.stderr
    lines = r.stdout.splitlines()
    slow = next(i for i, line in enumerate(lines) if line.startswith("RAN:") and "llama" in line)
    said = " ".join(line for line in lines[:slow] if line.startswith("==>"))
    assert "compiles llama-cpp-python" in said, r.stdout
    assert "8-10 minutes on 2 cores" in said, r.stdout
    assert (venv / ".installed").exists()
