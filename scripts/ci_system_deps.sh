#!/usr/bin/env bash
# System packages the test suite needs (systemd-analyze for the unit-file tests).
# Idempotent and quiet; never fails the run by itself: the tests that need a tool skip
# with a reason when it is missing locally, but CI sets CONTEXTHARBOR_REQUIRE_SYSTEMD=1.
set -u
if ! command -v systemd-analyze >/dev/null 2>&1; then
  if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq systemd >/dev/null) \
      || echo "ci_system_deps: could not install systemd" >&2
  fi
fi
exit 0
