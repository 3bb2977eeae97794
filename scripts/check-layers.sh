#!/usr/bin/env bash
# Fails when a crate depends on something its layer forbids (see docs/architecture.md):
# - dais-forward (the sans-IO core) must not pull in tokio, str0m, webrtc or rtc;
# - dais-signaling must not depend on dais-media, and dais-media not on dais-signaling;
# - dais-proto stays serde-only.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
fail=0
deny() { # crate pattern...
  local crate=$1; shift
  local tree
  tree=$(cargo tree -p "$crate" -e normal --prefix none --format '{p}' | awk '{print $1}' | sort -u)
  for pat in "$@"; do
    if grep -Eq "^(${pat})$" <<<"$tree"; then
      echo "layering violation: $crate depends on $(grep -E "^(${pat})$" <<<"$tree" | tr '\n' ' ')" >&2
      fail=1
    fi
  done
}
deny dais-forward 'tokio' 'str0m' 'webrtc' 'rtc' 'mio'
deny dais-signaling 'dais-media' 'str0m' 'webrtc'
deny dais-media 'dais-signaling' 'dais-proto'
deny dais-proto 'tokio' 'str0m' 'webrtc'
if [[ $fail == 0 ]]; then echo "layering ok"; fi
exit $fail
