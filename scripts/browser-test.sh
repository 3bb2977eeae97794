#!/usr/bin/env bash
# Real-browser tests: start the dais server on ephemeral loopback ports and run tests/browser
# (Playwright driving Debian's headless Chromium) against it. See shared/BROWSER-TESTING.md.
#
#   scripts/browser-test.sh              # uses target/debug/dais
#   DAIS_BIN=target/release/dais scripts/browser-test.sh
#
# Installs Chromium and the npm packages when missing (that needs the network), then re-executes
# itself once inside a private network namespace holding only `lo`, so every ICE candidate pair is
# 127.0.0.1 <-> 127.0.0.1. Where unshare is refused it runs in the default namespace.
# Environment: DAIS_BIN (server binary), DAIS_NO_NETNS=1 (skip the namespace),
# DAIS_TEST_LOG_DIR (where the server's output goes; default a temp dir), DAIS_BROWSER_TESTS (test files
# to run instead of all of tests/browser/, e.g. tests/browser/mlines.test.mjs).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
SELF="$ROOT/scripts/browser-test.sh"
log() { echo "browser-test: $*" >&2; }

install_missing() {
  local sudo=""
  [[ "$(id -u)" == 0 ]] || sudo="sudo"
  local pkgs=()
  [[ -x /usr/bin/chromium ]] || pkgs+=(chromium chromium-driver)
  command -v ip >/dev/null || pkgs+=(iproute2)
  [[ -x /usr/sbin/iptables ]] || command -v iptables >/dev/null || pkgs+=(iptables)   # tests/browser/loss.test.mjs drops packets with it
  command -v turnserver >/dev/null || pkgs+=(coturn)   # tests/browser/turn.test.mjs relays through a real TURN server
  if (( ${#pkgs[@]} )); then
    log "installing ${pkgs[*]}"
    $sudo apt-get update
    $sudo apt-get install -y --no-install-recommends "${pkgs[@]}"
  fi
  if [[ ! -d tests/browser/node_modules/playwright-core || ! -d tests/browser/node_modules/ws || ! -d tests/browser/node_modules/whip-whep ]]; then
    log "installing npm packages"
    (cd tests/browser && if [[ -f package-lock.json ]]; then npm ci --no-audit --no-fund; else npm install --no-audit --no-fund; fi)
  fi
}

case "${DAIS_BROWSER_TEST_NETNS:-}" in
  inside)
    ip link set lo up
    ;;
  default)
    ;;
  *)
    install_missing
    if [[ "${DAIS_NO_NETNS:-}" != 1 ]] && unshare -n true 2>/dev/null; then
      DAIS_BROWSER_TEST_NETNS=inside exec unshare -n -- bash "$SELF" "$@"
    fi
    log "no private network namespace (unshare -n refused or DAIS_NO_NETNS=1); using the default one"
    export DAIS_BROWSER_TEST_NETNS=default
    ;;
esac

export DAIS_BIN="${DAIS_BIN:-target/debug/dais}"   # tests that need a server of their own start this one
if [[ ! -x "$DAIS_BIN" ]]; then
  log "no server binary at $DAIS_BIN (build it with: cargo build -p dais-server)"
  exit 1
fi

LOG_DIR="${DAIS_TEST_LOG_DIR:-$(mktemp -d "${TMPDIR:-/tmp}/dais-browser-test.XXXXXX")}"
mkdir -p "$LOG_DIR"
SERVER_OUT="$LOG_DIR/server.stdout"
SERVER_ERR="$LOG_DIR/server.stderr"
SERVER_PID=""

cleanup() {
  local rc=$?
  if [[ -n "$SERVER_PID" ]] && kill -0 "$SERVER_PID" 2>/dev/null; then
    kill "$SERVER_PID" 2>/dev/null || true
    for _ in $(seq 50); do kill -0 "$SERVER_PID" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$SERVER_PID" 2>/dev/null || true
    wait "$SERVER_PID" 2>/dev/null || true
  fi
  if [[ $rc != 0 && -s "$SERVER_ERR" ]]; then
    log "last lines of the server's stderr ($SERVER_ERR):"
    tail -n 40 "$SERVER_ERR" >&2
  fi
  exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# An admin key for tests/browser/admin.test.mjs (promote/demote in place through the admin API).
export DAIS_ADMIN_KEY="browser-test-$RANDOM$RANDOM"
"$DAIS_BIN" --http-addr 127.0.0.1:0 --media-addr 127.0.0.1:0 >"$SERVER_OUT" 2>"$SERVER_ERR" &
SERVER_PID=$!

READY=""
for _ in $(seq 300); do   # 30 s
  READY="$(grep -m1 -E '^dais ready http=[0-9.]+:[0-9]+ media=[0-9.]+:[0-9]+ tcp=([0-9.]+:[0-9]+|off)$' "$SERVER_OUT" || true)"
  [[ -n "$READY" ]] && break
  if ! kill -0 "$SERVER_PID" 2>/dev/null; then
    log "the server exited before it was ready"
    exit 1
  fi
  sleep 0.1
done
if [[ -z "$READY" ]]; then
  log "no 'dais ready' line from the server within 30 s"
  exit 1
fi

HTTP_ADDR="${READY#dais ready http=}"
HTTP_ADDR="${HTTP_ADDR%% *}"
export DAIS_URL="http://$HTTP_ADDR"
DAIS_MEDIA_ADDR="${READY##* media=}"
export DAIS_MEDIA_ADDR="${DAIS_MEDIA_ADDR%% *}"
export DAIS_MEDIA_TCP_ADDR="${READY##* tcp=}"
log "server pid $SERVER_PID at $DAIS_URL, media $DAIS_MEDIA_ADDR, tcp $DAIS_MEDIA_TCP_ADDR, namespace: $DAIS_BROWSER_TEST_NETNS, logs in $LOG_DIR"

# One test file at a time: they share the server, and loss.test.mjs drops some of its packets.
# shellcheck disable=SC2086 # DAIS_BROWSER_TESTS is a list of paths
node --test --test-concurrency=1 ${DAIS_BROWSER_TESTS:-tests/browser/}
