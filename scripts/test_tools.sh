#!/usr/bin/env bash
# Servers and browsers the tests use for real, from Debian's packages, installed once when absent:
# prometheus-pushgateway (metrics tests) and chromium (the report opened headless). Without root or
# apt-get the tests that need them skip and say why.
set -euo pipefail
log() { printf '[test-tools] %s\n' "$*" >&2; }

missing=()
[[ -x /usr/bin/prometheus-pushgateway ]] || missing+=(prometheus-pushgateway)
[[ -x /usr/bin/chromium ]] || missing+=(chromium)
[[ ${#missing[@]} -eq 0 ]] && { log "present: prometheus-pushgateway, chromium"; exit 0; }

if [[ $(id -u) -eq 0 ]]; then as_root=(); elif sudo -n true 2>/dev/null; then as_root=(sudo -n); else
  log "not root and no sudo: ${missing[*]} not installed; the tests that need them will skip"; exit 0
fi
if ! command -v apt-get >/dev/null; then
  log "no apt-get: ${missing[*]} not installed; the tests that need them will skip"; exit 0
fi
log "installing ${missing[*]} from Debian's packages (once)"
export DEBIAN_FRONTEND=noninteractive
if ! "${as_root[@]}" apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null 2>&1; then
  "${as_root[@]}" apt-get update -q >/dev/null 2>&1 || true
  "${as_root[@]}" apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null 2>&1 ||
    log "could not install ${missing[*]}; the tests that need them will skip"
fi
