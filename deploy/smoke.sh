#!/usr/bin/env bash
# Proves the container image on a machine with no Docker engine and no registry (see deploy/README.md):
#   1. installs podman, runc, debootstrap and curl from Debian if missing;
#   2. makes the two base images deploy/Dockerfile names in its FROM lines, locally and only when
#      `podman image exists` says they are missing: the runtime image from `debootstrap --variant=minbase`
#      + `podman import`, the Rust build image from it + gcc/libc6-dev + this machine's Rust toolchain;
#   3. builds deploy/Dockerfile unmodified with `podman build --pull=never` (cargo downloads crates);
#   4. runs the image (runtime runc, host network, lowered ulimits) on free ports, waits for /readyz,
#      runs the image's own HEALTHCHECK, and checks the user is non-root;
#   5. runs crates/dais-client/examples/smoke.rs: a speaker and a viewer, media must flow intact;
#   6. sends SIGTERM with `podman kill`: /readyz turns 503 and a late join is refused while the
#      participants are still connected, media keeps flowing, they leave, and the container exits 0.
# Run as root from anywhere. Every step is logged with its time; a summary of the phases closes the run.
# Idempotent: containers and temporary files are removed on every exit; the images are kept as a cache
# (`podman rmi localhost/dais:smoke <base images>` to start from nothing).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

DOCKERFILE=deploy/Dockerfile
IMAGE=${DAIS_SMOKE_IMAGE:-localhost/dais:smoke}
SUITE=bookworm
DRAIN_TIMEOUT=60

T0=$(date +%s)
PHASES=()
phase_name=""
phase_t0=0
# Run a command with its output indented; its own exit status is returned.
indented() {
  "$@" 2>&1 | sed 's/^/    /'
  return "${PIPESTATUS[0]}"
}
log() { printf '[smoke +%4ss] %s\n' "$(($(date +%s) - T0))" "$*"; }
die() {
  log "FAILED: $*"
  exit 1
}
phase() {
  phase_end
  phase_name=$1
  phase_t0=$(date +%s)
  log "== $phase_name"
}
phase_end() {
  if [ -n "$phase_name" ]; then
    local d=$(($(date +%s) - phase_t0))
    PHASES+=("$(printf '%5ss  %s' "$d" "$phase_name")")
    log "   $phase_name took ${d}s"
    phase_name=""
  fi
}

WORK=""
CTR=""
CLIENT_PID=""
cleanup() {
  local rc=$?
  set +e
  if [ -n "$CLIENT_PID" ] && kill -0 "$CLIENT_PID" 2>/dev/null; then kill "$CLIENT_PID"; fi
  if [ -n "$CTR" ]; then
    if [ "$rc" -ne 0 ]; then
      log "container log (last 40 lines):"
      podman logs --tail 40 "$CTR" 2>&1 | sed 's/^/    /'
    fi
    podman rm -f -t 0 "$CTR" >/dev/null 2>&1
  fi
  [ -n "$WORK" ] && rm -rf "$WORK"
  if [ "$rc" -eq 0 ]; then
    phase_end
    log "phases:"
    printf '    %s\n' "${PHASES[@]}"
    log "PASSED in $(($(date +%s) - T0))s"
  else
    log "FAILED (exit $rc) after $(($(date +%s) - T0))s"
  fi
}
trap cleanup EXIT

[ "$(id -u)" -eq 0 ] || die "run as root (apt-get, podman storage)"

# ---------------------------------------------------------------------------------------------------
phase "tools: podman, runc, debootstrap, curl"
missing=()
for pair in podman:podman runc:runc debootstrap:debootstrap curl:curl; do
  command -v "${pair%%:*}" >/dev/null 2>&1 || missing+=("${pair#*:}")
done
if [ "${#missing[@]}" -gt 0 ]; then
  log "installing ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
log "$(podman --version), $(runc --version | head -n1)"

# Containers here get at most the sandbox's hard open-files limit (podman's default of 1048576 is
# refused); host networking needs no CNI/netavark, and runc is Debian's runtime that works here.
NOFILE=$(ulimit -Hn)
if [ "$NOFILE" = unlimited ] || [ "$NOFILE" -gt 65536 ]; then NOFILE=65536; fi
PODMAN=(podman --runtime runc)
LIMITS=(--ulimit "nofile=$NOFILE:$NOFILE" --ulimit "nproc=4096:4096")

# The FROM names, read from the Dockerfile so the local images match it exactly.
arg_default() { sed -n "s/^ARG $1=\(.*\)$/\1/p" "$DOCKERFILE" | head -n1; }
RUST_IMAGE=$(arg_default RUST_IMAGE)
RUNTIME_IMAGE=$(arg_default RUNTIME_IMAGE)
{ [ -n "$RUST_IMAGE" ] && [ -n "$RUNTIME_IMAGE" ]; } || die "ARG RUST_IMAGE= / ARG RUNTIME_IMAGE= not found in $DOCKERFILE"
log "base images: $RUNTIME_IMAGE, $RUST_IMAGE"
WORK=$(mktemp -d "${TMPDIR:-/var/tmp}/dais-smoke.XXXXXX")

# ---------------------------------------------------------------------------------------------------
phase "base image $RUNTIME_IMAGE (debootstrap + podman import)"
if podman image exists "$RUNTIME_IMAGE"; then
  log "cached"
else
  # The Debian mirror apt is configured with (deb822 or one-line format).
  MIRROR=${DAIS_SMOKE_MIRROR:-$(
    { cat /etc/apt/sources.list.d/*.sources /etc/apt/sources.list 2>/dev/null || true; } |
      { grep -oE 'https?://[^ ]+/debian/?( |$)' || true; } | head -n1 | tr -d ' '
  )}
  MIRROR=${MIRROR:-http://deb.debian.org/debian}
  log "debootstrap --variant=minbase $SUITE from $MIRROR"
  debootstrap --variant=minbase "$SUITE" "$WORK/rootfs" "$MIRROR" >"$WORK/debootstrap.log" 2>&1 ||
    { tail -n 20 "$WORK/debootstrap.log"; die "debootstrap"; }
  # Slim it the way the official image is: no package cache, no package lists.
  rm -rf "$WORK"/rootfs/var/cache/apt/archives/*.deb "$WORK"/rootfs/var/lib/apt/lists/* "$WORK"/rootfs/tmp/*
  tar --numeric-owner -C "$WORK/rootfs" -c . |
    podman import \
      --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
      --change 'CMD ["bash"]' - "$RUNTIME_IMAGE" >/dev/null
  rm -rf "$WORK/rootfs"
  log "imported $(podman image inspect --format '{{.Size}}' "$RUNTIME_IMAGE") bytes"
fi

# ---------------------------------------------------------------------------------------------------
phase "base image $RUST_IMAGE (runtime image + gcc + this machine's Rust toolchain)"
if podman image exists "$RUST_IMAGE"; then
  log "cached"
else
  SYSROOT=$(rustc --print sysroot)
  TOOLCHAIN=$(basename "$SYSROOT")
  log "toolchain $TOOLCHAIN: $(rustc --version)"
  want=$(sed -n 's|.*/rust:\([0-9.]*\).*|\1|p' <<<"$RUST_IMAGE")
  case "$(rustc --version | cut -d' ' -f2)" in
    "$want" | "$want".*) ;;
    *) log "note: $RUST_IMAGE is made from rustc $(rustc --version | cut -d' ' -f2)" ;;
  esac
  mkdir -p "$WORK/rust-ctx/toolchain"
  # cargo in the build must trust the certificate authorities this machine trusts (its HTTPS may pass
  # through an inspecting proxy whose CA only the host's bundle carries).
  cp /etc/ssl/certs/ca-certificates.crt "$WORK/rust-ctx/ca-certificates.crt"
  # Hard links when the toolchain is on the same file system, a copy otherwise; share/ (docs) is left out.
  for d in bin lib libexec etc; do
    [ -d "$SYSROOT/$d" ] || continue
    cp -al "$SYSROOT/$d" "$WORK/rust-ctx/toolchain/" 2>/dev/null || cp -a "$SYSROOT/$d" "$WORK/rust-ctx/toolchain/"
  done
  # Laid out like the official rust image: RUSTUP_HOME=/usr/local/rustup, CARGO_HOME=/usr/local/cargo.
  cat >"$WORK/rust-ctx/Containerfile" <<EOF
FROM $RUNTIME_IMAGE
RUN export DEBIAN_FRONTEND=noninteractive && apt-get -qq -o Acquire::Languages=none update \\
    && apt-get install -y -qq --no-install-recommends ca-certificates gcc libc6-dev >/dev/null \\
    && rm -rf /var/lib/apt/lists/*
COPY ca-certificates.crt /etc/ssl/certs/ca-certificates.crt
COPY toolchain /usr/local/rustup/toolchains/$TOOLCHAIN
RUN mkdir -p /usr/local/cargo/bin && for b in cargo rustc rustdoc; do \\
      ln -s /usr/local/rustup/toolchains/$TOOLCHAIN/bin/\$b /usr/local/cargo/bin/\$b; done
ENV RUSTUP_HOME=/usr/local/rustup CARGO_HOME=/usr/local/cargo \\
    PATH=/usr/local/cargo/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
RUN cargo --version && rustc --version && cc --version | head -n1 && objcopy --version | head -n1
EOF
  indented "${PODMAN[@]}" build --pull=never --network host "${LIMITS[@]}" -t "$RUST_IMAGE" \
    -f "$WORK/rust-ctx/Containerfile" "$WORK/rust-ctx" || die "building $RUST_IMAGE"
  rm -rf "$WORK/rust-ctx"
fi

# ---------------------------------------------------------------------------------------------------
phase "podman build $DOCKERFILE -> $IMAGE (release build inside the container)"
# Docker image format: the OCI format has no HEALTHCHECK. cargo's per-crate lines are left out of the
# output; errors and every other line are shown.
quiet_cargo() { grep --line-buffered -vE '^\s+(Compiling|Downloaded|Downloading|Checking|Fresh) ' || true; }
build_image() {
  "${PODMAN[@]}" build --format docker --pull=never --network host "${LIMITS[@]}" \
    -f "$DOCKERFILE" -t "$IMAGE" . 2>&1 | quiet_cargo | sed 's/^/    /'
  return "${PIPESTATUS[0]}"
}
build_image || die "podman build"
log "image size: $(podman image inspect --format '{{.Size}}' "$IMAGE") bytes"

# ---------------------------------------------------------------------------------------------------
phase "cargo build --example smoke -p dais-client (on the host)"
cargo build --quiet --example smoke -p dais-client
TARGET_DIR=$(cargo metadata --format-version 1 --no-deps |
  python3 -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])')
CLIENT=$TARGET_DIR/debug/examples/smoke
[ -x "$CLIENT" ] || die "no $CLIENT"

# ---------------------------------------------------------------------------------------------------
phase "start the container and wait for /readyz"
read -r HTTP_PORT MEDIA_PORT TCP_PORT < <(python3 -c '
import socket
t = socket.socket(); t.bind(("127.0.0.1", 0))
u = socket.socket(type=socket.SOCK_DGRAM); u.bind(("127.0.0.1", 0))
m = socket.socket(); m.bind(("127.0.0.1", 0))
print(t.getsockname()[1], u.getsockname()[1], m.getsockname()[1])')
BASE=http://127.0.0.1:$HTTP_PORT
status() { curl -s -o /dev/null -m 5 -w '%{http_code}' "$BASE$1" || true; }
CTR=dais-smoke-$$
# Arguments after the image replace its CMD; DAIS_HTTP_ADDR tells the HEALTHCHECK the port.
# Without systemd podman cannot schedule the health check timer and says so; `podman healthcheck run`
# below runs the check itself, so that complaint is only shown if the start fails.
"${PODMAN[@]}" run -d --name "$CTR" --network host "${LIMITS[@]}" \
  -e "DAIS_HTTP_ADDR=0.0.0.0:$HTTP_PORT" -e "DAIS_MEDIA_ADDR=0.0.0.0:$MEDIA_PORT" \
  "$IMAGE" --http-addr "0.0.0.0:$HTTP_PORT" --media-addr "0.0.0.0:$MEDIA_PORT" --media-tcp-addr "0.0.0.0:$TCP_PORT" \
  --public-ip 127.0.0.1 --drain-timeout "$DRAIN_TIMEOUT" >/dev/null 2>"$WORK/run.err" ||
  { cat "$WORK/run.err"; die "podman run"; }
log "container $CTR: http 0.0.0.0:$HTTP_PORT, media 0.0.0.0:$MEDIA_PORT/udp and $TCP_PORT/tcp advertised as 127.0.0.1"
for _ in $(seq 300); do
  [ "$(status /readyz)" = 200 ] && break
  [ "$(podman inspect --format '{{.State.Running}}' "$CTR")" = true ] || die "the container stopped"
  sleep 0.1
done
[ "$(status /readyz)" = 200 ] || die "/readyz did not answer 200 within 30 s"
# Capture before grepping: with pipefail, `grep -q` exiting on the first match can SIGPIPE the writer.
ready_log=$(podman logs "$CTR" 2>/dev/null) || die "podman logs failed"
grep -q '^dais ready http=' <<<"$ready_log" || die "no 'dais ready' line on stdout"
grep -q "^dais ready .* tcp=0.0.0.0:$TCP_PORT\$" <<<"$ready_log" || die "the 'dais ready' line does not name the TCP media port $TCP_PORT"
log "/readyz 200, /healthz $(status /healthz); $(grep '^dais ready' <<<"$ready_log")"

[ "$(podman exec "$CTR" id -u)" = 10001 ] || die "the container does not run as uid 10001"
log "runs as uid 10001"
hc=$(podman healthcheck run "$CTR" 2>&1) || die "the image's HEALTHCHECK failed: $hc"
log "HEALTHCHECK (dais-healthcheck /healthz) passed"
metrics=$(curl -sf "$BASE/metrics") || die "GET /metrics failed"
grep -q '^dais_ready 1$' <<<"$metrics" || die "/metrics has no 'dais_ready 1'"

# ---------------------------------------------------------------------------------------------------
phase "speaker + viewer: media flows through the container"
"$CLIENT" "ws://127.0.0.1:$HTTP_PORT/ws" --drain >"$WORK/client.log" 2>&1 &
CLIENT_PID=$!
for _ in $(seq 600); do
  grep -q '^smoke: media ok' "$WORK/client.log" && break
  kill -0 "$CLIENT_PID" 2>/dev/null || break
  sleep 0.1
done
sed 's/^/    /' "$WORK/client.log"
shown=$(wc -l <"$WORK/client.log")
grep -q '^smoke: media ok' "$WORK/client.log" || die "no media at the viewer within 60 s"
fwd=$(curl -sf "$BASE/metrics" | sed -n 's/^dais_rtp_packets_forwarded_total \([0-9]*\)$/\1/p')
[ "${fwd:-0}" -gt 0 ] || die "dais_rtp_packets_forwarded_total did not move"
log "dais_rtp_packets_forwarded_total $fwd"

# ---------------------------------------------------------------------------------------------------
phase "SIGTERM: drain with participants connected, then exit 0"
podman kill --signal TERM "$CTR" >/dev/null
for _ in $(seq 100); do
  [ "$(status /readyz)" = 503 ] && break
  sleep 0.1
done
[ "$(status /readyz)" = 503 ] || die "/readyz did not turn 503 after SIGTERM"
log "/readyz 503, /healthz $(status /healthz) while draining"
rc=0
wait "$CLIENT_PID" || rc=$?
CLIENT_PID=""
tail -n "+$((shown + 1))" "$WORK/client.log" | sed 's/^/    /'
[ "$rc" -eq 0 ] || die "the smoke client failed (exit $rc)"
exit_code=$(timeout 30 podman wait "$CTR") || die "the container did not exit within 30 s of the participants leaving"
final_log=$(podman logs "$CTR" 2>&1) || die "podman logs failed"
grep -q 'drain complete' <<<"$final_log" || die "no 'drain complete' in the log"
[ "$exit_code" = 0 ] || die "the container exited with $exit_code"
log "the container exited 0 after the drain"
