#!/usr/bin/env bash
# System packages the test suite needs: systemd-analyze (unit-file tests), redis-server
# (fleet-mode tests start a real one on loopback) and chromium (the status page and the web
# example are checked in a real headless browser, tests/serve/); and ollama-js, the official
# JavaScript client that tests/fidelity drives against the stand-in (npm ci, pinned by its lock file).
# Idempotent and quiet; never fails the run by itself: the tests that need a tool skip
# with a reason when it is missing locally, but CI sets CONTEXTHARBOR_REQUIRE_SYSTEMD=1,
# CONTEXTHARBOR_REQUIRE_REDIS=1 and CONTEXTHARBOR_REQUIRE_CHROMIUM=1 (or CI=true) so that
# they fail there instead.
set -u
missing=()
command -v systemd-analyze >/dev/null 2>&1 || missing+=(systemd)
command -v redis-server >/dev/null 2>&1 || [ -x /usr/bin/redis-server ] || missing+=(redis-server)
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
if [ "${#missing[@]}" -gt 0 ]; then
  if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null) \
      || echo "ci_system_deps: could not install ${missing[*]}" >&2
  fi
fi
js_dir="$(cd "$(dirname "$0")/.." && pwd)/tests/fidelity/js"
if command -v npm >/dev/null 2>&1 && [ -f "$js_dir/package-lock.json" ]; then
  want=$(sed -n 's/.*"ollama": "\([^"]*\)".*/\1/p' "$js_dir/package.json" | head -n 1)
  have=$(sed -n 's/.*"version": "\([^"]*\)".*/\1/p' "$js_dir/node_modules/ollama/package.json" 2>/dev/null | head -n 1)
  if [ -z "$want" ] || [ "$want" != "$have" ]; then  # absent or another version: install
    (cd "$js_dir" && npm ci --no-audit --no-fund --loglevel=error >/dev/null) \
      || echo "ci_system_deps: npm ci failed in tests/fidelity/js" >&2
  fi
fi
exit 0
