"""scripts/setup_hybrid_ollama.sh, run for real against fake tools.

Each run gets a hermetic PATH: a directory of fakes (nvidia-smi, ollama, systemctl, ...)
followed by a directory of links to the few real tools the script needs (bash,
coreutils, grep, awk, curl). Nothing from the host leaks in: a host with a real GPU,
ollama or user bus behaves like any other. The fake systemctl records its arguments.
The "servers" are a small HTTP stub in a subprocess on ephemeral loopback ports.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "scripts" / "setup_hybrid_ollama.sh"
TEMPLATES = REPO / "systemd"

REAL_TOOLS = [
    "bash",
    "sh",
    "awk",
    "basename",
    "cat",
    "chmod",
    "cmp",
    "cp",
    "dirname",
    "grep",
    "head",
    "id",
    "mkdir",
    "mktemp",
    "mv",
    "rm",
    "sed",
    "sleep",
    "timeout",
    "tr",
    "curl",
]

FAKE_SYSTEMCTL = r"""#!/bin/sh
printf '%s\n' "$*" >> "$SYSTEMCTL_LOG"
if [ "$1" != "--user" ]; then echo "fake systemctl: only --user is expected" >&2; exit 64; fi
shift
case "$1" in
  show-environment)
    if [ "${FAKE_USER_BUS:-1}" = 0 ]; then
      echo "Failed to connect to bus: No medium found" >&2
      exit 1
    fi
    echo "HOME=/nonexistent"
    exit 0 ;;
  is-active) exit "${FAKE_IS_ACTIVE:-0}" ;;
esac
if [ "$1" = "${FAKE_FAIL:-}" ]; then echo "Job for $2 failed." >&2; exit 1; fi
exit 0
"""

GPU_TOOLS = {
    "nvidia": ("nvidia-smi", "echo 'GPU 0: NVIDIA H100 80GB HBM3 (UUID: GPU-0000)'"),
    "amd": (
        "rocm-smi",
        "printf '===== ROCm System Management Interface =====\\n"
        "GPU[0]\\t\\t: Card series: \\t\\tNavi 21 [Radeon RX 6800]\\n'",
    ),
    "vulkan": (
        "vulkaninfo",
        "printf 'GPU0:\\n\\tdeviceType         = PHYSICAL_DEVICE_TYPE_DISCRETE_GPU\\n"
        "\\tdeviceName         = AMD Radeon RX 7900 XTX (RADV NAVI31)\\n'",
    ),
    # Software rasteriser only: not a GPU.
    "llvmpipe": (
        "vulkaninfo",
        "printf 'GPU0:\\n\\tdeviceType         = PHYSICAL_DEVICE_TYPE_CPU\\n"
        "\\tdeviceName         = llvmpipe (LLVM 15.0.6, 256 bits)\\n'",
    ),
    # Installed but the driver is not loaded.
    "broken-nvidia": (
        "nvidia-smi",
        "echo 'NVIDIA-SMI has failed because it could not communicate with the driver.'; exit 9",
    ),
}

STUB_SERVER = r"""
import http.server, socket, sys, threading

class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        if self.path == "/api/version":
            body = b'{"version":"0.14.3"}'
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        else:
            self.send_error(404)
    def log_message(self, *args):
        pass

mode, count = sys.argv[1], int(sys.argv[2])
if mode == "free":
    socks = [socket.socket() for _ in range(count)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    print(" ".join(str(s.getsockname()[1]) for s in socks), flush=True)
    sys.exit(0)
servers = [http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler) for _ in range(count)]
for server in servers:
    threading.Thread(target=server.serve_forever, daemon=True).start()
print(" ".join(str(s.server_address[1]) for s in servers), flush=True)
sys.stdin.read()
"""


@dataclass
class Result:
    rc: int
    out: str
    err: str
    calls: list[str]
    seconds: float

    @property
    def text(self) -> str:
        return self.out + self.err


@dataclass
class Host:
    """A sandbox: fake tools, a HOME, a unit dir, a log of systemctl calls."""

    root: Path
    fakes: Path
    tools: Path
    home: Path
    tmp: Path
    log: Path
    env: dict[str, str] = field(default_factory=dict)

    @property
    def unit_dir(self) -> Path:
        return self.root / "units"

    @property
    def default_unit_dir(self) -> Path:
        return self.home / ".config" / "systemd" / "user"

    def fake(self, name: str, body: str) -> Path:
        path = self.fakes / name
        path.write_text("#!/bin/sh\n" + body + "\n")
        path.chmod(0o755)
        return path

    def remove(self, name: str) -> None:
        (self.fakes / name).unlink()

    def gpu(self, kind: str) -> None:
        tool, body = GPU_TOOLS[kind]
        self.fake(tool, body)

    def python_with_package(self) -> None:
        # A wrapper (not a symlink) so that a virtualenv interpreter keeps its venv.
        self.fake(
            "python3",
            f'PYTHONPATH="{REPO}${{PYTHONPATH:+:$PYTHONPATH}}" exec "{sys.executable}" "$@"',
        )

    def checkout(self, *, venv_cli: bool = False) -> Path:
        """A copy of the repository's script and units (and package folder), without .venv.

        The closing hint depends on the checkout it runs from; the real one may have a
        .venv (CI runs ``make test``), so hint tests run a copy. ``venv_cli`` adds a
        ``.venv/bin/contextharbor`` like the one ``make`` creates.
        """
        root = self.root / "checkout"
        if not root.exists():
            (root / "scripts").mkdir(parents=True)
            shutil.copy(SCRIPT, root / "scripts" / SCRIPT.name)
            shutil.copytree(TEMPLATES, root / "systemd")
            shutil.copytree(
                REPO / "langchain_contextharbor",
                root / "langchain_contextharbor",
                ignore=shutil.ignore_patterns("__pycache__"),
            )
        if venv_cli:
            cli = root / ".venv" / "bin" / "contextharbor"
            cli.parent.mkdir(parents=True, exist_ok=True)
            cli.write_text(
                f'#!/bin/sh\nPYTHONPATH="{REPO}" exec "{sys.executable}" '
                '-m langchain_contextharbor "$@"\n'
            )
            cli.chmod(0o755)
        return root

    def run(self, *args: str, script: Path = SCRIPT, cwd: Path | None = None, **env: str) -> Result:
        if self.log.exists():
            self.log.unlink()
        full_env = {
            "PATH": f"{self.fakes}:{self.tools}",
            "HOME": str(self.home),
            "TMPDIR": str(self.tmp),
            "SYSTEMCTL_LOG": str(self.log),
            "LC_ALL": "C",
            **self.env,
            **env,
        }
        start = time.monotonic()
        proc = subprocess.run(
            ["bash", str(script), *args],
            capture_output=True,
            text=True,
            env=full_env,
            cwd=cwd or self.root,
            timeout=60,
        )
        calls = self.log.read_text().splitlines() if self.log.exists() else []
        return Result(proc.returncode, proc.stdout, proc.stderr, calls, time.monotonic() - start)


@pytest.fixture
def host(tmp_path: Path) -> Host:
    fakes, tools, tmp = tmp_path / "fakes", tmp_path / "tools", tmp_path / "tmp"
    for d in (fakes, tools, tmp):
        d.mkdir()
    for name in REAL_TOOLS:
        real = shutil.which(name)
        if real is not None:
            (tools / name).symlink_to(real)
    if not (tools / "curl").exists():
        # Without curl the script probes with python3: a bare one (no site-packages),
        # so that it does not see this package.
        py = tools / "python3"
        py.write_text(f'#!/bin/sh\nexec "{sys.executable}" -I -S "$@"\n')
        py.chmod(0o755)
    h = Host(tmp_path, fakes, tools, tmp_path / "home", tmp, tmp_path / "systemctl.log")
    h.fake("ollama", "exit 0")
    h.fake("systemctl", FAKE_SYSTEMCTL)
    return h


@pytest.fixture
def stub_ports() -> Iterator[tuple[int, int]]:
    """Two loopback ports that answer GET /api/version like Ollama."""
    proc = subprocess.Popen(
        [sys.executable, "-c", STUB_SERVER, "serve", "2"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        gpu, cpu = (int(p) for p in proc.stdout.readline().split())
        yield gpu, cpu
    finally:
        proc.kill()
        proc.wait(timeout=10)


def free_ports(count: int) -> list[int]:
    out = subprocess.run(
        [sys.executable, "-c", STUB_SERVER, "free", str(count)],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    ).stdout
    return [int(p) for p in out.split()]


def mutating(calls: list[str]) -> list[str]:
    """systemctl calls that change something (probes filtered out)."""
    return [c for c in calls if c.split()[1] not in {"show-environment", "is-active"}]


def written_files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file())


def rendered(kind: str, ollama: Path) -> str:
    """What the script should write: the template with ExecStart= and PATH= filled in."""
    text = (TEMPLATES / f"ollama-{kind}@.service").read_text()
    text = text.replace("ExecStart=/usr/local/bin/ollama serve", f"ExecStart={ollama} serve")
    return re.sub(r'^Environment="PATH=', f'Environment="PATH={ollama.parent}:', text, flags=re.M)


# ---------------------------------------------------------------- help and usage


def test_help_documents_flags_and_exit_codes(host: Host) -> None:
    r = host.run("--help")
    assert r.rc == 0
    for flag in (
        "--dry-run",
        "--unit-dir",
        "--ollama-bin",
        "--gpu-port",
        "--cpu-port",
        "--no-start",
        "--wait-timeout",
        "--gpu",
        "--help",
    ):
        assert flag in r.out
    for code in range(8):
        assert re.search(rf"^  {code}  ", r.out, re.M), f"exit code {code} undocumented"
    assert r.calls == []


@pytest.mark.parametrize(
    "args",
    [
        ["--bogus"],
        ["--gpu-port", "70000"],
        ["--cpu-port", "x"],
        ["--gpu-port", "11435"],
        ["--gpu", "maybe"],
        ["--wait-timeout", "-1"],
        ["--unit-dir"],
    ],
)
def test_usage_errors_exit_2(host: Host, args: list[str]) -> None:
    r = host.run(*args)
    assert r.rc == 2, r.text
    assert "error:" in r.err
    assert mutating(r.calls) == []


# ---------------------------------------------------------------- dry run


def test_dry_run_on_a_gpu_host_shows_both_units_and_writes_nothing(host: Host) -> None:
    host.gpu("nvidia")
    r = host.run("--dry-run")
    assert r.rc == 0, r.text
    assert "GPU: nvidia (nvidia-smi -L: GPU 0: NVIDIA H100" in r.out
    ollama = host.fakes / "ollama"
    for kind in ("gpu", "cpu"):
        target = host.default_unit_dir / f"ollama-{kind}@.service"
        assert f"[dry-run] would create {target} with:" in r.out
        block = f"----- {target} -----\n{rendered(kind, ollama)}----- end of {target} -----"
        assert block in r.out
    for command in (
        "daemon-reload",
        "enable ollama-gpu@11434.service",
        "enable ollama-cpu@11435.service",
        "start ollama-gpu@11434.service",
        "start ollama-cpu@11435.service",
    ):
        assert f"[dry-run] would run: systemctl --user {command}\n" in r.out
    assert "would wait up to 30s for GET http://127.0.0.1:11435/api/version" in r.out
    assert "OLLAMA_GPU_URL=http://127.0.0.1:11434" in r.out
    assert not host.home.exists()
    assert written_files(host.tmp) == []
    assert mutating(r.calls) == []


def test_dry_run_on_a_host_without_gpu_shows_the_cpu_unit_only(host: Host) -> None:
    r = host.run("--dry-run")
    assert r.rc == 0, r.text
    assert "GPU: none detected" in r.out
    assert "ollama-cpu@.service with:" in r.out
    assert "ollama-gpu@" not in r.out
    assert "[dry-run] would run: systemctl --user enable ollama-cpu@11435.service" in r.out
    assert "only the CPU-only server" in r.out
    assert re.search(r"OLLAMA_GPU_URL= ", r.out)
    assert not host.home.exists()
    assert mutating(r.calls) == []


@pytest.mark.parametrize(
    ("tool", "reported", "gpu_unit"),
    [
        ("amd", "GPU: amd (rocm-smi", True),
        ("vulkan", "GPU: vulkan (vulkaninfo --summary: AMD Radeon RX 7900 XTX", True),
        ("llvmpipe", "GPU: none detected", False),
        ("broken-nvidia", "GPU: none detected", False),
    ],
)
def test_gpu_detection_by_vendor_tool(host: Host, tool: str, reported: str, gpu_unit: bool) -> None:
    host.gpu(tool)
    r = host.run("--dry-run")
    assert r.rc == 0, r.text
    assert reported in r.out
    assert ("ollama-gpu@.service with:" in r.out) is gpu_unit
    if tool == "vulkan":
        # Ollama's Vulkan backend is opt-in: say so, or the "GPU" server runs on the CPU.
        assert "OLLAMA_VULKAN=1" in r.err
    if tool == "broken-nvidia":
        assert "nvidia-smi is installed but lists no GPU" in r.out


def test_gpu_mode_overrides_detection(host: Host) -> None:
    host.gpu("nvidia")
    assert "ollama-gpu@" not in host.run("--dry-run", "--gpu", "no").out
    host.remove("nvidia-smi")
    assert "ollama-gpu@.service with:" in host.run("--dry-run", "--gpu=yes").out


def test_dry_run_works_without_systemd(host: Host) -> None:
    host.remove("systemctl")
    r = host.run("--dry-run")
    assert r.rc == 0, r.text
    assert "systemctl is not installed" in r.out
    assert "exit code 4" in r.out
    assert "[dry-run] would run: systemctl --user daemon-reload" in r.out
    assert not host.home.exists()


# ---------------------------------------------------------------- writing the units


def test_no_start_writes_and_enables_then_second_run_changes_nothing(host: Host) -> None:
    host.gpu("nvidia")
    r = host.run("--unit-dir", str(host.unit_dir), "--no-start")
    assert r.rc == 0, r.text
    ollama = host.fakes / "ollama"
    for kind in ("gpu", "cpu"):
        path = host.unit_dir / f"ollama-{kind}@.service"
        assert path.read_text() == rendered(kind, ollama)
        assert f"{path}: created" in r.out
        assert path.stat().st_mode & 0o777 == 0o644
    assert mutating(r.calls) == [
        "--user daemon-reload",
        "--user enable ollama-gpu@11434.service",
        "--user enable ollama-cpu@11435.service",
    ]
    assert "--no-start: enabled, not started" in r.out
    assert sorted(p.name for p in host.unit_dir.iterdir()) == [
        "ollama-cpu@.service",
        "ollama-gpu@.service",
    ]

    # Backdate the files so that any rewrite would show in the mtime.
    for path in host.unit_dir.iterdir():
        os.utime(path, ns=(1_000_000_000, 1_000_000_000))
    r2 = host.run("--unit-dir", str(host.unit_dir), "--no-start")
    assert r2.rc == 0, r2.text
    for kind in ("gpu", "cpu"):
        path = host.unit_dir / f"ollama-{kind}@.service"
        assert f"{path}: unchanged" in r2.out
        assert path.stat().st_mtime_ns == 1_000_000_000
    assert not any(c.split()[1] in {"start", "restart"} for c in r2.calls)
    assert written_files(host.tmp) == []


def test_no_start_with_unit_dir_works_without_systemd(host: Host) -> None:
    host.remove("systemctl")
    r = host.run("--unit-dir", str(host.unit_dir), "--no-start")
    assert r.rc == 0, r.text
    assert "only writing the unit files" in r.out
    assert (host.unit_dir / "ollama-cpu@.service").is_file()
    assert not (host.unit_dir / "ollama-gpu@.service").exists()


def test_ollama_bin_flag_and_unsafe_paths(host: Host) -> None:
    host.remove("ollama")
    other = host.root / "opt" / "ollama-0.14.3"
    other.mkdir(parents=True)
    binary = other / "ollama"
    binary.write_text("#!/bin/sh\n")
    binary.chmod(0o755)
    r = host.run("--dry-run", "--ollama-bin", str(binary))
    assert r.rc == 0, r.text
    assert f"ExecStart={binary} serve\n" in r.out
    assert f'Environment="PATH={other}:/usr/local/sbin:' in r.out

    spaced = host.root / "my apps" / "ollama"
    spaced.parent.mkdir()
    spaced.write_text("#!/bin/sh\n")
    spaced.chmod(0o755)
    r = host.run("--dry-run", "--ollama-bin", str(spaced))
    assert r.rc == 2
    assert "unsafe in a unit file" in r.err


# ---------------------------------------------------------------- starting and waiting


def test_full_run_starts_and_waits_for_both_servers(
    host: Host, stub_ports: tuple[int, int]
) -> None:
    gpu, cpu = stub_ports
    host.gpu("nvidia")
    args = ("--unit-dir", str(host.unit_dir), "--gpu-port", str(gpu), "--cpu-port", str(cpu))
    r = host.run(*args)
    assert r.rc == 0, r.text
    assert mutating(r.calls) == [
        "--user daemon-reload",
        f"--user enable ollama-gpu@{gpu}.service",
        f"--user enable ollama-cpu@{cpu}.service",
        f"--user start ollama-gpu@{gpu}.service",
        f"--user start ollama-cpu@{cpu}.service",
    ]
    assert f'127.0.0.1:{gpu} (ollama-gpu@{gpu}) answers: {{"version":"0.14.3"}}' in r.out
    assert f'127.0.0.1:{cpu} (ollama-cpu@{cpu}) answers: {{"version":"0.14.3"}}' in r.out
    assert f"OLLAMA_GPU_URL=http://127.0.0.1:{gpu} OLLAMA_CPU_URL=http://127.0.0.1:{cpu}" in r.out
    assert "loginctl enable-linger" in r.out

    # A changed unit file is rewritten and its running server restarted.
    cpu_unit = host.unit_dir / "ollama-cpu@.service"
    cpu_unit.write_text(cpu_unit.read_text().replace("RestartSec=3", "RestartSec=5"))
    r2 = host.run(*args)
    assert r2.rc == 0, r2.text
    assert f"{cpu_unit}: updated" in r2.out
    assert "RestartSec=3\n" in cpu_unit.read_text()
    assert f"--user restart ollama-cpu@{cpu}.service" in r2.calls
    assert f"--user start ollama-gpu@{gpu}.service" in r2.calls


def test_wait_times_out_with_a_pointer_to_the_journal(host: Host) -> None:
    gpu, cpu = free_ports(2)
    r = host.run(
        "--unit-dir",
        str(host.unit_dir),
        "--gpu-port",
        str(gpu),
        "--cpu-port",
        str(cpu),
        "--wait-timeout",
        "1",
        FAKE_IS_ACTIVE="3",
    )
    assert r.rc == 6, r.text
    assert "no answer from GET /api/version within 1s" in r.err
    assert f"journalctl --user -u ollama-cpu@{cpu}" in r.err
    assert 1 <= r.seconds < 10


def test_port_taken_by_another_server_exits_7(host: Host, stub_ports: tuple[int, int]) -> None:
    # Our unit is not active, yet the port answers: an `ollama serve` started by hand, say.
    _, cpu = stub_ports
    r = host.run("--unit-dir", str(host.unit_dir), "--cpu-port", str(cpu), FAKE_IS_ACTIVE="3")
    assert r.rc == 7, r.text
    assert "already taken by an Ollama server" in r.err
    assert "--cpu-port PORT" in r.err
    assert not any(c.split()[1] in {"start", "restart"} for c in r.calls)


@pytest.mark.parametrize("kind", ["gpu", "cpu"])
def test_a_taken_port_gets_the_advice_of_its_own_server(
    host: Host, stub_ports: tuple[int, int], kind: str
) -> None:
    """The CPU port taken got the GPU port's advice: "probably the system-wide
    ollama.service ... keep it as your GPU server and run this script with --gpu no",
    which leaves the CPU server's port as taken as before."""
    gpu, cpu = stub_ports
    free = free_ports(1)[0]
    host.gpu("nvidia")
    ports = {"gpu": (gpu, free), "cpu": (free, cpu)}[kind]
    argv = ("--dry-run", "--gpu-port", str(ports[0]), "--cpu-port", str(ports[1]))
    r = host.run(*argv, FAKE_IS_ACTIVE="3")
    assert r.rc == 0, r.text
    taken = ports[0] if kind == "gpu" else ports[1]
    assert f"127.0.0.1:{taken} is already taken by an Ollama server" in r.err
    assert r.err.count("already taken") == 1
    if kind == "gpu":
        assert "ollama.service" in r.err and "--gpu no" in r.err and "--gpu-port PORT" in r.err
        assert "--cpu-port" not in r.err
    else:
        assert "--cpu-port PORT" in r.err and "OLLAMA_CPU_URL=http://127.0.0.1:PORT" in r.err
        assert "--gpu no" not in r.err and "ollama.service" not in r.err
        assert "GPU server" not in r.err


@pytest.mark.parametrize("bus", ["user bus", "no user bus"])
def test_dry_run_over_a_port_in_use_warns_as_a_real_run_would(
    host: Host, stub_ports: tuple[int, int], bus: str
) -> None:
    _, cpu = stub_ports
    if bus == "no user bus":
        host.env["FAKE_USER_BUS"] = "0"
    r = host.run("--dry-run", "--cpu-port", str(cpu), FAKE_IS_ACTIVE="3")
    assert r.rc == 0, r.text
    assert f"127.0.0.1:{cpu} is already taken by an Ollama server" in r.err
    assert "A real run would stop here with exit code 7" in r.err
    assert "--cpu-port PORT" in r.err  # the CPU server's advice, not the GPU's --gpu no
    assert f"[dry-run] would run: systemctl --user start ollama-cpu@{cpu}.service" in r.out

    free_port = free_ports(1)[0]
    r = host.run("--dry-run", "--cpu-port", str(free_port), FAKE_IS_ACTIVE="3")
    assert r.rc == 0 and "already taken" not in r.err


def test_systemctl_failure_exits_5(host: Host) -> None:
    r = host.run("--unit-dir", str(host.unit_dir), "--no-start", FAKE_FAIL="enable")
    assert r.rc == 5, r.text
    assert "'systemctl --user enable ollama-cpu@11435.service' failed" in r.err


# ---------------------------------------------------------------- missing pieces


def test_missing_ollama_exits_3_before_writing(host: Host) -> None:
    host.remove("ollama")
    r = host.run("--unit-dir", str(host.unit_dir))
    assert r.rc == 3, r.text
    assert "ollama is not installed" in r.err
    assert "https://ollama.com/install.sh" in r.err
    assert "--ollama-bin" in r.err
    assert not host.unit_dir.exists()
    assert mutating(r.calls) == []

    r = host.run("--unit-dir", str(host.unit_dir), "--ollama-bin", str(host.root / "nope"))
    assert r.rc == 3
    assert "is not an executable file" in r.err


def test_dry_run_previews_before_ollama_is_installed(host: Host) -> None:
    host.remove("ollama")
    r = host.run("--dry-run")
    assert r.rc == 0, r.text
    assert "ollama is not installed" in r.err and "https://ollama.com/install.sh" in r.err
    assert "A real run would stop here with exit code 3" in r.err
    assert "ExecStart=/usr/local/bin/ollama serve" in r.out  # where install.sh puts it
    assert "[dry-run] would run: systemctl --user enable ollama-cpu@11435.service" in r.out
    assert not host.home.exists()
    assert mutating(r.calls) == []

    r = host.run("--dry-run", "--ollama-bin", str(host.root / "later" / "ollama"))
    assert r.rc == 0, r.text
    assert "is not an executable file" in r.err
    assert f"ExecStart={host.root}/later/ollama serve" in r.out


@pytest.mark.parametrize("no_bus", ["no user bus", "no systemctl"])
def test_without_a_user_service_manager_exits_4_before_writing(host: Host, no_bus: str) -> None:
    if no_bus == "no systemctl":
        host.remove("systemctl")
        expected = "systemctl is not installed"
    else:
        host.env["FAKE_USER_BUS"] = "0"
        expected = "Failed to connect to bus: No medium found"
    for args in ((), ("--no-start",), ("--unit-dir", str(host.unit_dir))):
        r = host.run(*args)
        assert r.rc == 4, (args, r.text)
        assert "cannot reach your user service manager" in r.err
        assert expected in r.err
        assert "--dry-run" in r.err
        assert not host.home.exists() and not host.unit_dir.exists()
        assert mutating(r.calls) == []


def test_units_enabled_in_the_designs_user_name_form_are_named_with_the_fix(host: Host) -> None:
    wants = host.unit_dir / "default.target.wants"
    wants.mkdir(parents=True)
    for unit in (
        "ollama-gpu@alice.service",
        "ollama-cpu@alice.service",
        "ollama-cpu@11435.service",
    ):
        (wants / unit).symlink_to(host.unit_dir / unit.replace("alice", "").replace("11435", ""))
    r = host.run("--dry-run", "--unit-dir", str(host.unit_dir))
    assert r.rc == 0, r.text
    assert "ollama-gpu@alice.service ollama-cpu@alice.service" in r.err
    assert (
        "systemctl --user disable --now ollama-gpu@alice.service ollama-cpu@alice.service" in r.err
    )
    assert "ollama-cpu@11435.service" not in r.err  # a port instance is ours

    shutil.rmtree(wants)
    r = host.run("--dry-run", "--unit-dir", str(host.unit_dir))
    assert "user name instead of a port" not in r.err


# ---------------------------------------------------------------- the closing hint


def _hint(out: str) -> str:
    (line,) = [x for x in out.splitlines() if x.startswith("Check the setup with: ")]
    return line.removeprefix("Check the setup with: ")


def _run_hint(host: Host, command: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """The hint pasted into a fresh shell (no venv, no PYTHONPATH) at ``cwd``."""
    dead = free_ports(1)[0]
    env = {
        "PATH": f"{host.fakes}:{host.tools}",
        "HOME": str(host.home),
        "OLLAMA_GPU_URL": "",
        "OLLAMA_CPU_URL": f"http://127.0.0.1:{dead}",
    }
    return subprocess.run(
        ["bash", "-c", command], capture_output=True, text=True, env=env, cwd=cwd, timeout=60
    )


def test_closing_hint_from_the_repository_root_without_the_package_installed(
    host: Host,
) -> None:
    checkout = host.checkout()
    # python3 without site-packages: from the repository root it would find the package's
    # folder but not its dependencies, so "python3 -m langchain_contextharbor" would fail.
    host.fake("python3", f'exec "{sys.executable}" -S "$@"')
    script = checkout / "scripts" / SCRIPT.name
    r = host.run("--dry-run", script=script, cwd=checkout)
    assert r.rc == 0, r.text
    assert "python3 -m langchain_contextharbor" not in r.out
    assert f"make -C {checkout} demo" in r.out
    assert f"python3 -m pip install {checkout}" in r.out
    assert "pip install langchain-contextharbor once it is published" in r.out


@pytest.mark.parametrize("installed", ["checkout .venv", "python3", "console script"])
def test_closing_hint_works_in_a_fresh_shell_at_the_repository_root(
    host: Host, installed: str
) -> None:
    checkout = host.checkout(venv_cli=installed == "checkout .venv")
    if installed == "python3":
        host.python_with_package()
    elif installed == "console script":
        host.fake(
            "contextharbor",
            f'PYTHONPATH="{REPO}" exec "{sys.executable}" -m langchain_contextharbor "$@"',
        )
    r = host.run("--dry-run", script=checkout / "scripts" / SCRIPT.name, cwd=checkout)
    command = _hint(r.out)
    expected = {
        "checkout .venv": f"{checkout}/.venv/bin/contextharbor check",
        "python3": "python3 -m langchain_contextharbor check",
        "console script": "contextharbor check",
    }[installed]
    assert command == expected
    done = _run_hint(host, command, cwd=checkout)
    # It ran the check (the only server is down: exit code 4), not "command not found".
    assert done.returncode == 4, done.stdout + done.stderr
    assert "0/1 backends healthy" in done.stdout


# ---------------------------------------------------------------- --with-proxy

PROXY_TEMPLATE_EXEC = "ExecStart=/usr/local/bin/contextharbor serve --host 127.0.0.1"


def rendered_proxy(
    contextharbor: Path, gpu: int | None, cpu: int, port_flag: str = ""
) -> str:
    """What the script should write for the proxy: the template with ExecStart=, PATH=,
    the Ollama units' ports and the backend URLs filled in."""
    text = (TEMPLATES / "contextharbor-serve.service").read_text()
    text = text.replace(
        PROXY_TEMPLATE_EXEC, f"ExecStart={contextharbor} serve --host 127.0.0.1{port_flag}"
    )
    text = re.sub(
        r'^Environment="PATH=', f'Environment="PATH={contextharbor.parent}:', text, flags=re.M
    )
    deps = (f"ollama-gpu@{gpu}.service " if gpu else "") + f"ollama-cpu@{cpu}.service"
    text = re.sub(r"^(After|Wants)=.*$", rf"\1={deps}", text, flags=re.M)
    gpu_url = f"http://127.0.0.1:{gpu}" if gpu else ""
    text = re.sub(
        r'^Environment="OLLAMA_GPU_URL=.*$', f'Environment="OLLAMA_GPU_URL={gpu_url}"', text,
        flags=re.M,
    )
    return re.sub(
        r'^Environment="OLLAMA_CPU_URL=.*$',
        f'Environment="OLLAMA_CPU_URL=http://127.0.0.1:{cpu}"',
        text,
        flags=re.M,
    )


@pytest.fixture
def stub_three() -> Iterator[tuple[int, int, int]]:
    """Three loopback ports that answer GET /api/version like Ollama (the proxy does too)."""
    proc = subprocess.Popen(
        [sys.executable, "-c", STUB_SERVER, "serve", "3"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        gpu, cpu, proxy = (int(p) for p in proc.stdout.readline().split())
        yield gpu, cpu, proxy
    finally:
        proc.kill()
        proc.wait(timeout=10)


def test_help_documents_the_proxy_flags(host: Host) -> None:
    r = host.run("--help")
    assert r.rc == 0
    for flag in ("--with-proxy", "--contextharbor-bin", "--proxy-port"):
        assert flag in r.out
    assert re.search(r"^  8  --with-proxy: contextharbor not found", r.out, re.M)


@pytest.mark.parametrize(
    "args",
    [
        ["--proxy-port", "8080"],  # without --with-proxy
        ["--contextharbor-bin", "/bin/true"],
        ["--with-proxy", "--proxy-port", "0"],
        ["--with-proxy", "--proxy-port", "11435"],  # the CPU server's
    ],
)
def test_proxy_usage_errors_exit_2(host: Host, args: list[str]) -> None:
    r = host.run("--dry-run", *args)
    assert r.rc == 2, r.text
    assert r.calls == [] or all(c.split()[1] == "show-environment" for c in r.calls)


def test_with_proxy_writes_enables_and_starts_it_after_the_servers(
    host: Host, stub_three: tuple[int, int, int]
) -> None:
    gpu, cpu, proxy = stub_three
    host.gpu("nvidia")
    ch = host.fake("contextharbor", 'test "$1 $2" = "serve --help"')
    args = (
        "--unit-dir", str(host.unit_dir), "--gpu-port", str(gpu), "--cpu-port", str(cpu),
        "--with-proxy", "--proxy-port", str(proxy),
    )  # fmt: skip
    r = host.run(*args)
    assert r.rc == 0, r.text
    unit = host.unit_dir / "contextharbor-serve.service"
    assert unit.read_text() == rendered_proxy(ch, gpu, cpu, f" --port {proxy}")
    assert unit.stat().st_mode & 0o777 == 0o644
    assert f"contextharbor: {ch}" in r.out and "serve extra" not in r.err
    assert mutating(r.calls) == [
        "--user daemon-reload",
        f"--user enable ollama-gpu@{gpu}.service",
        f"--user enable ollama-cpu@{cpu}.service",
        "--user enable contextharbor-serve.service",
        f"--user start ollama-gpu@{gpu}.service",
        f"--user start ollama-cpu@{cpu}.service",
        "--user start contextharbor-serve.service",
    ]
    assert f'127.0.0.1:{proxy} (contextharbor-serve) answers: {{"version":"0.14.3"}}' in r.out
    assert f"Proxy: http://127.0.0.1:{proxy} (status page at /" in r.out
    assert f"OLLAMA_HOST=127.0.0.1:{proxy}" in r.out

    # Twice: nothing changes. A changed unit: rewritten, and the running proxy restarted.
    r2 = host.run(*args)
    assert r2.rc == 0 and f"{unit}: unchanged" in r2.out
    assert "--user restart contextharbor-serve.service" not in r2.calls
    unit.write_text(unit.read_text().replace("RestartSec=3", "RestartSec=9"))
    r3 = host.run(*args)
    assert r3.rc == 0 and f"{unit}: updated" in r3.out
    assert "--user restart contextharbor-serve.service" in r3.calls


def test_with_proxy_on_a_cpu_only_host_names_the_cpu_server_alone(host: Host) -> None:
    ch = host.fake("contextharbor", "exit 0")
    r = host.run("--unit-dir", str(host.unit_dir), "--no-start", "--with-proxy")
    assert r.rc == 0, r.text
    text = (host.unit_dir / "contextharbor-serve.service").read_text()
    assert text == rendered_proxy(ch, None, 11435)
    assert "After=ollama-cpu@11435.service\n" in text
    assert "Wants=ollama-cpu@11435.service\n" in text
    assert 'Environment="OLLAMA_GPU_URL="\n' in text
    assert f"ExecStart={ch} serve --host 127.0.0.1\n" in text  # the default port: no flag
    assert "--user enable contextharbor-serve.service" in r.calls
    assert "start ollama-cpu@11435 contextharbor-serve" in r.out  # the --no-start hint


def test_with_proxy_finds_the_checkouts_venv(host: Host) -> None:
    root = host.checkout(venv_cli=True)
    r = host.run(
        "--dry-run", "--with-proxy", "--unit-dir", str(host.unit_dir),
        script=root / "scripts" / SCRIPT.name,
    )  # fmt: skip
    assert r.rc == 0, r.text
    assert f"ExecStart={root}/.venv/bin/contextharbor serve --host 127.0.0.1\n" in r.out


def test_with_proxy_without_contextharbor_exits_8_before_writing(host: Host) -> None:
    root = host.checkout()  # no .venv there, none on PATH
    script = root / "scripts" / SCRIPT.name
    r = host.run("--with-proxy", "--unit-dir", str(host.unit_dir), script=script)
    assert r.rc == 8, r.text
    assert "contextharbor is not installed" in r.err and "[serve]" in r.err
    assert not host.unit_dir.exists() and mutating(r.calls) == []
    # A dry run previews anyway, with the path a system-wide pip would use.
    r = host.run("--with-proxy", "--dry-run", script=script)
    assert r.rc == 0, r.text
    assert "A real run would stop here with exit code 8" in r.err
    assert "ExecStart=/usr/local/bin/contextharbor serve --host 127.0.0.1\n" in r.out


def test_with_proxy_warns_when_serve_does_not_run(host: Host) -> None:
    host.fake("contextharbor", "echo 'No module named starlette' >&2; exit 1")
    r = host.run("--dry-run", "--with-proxy")
    assert r.rc == 0, r.text
    assert "is the serve extra installed?" in r.err
