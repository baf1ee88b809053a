"""The systemd user unit templates in systemd/: contents, and `systemd-analyze verify`.

`systemd-analyze` is needed for the verify tests. Without it they skip with a reason,
unless CONTEXTHARBOR_REQUIRE_SYSTEMD=1 (CI), where a missing tool fails them.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
UNIT_DIR = REPO / "systemd"
SCRIPT = REPO / "scripts" / "setup_hybrid_ollama.sh"
TEMPLATE_EXEC_LINE = "ExecStart=/usr/local/bin/ollama serve"
GPU_PORT, CPU_PORT = 11434, 11435

CPU_HIDING = {
    "CUDA_VISIBLE_DEVICES": "-1",
    "ROCR_VISIBLE_DEVICES": "-1",
    "HIP_VISIBLE_DEVICES": "-1",
    "GGML_VK_VISIBLE_DEVICES": "-1",
    "OLLAMA_VULKAN": "0",
    "OLLAMA_LLM_LIBRARY": "cpu",
}


def template(kind: str) -> str:
    return (UNIT_DIR / f"ollama-{kind}@.service").read_text()


def directives(text: str) -> list[tuple[str, str, str]]:
    """(section, key, value) for every directive line; comments and blanks skipped."""
    out: list[tuple[str, str, str]] = []
    section = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1]
            continue
        key, sep, value = line.partition("=")
        assert sep, f"not a directive: {raw!r}"
        out.append((section, key.strip(), value.strip()))
    return out


def values(text: str, section: str, key: str) -> list[str]:
    return [v for s, k, v in directives(text) if s == section and k == key]


def environment(text: str) -> dict[str, str]:
    env: dict[str, str] = {}
    for value in values(text, "Service", "Environment"):
        # One quoted assignment per line in these files.
        assert value.startswith('"') and value.endswith('"'), value
        name, _, val = value[1:-1].partition("=")
        assert name not in env, f"{name} set twice"
        env[name] = val
    return env


# ---------------------------------------------------------------- contents


@pytest.mark.parametrize("kind", ["gpu", "cpu"])
def test_common_shape_of_both_units(kind: str) -> None:
    text = template(kind)
    env = environment(text)
    assert env["OLLAMA_HOST"] == "127.0.0.1:%i", "loopback only, the instance is the port"
    assert values(text, "Service", "ExecStart") == [TEMPLATE_EXEC_LINE.split("=", 1)[1]]
    assert values(text, "Service", "Restart") == ["always"]
    assert values(text, "Service", "RestartSec") == ["3"]
    assert values(text, "Install", "WantedBy") == ["default.target"]
    # User units run as the user: no User=/Group=.
    keys = {k for _, k, _ in directives(text)}
    assert not keys & {"User", "Group"}
    # PATH set explicitly; systemd does not expand $PATH in Environment=.
    assert "PATH" in env and "$" not in env["PATH"]
    assert "/usr/bin" in env["PATH"].split(":")
    env_files = values(text, "Service", "EnvironmentFile")
    assert "-%h/.config/contextharbor/ollama.env" in env_files
    assert all(f.startswith("-") for f in env_files), "optional files need the leading '-'"


def test_cpu_unit_hides_every_gpu_and_does_not_prune() -> None:
    env = environment(template("cpu"))
    for name, value in CPU_HIDING.items():
        assert env.get(name) == value, name
    assert env["OLLAMA_NOPRUNE"] == "1"


def test_gpu_unit_hides_no_gpu() -> None:
    env = environment(template("gpu"))
    assert not set(env) & set(CPU_HIDING)


@pytest.mark.parametrize(("kind", "port"), [("gpu", GPU_PORT), ("cpu", CPU_PORT)])
def test_a_user_name_instance_is_refused_with_what_to_run_instead(kind: str, port: int) -> None:
    # The original design's `systemctl --user enable --now ollama-gpu@$USER.service` would
    # give OLLAMA_HOST=127.0.0.1:<user>. ExecStartPre refuses any instance that is not a
    # port, before ollama starts, and says which form to use.
    (guard,) = values(template(kind), "Service", "ExecStartPre")
    sh, dash_c, script = shlex.split(guard)
    assert (sh, dash_c) == ("/bin/sh", "-c")
    for instance in ("root", "alice", "11434x", ""):
        r = subprocess.run(
            ["/bin/sh", "-c", script.replace("%i", instance)],
            capture_output=True,
            text=True,
            timeout=10,
        )
        assert r.returncode == 1, instance
        assert f"ollama-{kind}@{instance}: the instance must be a port number" in r.stderr
        assert f"e.g. ollama-{kind}@{port}" in r.stderr and "docs/operations.md" in r.stderr
    ok = subprocess.run(
        ["/bin/sh", "-c", script.replace("%i", str(port))], capture_output=True, timeout=10
    )
    assert (ok.returncode, ok.stdout, ok.stderr) == (0, b"", b"")


@pytest.mark.parametrize("kind", ["gpu", "cpu"])
def test_no_inline_comments(kind: str) -> None:
    # systemd treats '#' or ';' only at the start of a line as a comment: after a value
    # it becomes part of the value (RestartSec=3 # s fails to parse, Environment= gets
    # extra assignments).
    for number, raw in enumerate(template(kind).splitlines(), 1):
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        assert "#" not in line, f"line {number}: inline '#': {raw!r}"
        assert " ;" not in line, f"line {number}: inline ';': {raw!r}"


# ---------------------------------------------------------------- systemd-analyze verify

# Lines systemd-analyze may print about the host rather than about our units: warnings
# for other unit files installed on the machine (it loads default.target and friends
# from /usr/lib, /etc, /run). In this repository's container nothing at all is printed
# for the good units (systemd 252); this only keeps other hosts from failing on their
# own unit files. Any line naming our files, or anything else, is a failure.
HOST_UNIT_LINE = re.compile(r"^/(?:usr/lib|usr/local/lib|lib|etc|run)/systemd/\S+:")


@pytest.fixture(scope="module")
def systemd_analyze() -> str:
    path = shutil.which("systemd-analyze")
    if path is None:
        reason = "systemd-analyze is not installed (apt-get install systemd)"
        if os.environ.get("CONTEXTHARBOR_REQUIRE_SYSTEMD") == "1":
            pytest.fail(f"{reason}, and CONTEXTHARBOR_REQUIRE_SYSTEMD=1")
        pytest.skip(reason)
    return path


def verify(analyze: str, tmp_path: Path, units: dict[str, str]) -> tuple[int, list[str]]:
    """Write units (instance name -> text) and verify them as user units.

    Returns the exit status and the stderr lines that are about our units.
    """
    unit_dir = tmp_path / "units"
    unit_dir.mkdir(exist_ok=True)
    paths = []
    for name, text in units.items():
        path = unit_dir / name
        path.write_text(text)
        paths.append(str(path))
    # `--user` needs a runtime directory; containers have no XDG_RUNTIME_DIR and then
    # systemd-analyze stops with "Failed to lookup RuntimeDirectory path" before reading
    # the units. A private empty one is the honest fix, not a filter.
    runtime = tmp_path / "runtime"
    runtime.mkdir(mode=0o700, exist_ok=True)
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(tmp_path / "home"),
        "XDG_RUNTIME_DIR": str(runtime),
        "LC_ALL": "C",
        "SYSTEMD_COLORS": "0",
        "SYSTEMD_PAGER": "",
    }
    proc = subprocess.run(
        [analyze, "--user", "verify", *paths],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    lines = [line for line in (proc.stderr + proc.stdout).splitlines() if line.strip()]
    ours = [
        line
        for line in lines
        if str(unit_dir) in line or "ollama-" in line or not HOST_UNIT_LINE.match(line)
    ]
    return proc.returncode, ours


def fake_ollama(tmp_path: Path) -> Path:
    path = tmp_path / "bin" / "ollama"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("#!/bin/sh\nexit 0\n")
    path.chmod(0o755)
    return path


def instances(texts: dict[str, str]) -> dict[str, str]:
    return {
        f"ollama-gpu@{GPU_PORT}.service": texts["gpu"],
        f"ollama-cpu@{CPU_PORT}.service": texts["cpu"],
    }


def test_repository_units_verify_cleanly(systemd_analyze: str, tmp_path: Path) -> None:
    # systemd-analyze checks that ExecStart= is executable; /usr/local/bin/ollama is
    # absent here, so point it at a stand-in, as the setup script does with the real one.
    ollama = fake_ollama(tmp_path)
    texts = {}
    for kind in ("gpu", "cpu"):
        text = template(kind)
        assert text.count(TEMPLATE_EXEC_LINE) == 1
        texts[kind] = text.replace(TEMPLATE_EXEC_LINE, f"ExecStart={ollama} serve")
    rc, problems = verify(systemd_analyze, tmp_path, instances(texts))
    assert problems == [], "\n".join(problems)
    assert rc == 0


def test_units_written_by_the_script_verify_cleanly(systemd_analyze: str, tmp_path: Path) -> None:
    ollama = fake_ollama(tmp_path)
    proc = subprocess.run(
        [
            "bash",
            str(SCRIPT),
            "--dry-run",
            "--gpu",
            "yes",
            "--ollama-bin",
            str(ollama),
            "--unit-dir",
            str(tmp_path / "never-written"),
        ],
        capture_output=True,
        text=True,
        env={
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(tmp_path / "home"),
            "LC_ALL": "C",
        },
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    texts = {}
    for kind in ("gpu", "cpu"):
        path = tmp_path / "never-written" / f"ollama-{kind}@.service"
        quoted = re.escape(str(path))
        match = re.search(
            rf"^----- {quoted} -----\n(.*?)^----- end of {quoted} -----$",
            proc.stdout,
            re.S | re.M,
        )
        assert match, proc.stdout
        texts[kind] = match.group(1)
        assert f"ExecStart={ollama} serve\n" in texts[kind]
    assert not (tmp_path / "never-written").exists()
    rc, problems = verify(systemd_analyze, tmp_path, instances(texts))
    assert problems == [], "\n".join(problems)
    assert rc == 0


def test_verify_is_not_vacuous(systemd_analyze: str, tmp_path: Path) -> None:
    """The check above would catch the original hybrid_router.py's inline comments."""
    ollama = fake_ollama(tmp_path)
    text = template("cpu").replace(TEMPLATE_EXEC_LINE, f"ExecStart={ollama} serve")
    text = text.replace("RestartSec=3", "RestartSec=3 # seconds")
    _, problems = verify(systemd_analyze, tmp_path, {f"ollama-cpu@{CPU_PORT}.service": text})
    assert any("RestartSec" in line or "sec value" in line for line in problems), problems


# ---------------------------------------------------------------- what systemd makes of them

SYSTEMD_BINARIES = ("/usr/lib/systemd/systemd", "/lib/systemd/systemd")


@pytest.fixture
def user_manager_test_mode() -> Iterator[tuple[list[str], Path]]:
    """A command prefix that runs `systemd --user --test`, and a world-readable scratch dir.

    `systemd --test` loads the units offline and dumps them with specifiers resolved,
    which is how we see `%i` become the port. It refuses to run as root, so as root it
    runs as `nobody` through runuser.
    """
    binary = next((b for b in SYSTEMD_BINARIES if os.access(b, os.X_OK)), None)
    prefix: list[str] = []
    problem = None
    if binary is None:
        problem = "the systemd binary is not installed (apt-get install systemd)"
    elif os.geteuid() == 0:
        if shutil.which("runuser") is None:
            problem = "running as root and runuser is missing (systemd --test refuses root)"
        else:
            prefix = ["runuser", "-u", "nobody", "--"]
    if problem:
        if os.environ.get("CONTEXTHARBOR_REQUIRE_SYSTEMD") == "1":
            pytest.fail(f"{problem}, and CONTEXTHARBOR_REQUIRE_SYSTEMD=1")
        pytest.skip(problem)
    scratch = Path(tempfile.mkdtemp(prefix="contextharbor-units-"))
    try:
        scratch.chmod(0o755)
        runtime = scratch / "runtime"
        runtime.mkdir(mode=0o700)
        if prefix:
            shutil.chown(runtime, user="nobody")
        yield [*prefix, str(binary)], scratch
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def test_systemd_resolves_the_port_into_the_environment(
    user_manager_test_mode: tuple[list[str], Path],
) -> None:
    command, scratch = user_manager_test_mode
    home = scratch / "home"
    unit_dir = home / ".config" / "systemd" / "user"
    unit_dir.mkdir(parents=True)
    ollama = fake_ollama(scratch)
    for kind in ("gpu", "cpu"):
        text = template(kind).replace(TEMPLATE_EXEC_LINE, f"ExecStart={ollama} serve")
        (unit_dir / f"ollama-{kind}@.service").write_text(text)
    for path in scratch.rglob("*"):
        if path.name != "runtime":
            path.chmod(0o755 if path.is_dir() or path == ollama else 0o644)

    def dump(unit: str) -> list[str]:
        *runner, systemd = command
        proc = subprocess.run(
            [
                *runner,
                "env",
                f"HOME={home}",
                f"XDG_RUNTIME_DIR={scratch / 'runtime'}",
                "LC_ALL=C",
                systemd,
                "--user",
                "--test",
                f"--unit={unit}",
                "--no-pager",
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert proc.returncode == 0, proc.stderr
        lines = proc.stdout.splitlines()
        start = lines.index(f"\t-> Unit {unit}:")
        end = next(
            (i for i in range(start + 1, len(lines)) if lines[i].startswith("\t-> Unit ")),
            len(lines),
        )
        return [line.strip() for line in lines[start:end]]

    cpu = dump(f"ollama-cpu@{CPU_PORT}.service")
    assert f"Environment: OLLAMA_HOST=127.0.0.1:{CPU_PORT}" in cpu
    for name, value in {**CPU_HIDING, "OLLAMA_NOPRUNE": "1"}.items():
        assert f"Environment: {name}={value}" in cpu
    assert f"EnvironmentFile: -{home}/.config/contextharbor/ollama.env" in cpu
    assert f"Command Line: {ollama} serve" in cpu
    assert "Restart: always" in cpu

    gpu = dump(f"ollama-gpu@{GPU_PORT}.service")
    assert f"Environment: OLLAMA_HOST=127.0.0.1:{GPU_PORT}" in gpu
    # The instance guard runs first, with the instance resolved.
    commands = [line for line in gpu if line.startswith("Command Line: ")]
    assert commands[0].startswith("Command Line: /bin/sh -c"), commands
    assert f'case \\"{GPU_PORT}\\" in' in commands[0], commands  # %i resolved
    assert commands[-1] == f"Command Line: {ollama} serve"
    assert not [line for line in gpu if "VISIBLE_DEVICES" in line]
    assert f"Command Line: {ollama} serve" in gpu


# ---------------------------------------------------------------- the proxy's unit

PROXY_UNIT = "contextharbor-serve.service"
PROXY_EXEC_LINE = "ExecStart=/usr/local/bin/contextharbor serve --host 127.0.0.1"
OLLAMA_UNITS = f"ollama-gpu@{GPU_PORT}.service ollama-cpu@{CPU_PORT}.service"


def proxy_template() -> str:
    return (UNIT_DIR / PROXY_UNIT).read_text()


def test_proxy_unit_binds_loopback_after_the_two_servers() -> None:
    text = proxy_template()
    (exec_start,) = values(text, "Service", "ExecStart")
    argv = shlex.split(exec_start)
    assert argv[1:] == ["serve", "--host", "127.0.0.1"], "loopback, the command's own port"
    # Ordered after the servers, and pulls them in; Wants=, so one down does not stop it.
    assert values(text, "Unit", "After") == [OLLAMA_UNITS]
    assert values(text, "Unit", "Wants") == [OLLAMA_UNITS]
    assert values(text, "Unit", "Requires") == [] and values(text, "Unit", "BindsTo") == []
    env = environment(text)
    assert env["OLLAMA_GPU_URL"] == f"http://127.0.0.1:{GPU_PORT}"
    assert env["OLLAMA_CPU_URL"] == f"http://127.0.0.1:{CPU_PORT}"
    assert "PATH" in env and "$" not in env["PATH"]
    assert values(text, "Service", "Restart") == ["always"]
    assert values(text, "Service", "NoNewPrivileges") == ["yes"]
    assert values(text, "Service", "EnvironmentFile") == [
        "-%h/.config/contextharbor/serve.env"
    ]
    assert values(text, "Install", "WantedBy") == ["default.target"]
    keys = {k for _, k, _ in directives(text)}
    assert not keys & {"User", "Group"}
    for number, raw in enumerate(text.splitlines(), 1):  # no inline comments
        line = raw.strip()
        if line and line[0] not in "#;":
            assert "#" not in line and " ;" not in line, f"line {number}: {raw!r}"


def fake_contextharbor(tmp_path: Path) -> Path:
    path = tmp_path / "bin" / "contextharbor"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("#!/bin/sh\nexit 0\n")
    path.chmod(0o755)
    return path


def test_repository_proxy_unit_verifies_cleanly(systemd_analyze: str, tmp_path: Path) -> None:
    ollama, ch = fake_ollama(tmp_path), fake_contextharbor(tmp_path)
    texts = {
        k: template(k).replace(TEMPLATE_EXEC_LINE, f"ExecStart={ollama} serve")
        for k in ("gpu", "cpu")
    }
    proxy = proxy_template()
    assert proxy.count(PROXY_EXEC_LINE) == 1
    proxy = proxy.replace(PROXY_EXEC_LINE, f"ExecStart={ch} serve --host 127.0.0.1")
    rc, problems = verify(systemd_analyze, tmp_path, {**instances(texts), PROXY_UNIT: proxy})
    assert problems == [], "\n".join(problems)
    assert rc == 0


def test_proxy_unit_written_by_the_script_verifies_cleanly(
    systemd_analyze: str, tmp_path: Path
) -> None:
    ollama, ch = fake_ollama(tmp_path), fake_contextharbor(tmp_path)
    out_dir = tmp_path / "never-written"
    proc = subprocess.run(
        [
            "bash", str(SCRIPT), "--dry-run", "--gpu", "yes", "--ollama-bin", str(ollama),
            "--with-proxy", "--contextharbor-bin", str(ch), "--unit-dir", str(out_dir),
        ],
        capture_output=True,
        text=True,
        env={
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(tmp_path / "home"),
            "LC_ALL": "C",
        },
        timeout=60,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    texts = {}
    for name in ("ollama-gpu@.service", "ollama-cpu@.service", PROXY_UNIT):
        quoted = re.escape(str(out_dir / name))
        match = re.search(
            rf"^----- {quoted} -----\n(.*?)^----- end of {quoted} -----$",
            proc.stdout,
            re.S | re.M,
        )
        assert match, proc.stdout
        texts[name] = match.group(1)
    assert f"ExecStart={ch} serve --host 127.0.0.1\n" in texts[PROXY_UNIT]
    assert not out_dir.exists()
    units = {
        f"ollama-gpu@{GPU_PORT}.service": texts["ollama-gpu@.service"],
        f"ollama-cpu@{CPU_PORT}.service": texts["ollama-cpu@.service"],
        PROXY_UNIT: texts[PROXY_UNIT],
    }
    rc, problems = verify(systemd_analyze, tmp_path, units)
    assert problems == [], "\n".join(problems)
    assert rc == 0


def test_proxy_verify_is_not_vacuous(systemd_analyze: str, tmp_path: Path) -> None:
    """A missing executable or a bad directive in the proxy's unit is caught."""
    ch = fake_contextharbor(tmp_path)
    text = proxy_template().replace(PROXY_EXEC_LINE, f"ExecStart={ch} serve --host 127.0.0.1")
    text = text.replace("NoNewPrivileges=yes", "NoNewPrivileges=perhaps")
    _, problems = verify(systemd_analyze, tmp_path, {PROXY_UNIT: text})
    assert any("boolean value" in line and "perhaps" in line for line in problems), problems
    missing = proxy_template()  # ExecStart= names /usr/local/bin/contextharbor, absent here
    _, problems = verify(systemd_analyze, tmp_path, {PROXY_UNIT: missing})
    assert any("contextharbor" in line for line in problems), problems
