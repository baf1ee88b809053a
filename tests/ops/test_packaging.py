"""The package as a user gets it: a built wheel, installed into a fresh venv.

Why: ``pip install -e .`` (what ``make`` does) hides packaging mistakes: a module or data
file missing from the wheel, a broken console-script entry point, licence metadata that a
build backend rejects. This builds the wheel from a copy of the sources with the venv's own
setuptools (no build isolation: no download), installs it with ``--no-deps`` into a new
venv whose dependencies come from this venv's site-packages (a path line in a ``.pth``
file, so this venv's editable install is *not* visible there), then imports it, runs
``contextharbor --help`` and starts ``contextharbor-standin``.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import urllib.request
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PYPROJECT = (ROOT / "pyproject.toml").read_text()  # tomllib is 3.11+; 3.10 is supported


def _run(*cmd: str | Path, **kw: object) -> subprocess.CompletedProcess[str]:
    r = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=300, **kw)  # type: ignore[call-overload]
    assert r.returncode == 0, f"{cmd}: {r.stdout}\n{r.stderr}"
    return r  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    src = tmp_path_factory.mktemp("src")
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(ROOT / name, src / name)
    shutil.copytree(
        ROOT / "langchain_contextharbor",
        src / "langchain_contextharbor",
        ignore=shutil.ignore_patterns("__pycache__"),
    )
    out = tmp_path_factory.mktemp("dist")
    r = _run(
        sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
        "-w", out, src,
    )  # fmt: skip
    assert "license" not in r.stderr.lower(), r.stderr  # no deprecated-licence warnings
    (whl,) = out.glob("langchain_contextharbor-*.whl")
    return whl


@pytest.fixture(scope="module")
def fresh_venv(tmp_path_factory: pytest.TempPathFactory, wheel: Path) -> Path:
    venv = tmp_path_factory.mktemp("venv")
    _run(sys.executable, "-m", "venv", "--without-pip", venv)
    py = venv / "bin" / "python"
    site = Path(
        _run(py, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))").stdout.strip()
    )
    # Dependencies from this venv, as a plain path: its .pth files (the editable install of
    # this checkout) are not processed there, so only the wheel provides the package.
    (site / "zz_deps.pth").write_text(sysconfig.get_path("purelib") + "\n")
    _run(sys.executable, "-m", "pip", "--python", py, "install", "-q", "--no-deps", wheel)
    return venv


def test_licence_is_an_spdx_expression_with_the_mit_text_shipped() -> None:
    # PEP 639: a plain SPDX string (the TOML table form is deprecated and warns), which
    # setuptools accepts from version 77 on.
    assert re.search(r'^license = "MIT"$', PYPROJECT, re.M)
    assert re.search(r'^requires = \["setuptools>=77"\]$', PYPROJECT, re.M)
    assert "MIT License" in (ROOT / "LICENSE").read_text()


def test_wheel_holds_the_package_its_data_and_licence_metadata(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
        (meta_name,) = [n for n in names if n.endswith(".dist-info/METADATA")]
        meta = z.read(meta_name).decode()
        (ep_name,) = [n for n in names if n.endswith(".dist-info/entry_points.txt")]
        entry_points = z.read(ep_name).decode()
    for module in ("__init__.py", "py.typed", "cli.py", "testing/server.py"):
        assert f"langchain_contextharbor/{module}" in names
    assert any(n.endswith("licenses/LICENSE") for n in names), sorted(names)
    assert "License-Expression: MIT" in meta
    assert "contextharbor = langchain_contextharbor.cli:main" in entry_points
    assert "contextharbor = langchain_contextharbor.testing.pytest_plugin" in entry_points


def test_installed_wheel_imports_runs_the_cli_and_starts_the_standin(fresh_venv: Path) -> None:
    bin_dir = fresh_venv / "bin"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    where = _run(
        bin_dir / "python", "-c",
        "import langchain_contextharbor as p; print(p.__file__); print(p.__version__)",
        env=env, cwd=fresh_venv,
    ).stdout.split()  # fmt: skip
    assert where[0].startswith(str(fresh_venv)), where  # the wheel, not this checkout
    assert f'version = "{where[1]}"' in PYPROJECT
    helptext = _run(bin_dir / "contextharbor", "--help", env=env).stdout
    assert "check" in helptext and "route" in helptext
    standin = subprocess.Popen(
        [bin_dir / "contextharbor-standin", "--port", "0", "--name", "gpu"],
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        assert standin.stdout is not None
        line = standin.stdout.readline()  # "listening on http://127.0.0.1:PORT (gpu)"
        assert line.startswith("listening on http://127.0.0.1:"), line
        url = line.split()[2]
        with urllib.request.urlopen(f"{url}/api/version", timeout=5) as resp:
            assert "version" in json.load(resp)
    finally:
        standin.terminate()
        assert standin.wait(timeout=10) == 0
