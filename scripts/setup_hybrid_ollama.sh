#!/usr/bin/env bash
# Sets up two Ollama servers as systemd USER services for langchain-contextharbor:
#   ollama-gpu@11434  the GPU server (only when a GPU is found)
#   ollama-cpu@11435  a CPU-only server (every GPU hidden)
#   contextharbor-serve  with --with-proxy: the router as a local endpoint (docs/serve-status.md)
# The unit templates live in ../systemd/ next to this script; see docs/operations.md.
# Run it as your own user, not with sudo. Run with --help for the flags and exit codes.
set -euo pipefail

readonly EXIT_ERROR=1 EXIT_USAGE=2 EXIT_NO_OLLAMA=3 EXIT_NO_SYSTEMD=4
readonly EXIT_SYSTEMCTL=5 EXIT_NO_ANSWER=6 EXIT_PORT_TAKEN=7 EXIT_NO_CONTEXTHARBOR=8

readonly TEMPLATE_EXEC_LINE='ExecStart=/usr/local/bin/ollama serve'
readonly PROXY_EXEC_LINE='ExecStart=/usr/local/bin/contextharbor serve --host 127.0.0.1'
readonly PROXY_UNIT=contextharbor-serve.service
readonly DEFAULT_PROXY_PORT=11400 # contextharbor serve's own default
readonly DEFAULT_PATH='/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin'

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_DIR=$(cd "$SCRIPT_DIR/.." && pwd)
TEMPLATE_DIR="$REPO_DIR/systemd"
DEFAULT_UNIT_DIR="${XDG_CONFIG_HOME:-$HOME/.config}/systemd/user"

usage() {
  cat <<EOF
Usage: $(basename "$0") [options]

Installs two Ollama servers as systemd user services for langchain-contextharbor:
  ollama-gpu@PORT  GPU server on 127.0.0.1:11434 (only when a GPU is detected)
  ollama-cpu@PORT  CPU-only server on 127.0.0.1:11435 (all NVIDIA, AMD and Vulkan
                   devices hidden)
Steps: detect the GPU (nvidia-smi, rocm-smi, vulkaninfo), find ollama, write the
unit files (left alone when already up to date), systemctl --user daemon-reload,
enable and start the services, wait until both answer GET /api/version.
Running it twice changes nothing.

Options:
  --dry-run            print every action (files with their content, commands) and
                       change nothing; works without systemd
  --unit-dir DIR       where to write the unit files
                       (default: \${XDG_CONFIG_HOME:-\$HOME/.config}/systemd/user)
  --ollama-bin PATH    the ollama executable (default: command -v ollama)
  --gpu-port PORT      port of the GPU server (default: 11434)
  --cpu-port PORT      port of the CPU-only server (default: 11435)
  --gpu MODE           auto (default): detect; yes: set up the GPU server even if
                       no GPU is detected; no: CPU server only
  --no-start           write the files, daemon-reload and enable, but start nothing;
                       with --unit-dir it also works without systemd (then it only
                       writes the files)
  --wait-timeout SECS  how long to wait for the servers to answer (default: 30;
                       0 skips the wait)
  --with-proxy         also install contextharbor-serve.service: contextharbor serve
                       on 127.0.0.1 (Ollama's and OpenAI's APIs over the router, the
                       status page at /), started after the two servers
  --contextharbor-bin PATH
                       the contextharbor executable for --with-proxy (default:
                       command -v contextharbor, else the checkout's
                       .venv/bin/contextharbor)
  --proxy-port PORT    port of the proxy (default: 11400, contextharbor serve's own)
  -h, --help           show this help

Exit codes:
  0  success (also when nothing needed to change)
  1  other error (unit templates missing, a file could not be written, ...)
  2  usage error (unknown flag, bad value)
  3  ollama not found or not executable
  4  systemctl --user cannot reach a user service manager (no user bus)
  5  a systemctl --user command failed
  6  a server did not answer GET /api/version within --wait-timeout
  7  a port is already taken by something other than our unit (for example the
     system-wide ollama.service that Ollama's installer creates on 11434)
  8  --with-proxy: contextharbor not found or not executable
EOF
}

say() { printf '%s\n' "$*"; }
warn() { printf 'WARNING: %s\n' "$*" >&2; }
die() {
  local code=$1
  shift
  printf 'error: %s\n' "$*" >&2
  exit "$code"
}

# ---------------------------------------------------------------- arguments
DRY_RUN=0
NO_START=0
UNIT_DIR=""
OLLAMA_BIN_ARG=""
GPU_PORT=11434
CPU_PORT=11435
GPU_MODE=auto
WAIT_TIMEOUT=30
WITH_PROXY=0
CH_BIN_ARG=""
PROXY_PORT=$DEFAULT_PROXY_PORT

need_value() {
  [[ $# -ge 2 && -n $2 ]] || die "$EXIT_USAGE" "$1 needs a value (see --help)"
}

while [[ $# -gt 0 ]]; do
  arg=$1
  if [[ $arg == --*=* ]]; then
    set -- "${arg%%=*}" "${arg#*=}" "${@:2}"
    arg=$1
  fi
  case $arg in
    --dry-run) DRY_RUN=1; shift ;;
    --no-start) NO_START=1; shift ;;
    --unit-dir) need_value "$@"; UNIT_DIR=$2; shift 2 ;;
    --ollama-bin) need_value "$@"; OLLAMA_BIN_ARG=$2; shift 2 ;;
    --gpu-port) need_value "$@"; GPU_PORT=$2; shift 2 ;;
    --cpu-port) need_value "$@"; CPU_PORT=$2; shift 2 ;;
    --gpu) need_value "$@"; GPU_MODE=$2; shift 2 ;;
    --wait-timeout) need_value "$@"; WAIT_TIMEOUT=$2; shift 2 ;;
    --with-proxy) WITH_PROXY=1; shift ;;
    --contextharbor-bin) need_value "$@"; CH_BIN_ARG=$2; shift 2 ;;
    --proxy-port) need_value "$@"; PROXY_PORT=$2; shift 2 ;;
    -h | --help) usage; exit 0 ;;
    *) die "$EXIT_USAGE" "unknown argument: $arg (see --help)" ;;
  esac
done

valid_port() { [[ $1 =~ ^[0-9]{1,5}$ ]] && ((10#$1 >= 1 && 10#$1 <= 65535)); }
valid_port "$GPU_PORT" || die "$EXIT_USAGE" "--gpu-port must be a port number 1-65535, got '$GPU_PORT'"
valid_port "$CPU_PORT" || die "$EXIT_USAGE" "--cpu-port must be a port number 1-65535, got '$CPU_PORT'"
GPU_PORT=$((10#$GPU_PORT))
CPU_PORT=$((10#$CPU_PORT))
[[ $GPU_PORT != "$CPU_PORT" ]] || die "$EXIT_USAGE" "--gpu-port and --cpu-port must differ"
valid_port "$PROXY_PORT" || die "$EXIT_USAGE" "--proxy-port must be a port number 1-65535, got '$PROXY_PORT'"
PROXY_PORT=$((10#$PROXY_PORT))
[[ $PROXY_PORT != "$GPU_PORT" && $PROXY_PORT != "$CPU_PORT" ]] \
  || die "$EXIT_USAGE" "--proxy-port must differ from the Ollama servers' ports"
if [[ $WITH_PROXY == 0 && ( -n $CH_BIN_ARG || $PROXY_PORT != "$DEFAULT_PROXY_PORT" ) ]]; then
  die "$EXIT_USAGE" "--contextharbor-bin and --proxy-port go with --with-proxy"
fi
[[ $WAIT_TIMEOUT =~ ^[0-9]+$ ]] || die "$EXIT_USAGE" "--wait-timeout must be whole seconds, got '$WAIT_TIMEOUT'"
case $GPU_MODE in auto | yes | no) ;; *) die "$EXIT_USAGE" "--gpu must be auto, yes or no, got '$GPU_MODE'" ;; esac

UNIT_DIR_GIVEN=0
if [[ -n $UNIT_DIR ]]; then
  UNIT_DIR_GIVEN=1
else
  UNIT_DIR=$DEFAULT_UNIT_DIR
fi
[[ $UNIT_DIR == /* ]] || UNIT_DIR="$PWD/$UNIT_DIR"
UNIT_DIR=${UNIT_DIR%/}

if [[ $DRY_RUN == 1 ]]; then
  say "Dry run: nothing is written, enabled or started."
fi
if [[ ${EUID:-$(id -u)} == 0 && -n ${SUDO_USER:-} ]]; then
  warn "running under sudo: the services would belong to root, not to $SUDO_USER. Run this script as $SUDO_USER, without sudo."
fi

for kind in gpu cpu; do
  [[ -r "$TEMPLATE_DIR/ollama-$kind@.service" ]] \
    || die "$EXIT_ERROR" "unit template $TEMPLATE_DIR/ollama-$kind@.service not found (run the script from a checkout of the repository)"
done
if [[ $WITH_PROXY == 1 ]]; then
  [[ -r "$TEMPLATE_DIR/$PROXY_UNIT" ]] \
    || die "$EXIT_ERROR" "unit template $TEMPLATE_DIR/$PROXY_UNIT not found (run the script from a checkout of the repository)"
fi

# ---------------------------------------------------------------- GPU detection
# Probes run the vendor tools found on PATH (tests put fake ones first on PATH).
probe() {
  if command -v timeout >/dev/null 2>&1; then
    timeout 15 "$@" 2>/dev/null
  else
    "$@" 2>/dev/null
  fi
}

GPU_KIND=none
GPU_DETAIL=""
detect_gpu() {
  local out
  if command -v nvidia-smi >/dev/null 2>&1; then
    if out=$(probe nvidia-smi -L) && grep -q '^GPU [0-9]' <<<"$out"; then
      GPU_KIND=nvidia
      GPU_DETAIL="nvidia-smi -L: $(grep -m1 '^GPU [0-9]' <<<"$out")"
      return 0
    fi
    say "nvidia-smi is installed but lists no GPU (is the driver loaded?)."
  fi
  if command -v rocm-smi >/dev/null 2>&1; then
    if out=$(probe rocm-smi --showproductname) && grep -qE '^GPU\[[0-9]+\]' <<<"$out"; then
      GPU_KIND=amd
      GPU_DETAIL="rocm-smi --showproductname: $(grep -m1 -E '^GPU\[[0-9]+\]' <<<"$out" | tr -s ' \t' ' ')"
      return 0
    fi
    say "rocm-smi is installed but lists no GPU."
  fi
  if command -v vulkaninfo >/dev/null 2>&1; then
    # llvmpipe and other software rasterisers report PHYSICAL_DEVICE_TYPE_CPU: not a GPU.
    if out=$(probe vulkaninfo --summary) \
      && grep -qE 'deviceType *= *PHYSICAL_DEVICE_TYPE_(DISCRETE|INTEGRATED|VIRTUAL)_GPU' <<<"$out"; then
      GPU_KIND=vulkan
      GPU_DETAIL="vulkaninfo --summary: $(grep -m1 -E 'deviceName *=' <<<"$out" | sed -E 's/^[[:space:]]*deviceName *= *//')"
      return 0
    fi
    say "vulkaninfo is installed but lists no GPU device."
  fi
  return 0
}

detect_gpu
case $GPU_KIND in
  none) say "GPU: none detected (looked for nvidia-smi, rocm-smi, vulkaninfo on PATH)." ;;
  *) say "GPU: $GPU_KIND ($GPU_DETAIL)" ;;
esac
case $GPU_MODE in
  auto) if [[ $GPU_KIND == none ]]; then WANT_GPU=0; else WANT_GPU=1; fi ;;
  yes) WANT_GPU=1; [[ $GPU_KIND != none ]] || say "--gpu yes: setting up the GPU server anyway." ;;
  no) WANT_GPU=0; [[ $GPU_KIND == none ]] || say "--gpu no: the GPU server is not set up." ;;
esac
if [[ $WANT_GPU == 1 && $GPU_KIND == vulkan ]]; then
  warn "only a Vulkan GPU was found, and Ollama's Vulkan backend is opt-in: without it the GPU server runs on the CPU. Enable it with:
  mkdir -p ~/.config/contextharbor && echo OLLAMA_VULKAN=1 >> ~/.config/contextharbor/ollama-gpu.env"
fi

# ---------------------------------------------------------------- ollama
# no_ollama MESSAGE: a real run stops (exit 3); a dry run is a preview, which should work
# before ollama is installed: it says what a real run would do and goes on with the path.
no_ollama() {
  if [[ $DRY_RUN == 1 ]]; then
    warn "$1
A real run would stop here with exit code $EXIT_NO_OLLAMA. Previewing with $OLLAMA_BIN."
  else
    die "$EXIT_NO_OLLAMA" "$1"
  fi
}
if [[ -n $OLLAMA_BIN_ARG ]]; then
  OLLAMA_BIN=$OLLAMA_BIN_ARG
  [[ $OLLAMA_BIN == /* ]] || OLLAMA_BIN="$PWD/$OLLAMA_BIN"
  [[ -f $OLLAMA_BIN && -x $OLLAMA_BIN ]] \
    || no_ollama "--ollama-bin $OLLAMA_BIN_ARG is not an executable file"
else
  OLLAMA_BIN=$(command -v ollama 2>/dev/null) || OLLAMA_BIN=""
  if [[ $OLLAMA_BIN != /* ]]; then
    OLLAMA_BIN=/usr/local/bin/ollama # where Ollama's install.sh puts it
    no_ollama "ollama is not installed (not on PATH).
Install it (https://ollama.com/download/linux):  curl -fsSL https://ollama.com/install.sh | sh
or pass its location with --ollama-bin PATH."
  fi
fi
# The path goes into ExecStart=: refuse characters that systemd would interpret
# (whitespace, quotes, backslash, '%' specifiers, '$' variables).
[[ $OLLAMA_BIN =~ ^/[A-Za-z0-9._+@/-]+$ ]] \
  || die "$EXIT_USAGE" "the ollama path '$OLLAMA_BIN' contains characters that are unsafe in a unit file; use a path (or symlink) made of letters, digits and . _ + @ / -"
say "ollama: $OLLAMA_BIN"

# ---------------------------------------------------------------- contextharbor (--with-proxy)
if [[ $WITH_PROXY == 1 ]]; then
  no_contextharbor() {
    if [[ $DRY_RUN == 1 ]]; then
      warn "$1
A real run would stop here with exit code $EXIT_NO_CONTEXTHARBOR. Previewing with $CH_BIN."
    else
      die "$EXIT_NO_CONTEXTHARBOR" "$1"
    fi
  }
  if [[ -n $CH_BIN_ARG ]]; then
    CH_BIN=$CH_BIN_ARG
    [[ $CH_BIN == /* ]] || CH_BIN="$PWD/$CH_BIN"
    [[ -f $CH_BIN && -x $CH_BIN ]] \
      || no_contextharbor "--contextharbor-bin $CH_BIN_ARG is not an executable file"
  else
    CH_BIN=$(command -v contextharbor 2>/dev/null) || CH_BIN=""
    if [[ $CH_BIN != /* && -x "$REPO_DIR/.venv/bin/contextharbor" ]]; then
      CH_BIN="$REPO_DIR/.venv/bin/contextharbor" # made by `make demo` / `make test`
    fi
    if [[ $CH_BIN != /* ]]; then
      CH_BIN=/usr/local/bin/contextharbor
      no_contextharbor "contextharbor is not installed (not on PATH, no $REPO_DIR/.venv).
Install it with its serve extra:  python3 -m pip install '$REPO_DIR[serve]'
or pass its location with --contextharbor-bin PATH."
    fi
  fi
  [[ $CH_BIN =~ ^/[A-Za-z0-9._+@/-]+$ ]] \
    || die "$EXIT_USAGE" "the contextharbor path '$CH_BIN' contains characters that are unsafe in a unit file; use a path (or symlink) made of letters, digits and . _ + @ / -"
  if [[ -x $CH_BIN ]] && ! "$CH_BIN" serve --help >/dev/null 2>&1; then
    warn "'$CH_BIN serve --help' failed: is the serve extra installed? python3 -m pip install 'langchain-contextharbor[serve]'"
  fi
  say "contextharbor: $CH_BIN"
fi

# ---------------------------------------------------------------- systemd
SYSTEMCTL_OK=0
SYSTEMCTL_ERR=""
if ! command -v systemctl >/dev/null 2>&1; then
  SYSTEMCTL_ERR="systemctl is not installed"
elif SYSTEMCTL_ERR=$(systemctl --user show-environment 2>&1 >/dev/null); then
  SYSTEMCTL_OK=1
else
  SYSTEMCTL_ERR=${SYSTEMCTL_ERR:-"systemctl --user show-environment failed"}
fi
NO_SYSTEMD_HELP="systemctl --user cannot reach your user service manager: $SYSTEMCTL_ERR
This happens in containers, under WSL without systemd, and in shells opened with su/sudo
(no login session: log in as the user directly, or use 'machinectl shell USER@').
--dry-run shows the actions; --no-start --unit-dir DIR only writes the unit files."

USE_SYSTEMCTL=1
if [[ $SYSTEMCTL_OK == 0 ]]; then
  if [[ $DRY_RUN == 1 ]]; then
    say "Note: $NO_SYSTEMD_HELP"
    say "(A real run here would stop with exit code $EXIT_NO_SYSTEMD.)"
  elif [[ $NO_START == 1 && $UNIT_DIR_GIVEN == 1 ]]; then
    USE_SYSTEMCTL=0
    say "systemctl --user is not available ($SYSTEMCTL_ERR): only writing the unit files."
  else
    die "$EXIT_NO_SYSTEMD" "$NO_SYSTEMD_HELP"
  fi
fi

# Does systemd look for user units in UNIT_DIR? (Only a warning: --unit-dir is also
# used for packaging and for tests.)
in_search_path=1
if paths=$(systemd-analyze --user unit-paths 2>/dev/null); then
  grep -qxF "$UNIT_DIR" <<<"$paths" || in_search_path=0
else
  case $UNIT_DIR in
    "$DEFAULT_UNIT_DIR" | "$HOME/.config/systemd/user" | "$HOME/.local/share/systemd/user" \
      | /etc/systemd/user | /etc/xdg/systemd/user | /usr/lib/systemd/user \
      | /usr/local/lib/systemd/user | /lib/systemd/user) ;;
    *) in_search_path=0 ;;
  esac
fi
if [[ $in_search_path == 0 && $USE_SYSTEMCTL == 1 ]]; then
  warn "systemd does not look for user units in $UNIT_DIR: enabling them from there will fail unless you link them (systemctl --user link FILE)."
fi

# ---------------------------------------------------------------- the design's units
# The original design enabled ollama-gpu@$USER / ollama-cpu@$USER (a user name as the
# instance). Here the instance is the port, and such an instance is refused at start: name
# any that are enabled, with the command that removes them.
design_units=()
for link in "$UNIT_DIR"/*.wants/ollama-gpu@*.service "$UNIT_DIR"/*.wants/ollama-cpu@*.service; do
  [[ -e $link || -L $link ]] || continue
  unit=${link##*/}
  instance=${unit#*@}
  instance=${instance%.service}
  [[ $instance =~ ^[0-9]+$ ]] || design_units+=("$unit")
done
if [[ ${#design_units[@]} -gt 0 ]]; then
  warn "enabled with a user name instead of a port (the original design's form): ${design_units[*]}
These do not start here (the instance must be the port). Remove them with:
  systemctl --user disable --now ${design_units[*]}"
fi

# ---------------------------------------------------------------- unit files
WORK=$(mktemp -d "${TMPDIR:-/tmp}/contextharbor-setup.XXXXXX")
trap 'rm -rf "$WORK"' EXIT

# render KIND OUTFILE: the template with ExecStart= and PATH= filled in.
render() {
  local kind=$1 out=$2 bin_dir path_value
  bin_dir=$(dirname "$OLLAMA_BIN")
  path_value=$DEFAULT_PATH
  case ":$DEFAULT_PATH:" in *":$bin_dir:"*) ;; *) path_value="$bin_dir:$DEFAULT_PATH" ;; esac
  awk -v exec_line="ExecStart=$OLLAMA_BIN serve" -v path_line="Environment=\"PATH=$path_value\"" \
    -v template_exec="$TEMPLATE_EXEC_LINE" '
    $0 == template_exec { print exec_line; n_exec++; next }
    /^Environment="PATH=/ { print path_line; n_path++; next }
    { print }
    END { exit (n_exec == 1 && n_path == 1) ? 0 : 1 }
  ' "$TEMPLATE_DIR/ollama-$kind@.service" >"$out" \
    || die "$EXIT_ERROR" "template ollama-$kind@.service must contain exactly one '$TEMPLATE_EXEC_LINE' line and one Environment=\"PATH=...\" line"
}

if [[ $WANT_GPU == 1 ]]; then KINDS=(gpu cpu); else KINDS=(cpu); fi
declare -A PORT=([gpu]=$GPU_PORT [cpu]=$CPU_PORT [proxy]=$PROXY_PORT)
declare -A UNIT_NAME=([gpu]="ollama-gpu@$GPU_PORT" [cpu]="ollama-cpu@$CPU_PORT" [proxy]="${PROXY_UNIT%.service}")
declare -A CHANGED=()

# install_unit KEY NAME: write $WORK/NAME to UNIT_DIR/NAME unless it is there already;
# CHANGED[KEY] says what happened (no, create, update).
install_unit() {
  local key=$1 name=$2 target="$UNIT_DIR/$2" rendered="$WORK/$2" verb tmp
  if [[ -f $target ]] && cmp -s "$rendered" "$target"; then
    CHANGED[$key]=no
    say "$target: unchanged"
    return 0
  fi
  if [[ -e $target ]]; then verb=update; else verb=create; fi
  CHANGED[$key]=$verb
  if [[ $DRY_RUN == 1 ]]; then
    say "[dry-run] would $verb $target with:"
    say "----- $target -----"
    cat "$rendered"
    say "----- end of $target -----"
  else
    mkdir -p "$UNIT_DIR" || die "$EXIT_ERROR" "cannot create $UNIT_DIR"
    tmp="$UNIT_DIR/.$name.tmp.$$"
    { cp "$rendered" "$tmp" && chmod 0644 "$tmp" && mv -f "$tmp" "$target"; } \
      || { rm -f "$tmp"; die "$EXIT_ERROR" "cannot write $target"; }
    say "$target: ${verb}d"
  fi
}

for kind in "${KINDS[@]}"; do
  render "$kind" "$WORK/ollama-$kind@.service"
  install_unit "$kind" "ollama-$kind@.service"
done

# render_proxy OUTFILE: the proxy's template with ExecStart=, PATH=, the Ollama units'
# ports (After=, Wants=) and the backend URLs filled in; without a GPU server, only the
# CPU one is named and OLLAMA_GPU_URL is empty (the library then uses the CPU server alone).
render_proxy() {
  local out=$1 bin_dir path_value exec_line
  bin_dir=$(dirname "$CH_BIN")
  path_value=$DEFAULT_PATH
  case ":$DEFAULT_PATH:" in *":$bin_dir:"*) ;; *) path_value="$bin_dir:$DEFAULT_PATH" ;; esac
  exec_line="ExecStart=$CH_BIN serve --host 127.0.0.1"
  [[ $PROXY_PORT == "$DEFAULT_PROXY_PORT" ]] || exec_line+=" --port $PROXY_PORT"
  awk -v exec_line="$exec_line" -v path_line="Environment=\"PATH=$path_value\"" \
    -v template_exec="$PROXY_EXEC_LINE" -v gpu="ollama-gpu@$GPU_PORT.service" \
    -v cpu="ollama-cpu@$CPU_PORT.service" -v want_gpu="$WANT_GPU" \
    -v gpu_url="http://127.0.0.1:$GPU_PORT" -v cpu_url="http://127.0.0.1:$CPU_PORT" '
    $0 == template_exec { print exec_line; n_exec++; next }
    /^Environment="PATH=/ { print path_line; n_path++; next }
    /^(After|Wants)=/ {
      key = substr($0, 1, index($0, "="))
      print key (want_gpu == 1 ? gpu " " : "") cpu; n_dep++; next
    }
    /^Environment="OLLAMA_GPU_URL=/ {
      print "Environment=\"OLLAMA_GPU_URL=" (want_gpu == 1 ? gpu_url : "") "\""; n_url++; next
    }
    /^Environment="OLLAMA_CPU_URL=/ { print "Environment=\"OLLAMA_CPU_URL=" cpu_url "\""; n_url++; next }
    { print }
    END { exit (n_exec == 1 && n_path == 1 && n_dep == 2 && n_url == 2) ? 0 : 1 }
  ' "$TEMPLATE_DIR/$PROXY_UNIT" >"$out" \
    || die "$EXIT_ERROR" "template $PROXY_UNIT must contain exactly one '$PROXY_EXEC_LINE' line, one Environment=\"PATH=...\", one After=, one Wants= and the OLLAMA_GPU_URL / OLLAMA_CPU_URL lines"
}

if [[ $WITH_PROXY == 1 ]]; then
  render_proxy "$WORK/$PROXY_UNIT"
  install_unit proxy "$PROXY_UNIT"
fi

# ---------------------------------------------------------------- services
sc() {
  if [[ $DRY_RUN == 1 ]]; then
    say "[dry-run] would run: systemctl --user $*"
    return 0
  fi
  say "+ systemctl --user $*"
  systemctl --user "$@" || die "$EXIT_SYSTEMCTL" "'systemctl --user $*' failed; see: journalctl --user -xe"
}

# port_answers PORT: prints the /api/version body and succeeds when an Ollama server answers.
port_answers() {
  local url="http://127.0.0.1:$1/api/version" body
  if command -v curl >/dev/null 2>&1; then
    body=$(curl -fsS --max-time 2 "$url" 2>/dev/null) || return 1
  elif command -v python3 >/dev/null 2>&1; then
    body=$(python3 -c 'import sys, urllib.request
print(urllib.request.urlopen(sys.argv[1], timeout=2).read().decode())' "$url" 2>/dev/null) || return 1
  else
    die "$EXIT_ERROR" "need curl or python3 to check that the servers answer"
  fi
  [[ $body == *'"version"'* ]] || return 1
  printf '%s\n' "$body"
}

# port_open PORT: something accepts TCP connections on 127.0.0.1:PORT.
# shellcheck disable=SC2016 # $1 is expanded by the inner bash, on purpose
port_open() {
  local cmd=(bash -c 'exec 3<>"/dev/tcp/127.0.0.1/$1"' _ "$1")
  if command -v timeout >/dev/null 2>&1; then cmd=(timeout 2 "${cmd[@]}"); fi
  "${cmd[@]}" 2>/dev/null
}

# now_us: a clock in microseconds (bash 5 has EPOCHREALTIME; older bash: whole seconds).
now_us() {
  local t=${EPOCHREALTIME:-}
  t=${t//[!0-9]/}
  if [[ -n $t ]]; then printf '%s\n' "$((10#$t))"; else printf '%s\n' "$((SECONDS * 1000000))"; fi
}

STARTED=()
if [[ $USE_SYSTEMCTL == 1 ]]; then
  sc daemon-reload
  for kind in "${KINDS[@]}"; do
    sc enable "ollama-$kind@${PORT[$kind]}.service"
  done
  [[ $WITH_PROXY == 0 ]] || sc enable "$PROXY_UNIT"
  if [[ $NO_START == 1 ]]; then
    say "--no-start: enabled, not started. Start them with: systemctl --user start$(
      for kind in "${KINDS[@]}"; do printf ' ollama-%s@%s' "$kind" "${PORT[$kind]}"; done
      [[ $WITH_PROXY == 0 ]] || printf ' %s' "${PROXY_UNIT%.service}")"
  else
    for kind in "${KINDS[@]}"; do
      unit="ollama-$kind@${PORT[$kind]}.service"
      port=${PORT[$kind]}
      # Our unit counts as running only when systemctl can tell (a dry run may have none).
      active=0
      if [[ $SYSTEMCTL_OK == 1 ]] && systemctl --user is-active --quiet "$unit"; then active=1; fi
      if [[ $active == 0 ]] && port_open "$port"; then
        if version=$(port_answers "$port"); then
          what="an Ollama server ($version)"
        else
          what="another program"
        fi
        # The advice depends on the server: the installer's ollama.service takes the GPU
        # server's default port and can serve as it; nothing of the kind is a CPU server.
        if [[ $kind == gpu ]]; then
          taken="127.0.0.1:$port is already taken by $what, and $unit is not running.
It is probably the system-wide ollama.service from Ollama's installer. Either stop it
(sudo systemctl disable --now ollama), or pick another port (--gpu-port PORT),
or keep it as your GPU server and run this script with --gpu no."
        else
          taken="127.0.0.1:$port is already taken by $what, and $unit is not running.
The CPU-only server needs a port of its own: it hides every GPU, which a server started
elsewhere does not. Either stop that program (an 'ollama serve' you started by hand, say),
or pick another port with --cpu-port PORT and set OLLAMA_CPU_URL=http://127.0.0.1:PORT."
        fi
        if [[ $DRY_RUN == 1 ]]; then
          warn "$taken
A real run would stop here with exit code $EXIT_PORT_TAKEN."
        else
          die "$EXIT_PORT_TAKEN" "$taken"
        fi
      fi
      if [[ ${CHANGED[$kind]} == update ]]; then
        # A running server keeps its old settings until it is restarted.
        sc restart "$unit"
      else
        sc start "$unit"
      fi
      STARTED+=("$kind")
    done
    if [[ $WITH_PROXY == 1 ]]; then
      # After the servers (its unit orders itself after them too); no port check: an
      # Ollama-compatible answer on the port is what the wait below looks for.
      if [[ ${CHANGED[proxy]} == update ]]; then sc restart "$PROXY_UNIT"; else sc start "$PROXY_UNIT"; fi
      STARTED+=(proxy)
    fi
  fi
fi

# ---------------------------------------------------------------- wait
if [[ ${#STARTED[@]} -gt 0 && $WAIT_TIMEOUT -gt 0 ]]; then
  if [[ $DRY_RUN == 1 ]]; then
    for kind in "${STARTED[@]}"; do
      say "[dry-run] would wait up to ${WAIT_TIMEOUT}s for GET http://127.0.0.1:${PORT[$kind]}/api/version"
    done
  else
    say "Waiting up to ${WAIT_TIMEOUT}s for the servers to answer GET /api/version ..."
    deadline=$(($(now_us) + WAIT_TIMEOUT * 1000000))
    pending=("${STARTED[@]}")
    while :; do
      still=()
      for kind in "${pending[@]}"; do
        if version=$(port_answers "${PORT[$kind]}"); then
          say "127.0.0.1:${PORT[$kind]} (${UNIT_NAME[$kind]}) answers: $version"
        else
          still+=("$kind")
        fi
      done
      [[ ${#still[@]} -gt 0 ]] || break
      pending=("${still[@]}")
      if (($(now_us) >= deadline)); then
        msg="no answer from GET /api/version within ${WAIT_TIMEOUT}s:"
        for kind in "${pending[@]}"; do
          unit=${UNIT_NAME[$kind]}
          msg+="
  127.0.0.1:${PORT[$kind]}: see systemctl --user status $unit; journalctl --user -u $unit -n 50"
        done
        die "$EXIT_NO_ANSWER" "$msg"
      fi
      sleep 0.5
    done
  fi
fi

# ---------------------------------------------------------------- summary
say ""
if [[ $WANT_GPU == 1 ]]; then
  say "Servers: GPU http://127.0.0.1:$GPU_PORT, CPU-only http://127.0.0.1:$CPU_PORT"
  say "For contextharbor: OLLAMA_GPU_URL=http://127.0.0.1:$GPU_PORT OLLAMA_CPU_URL=http://127.0.0.1:$CPU_PORT"
else
  say "No GPU server was set up: only the CPU-only server (http://127.0.0.1:$CPU_PORT)."
  say "Leave the GPU URL empty for contextharbor: OLLAMA_GPU_URL= OLLAMA_CPU_URL=http://127.0.0.1:$CPU_PORT"
fi
if [[ $WITH_PROXY == 1 ]]; then
  say "Proxy: http://127.0.0.1:$PROXY_PORT (status page at /; point Ollama clients at it with OLLAMA_HOST=127.0.0.1:$PROXY_PORT, OpenAI clients at http://127.0.0.1:$PROXY_PORT/v1)"
fi
if command -v loginctl >/dev/null 2>&1 \
  && [[ $(loginctl show-user "$(id -un)" -p Linger --value 2>/dev/null || true) == yes ]]; then
  :
else
  say "To start them at boot without logging in: loginctl enable-linger $(id -un)"
fi
# The hint must work when pasted into a fresh shell, from any directory: so an installed
# console script, else the checkout's .venv (made by `make demo` / `make test`) by its full
# path, else a python3 that imports the package *with its dependencies* from outside the
# checkout (from the repository root, the checkout's folder alone would be found).
CHECKOUT_CLI="$REPO_DIR/.venv/bin/contextharbor"
if command -v contextharbor >/dev/null 2>&1; then
  say "Check the setup with: contextharbor check"
elif [[ -x $CHECKOUT_CLI ]]; then
  say "Check the setup with: $CHECKOUT_CLI check"
elif command -v python3 >/dev/null 2>&1 \
  && (cd / && python3 -c 'import langchain_contextharbor.cli') >/dev/null 2>&1; then
  say "Check the setup with: python3 -m langchain_contextharbor check"
else
  say "Check the setup with 'contextharbor check' once the package is installed. From this checkout:"
  say "  make -C $REPO_DIR demo      (creates $REPO_DIR/.venv; then: $CHECKOUT_CLI check)"
  say "  or: python3 -m pip install $REPO_DIR"
  say "  (pip install langchain-contextharbor once it is published on PyPI)"
fi
