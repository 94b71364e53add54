#!/usr/bin/env bash
# system-deps.sh — install the Debian packages meterray's local services need
# (PostgreSQL server + client, Mosquitto + clients, JDK 17, Maven; Node.js and npm for the web
# cabinet's browser libraries; Chromium for the cabinet's browser tests), only those
# missing. Idempotent: a quick no-op when everything is present. Run as root
# (or with sudo available) on Debian 12 / Ubuntu.
set -euo pipefail

# package -> command that proves it is usable ("-" = dpkg check only)
PACKAGES=(
  "postgresql:-"
  "postgresql-client:psql"
  "mosquitto:mosquitto"
  "mosquitto-clients:mosquitto_pub"
  "openjdk-17-jre-headless:java"
  "maven:mvn"
  "nodejs:node"
  "chromium:chromium"  # headless, driven by Playwright in tests/serve_apps/test_cabinet.py (its own browser download is not used)
)

log() { printf '[system-deps] %s\n' "$*"; }

is_installed() {
  local pkg=$1 cmd=$2
  dpkg-query -W -f='${db:Status-Status}' "$pkg" 2>/dev/null | grep -qx installed || return 1
  [[ $cmd == - ]] || command -v "$cmd" >/dev/null 2>&1 || [[ -x /usr/sbin/$cmd ]]
}

sudo_cmd() {
  if [[ $(id -u) -eq 0 ]]; then "$@"
  elif command -v sudo >/dev/null 2>&1; then sudo "$@"
  else log "not root and no sudo: cannot run: $*"; exit 1
  fi
}

main() {
  local missing=() entry pkg cmd
  for entry in "${PACKAGES[@]}"; do
    pkg=${entry%%:*} cmd=${entry#*:}
    if is_installed "$pkg" "$cmd"; then log "ok: $pkg"; else missing+=("$pkg"); fi
  done
  # Debian's nodejs comes without npm (its own package); NodeSource's nodejs includes it.
  command -v npm >/dev/null 2>&1 || missing+=("npm")
  if ((${#missing[@]} == 0)); then
    log "all system packages present"
    return 0
  fi
  log "installing: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  sudo_cmd apt-get update -q
  sudo_cmd apt-get install -y -q --no-install-recommends "${missing[@]}"
  log "done"
}

main "$@"
