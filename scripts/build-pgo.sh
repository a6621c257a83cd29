#!/usr/bin/env bash
# Builds the gateway example with profile-guided optimisation (PGO): an
# instrumented build serves wrk's load against its built-in demo backends,
# and the counts it records tell the optimising build which code is hot,
# so that the hot paths of the gateway, hyper, tokio and http are laid out
# together. Prints the optimised binary's path on standard output; logs go
# to standard error.
#
#   scripts/build-pgo.sh                   # from anywhere in the repository
#   GATEWAY_BIN=$(scripts/build-pgo.sh)    # e.g. for scripts/bench-gateway.sh
#
# Settings (environment variables, all optional):
#   TRAIN=8        seconds of load for each traffic kind (new sessions, then
#                  returning sessions)
#   PGO_DIR=target/pgo  where the two builds go (instrumented/, optimised/)
#   PORT=18480     the training gateway's listener (ADMIN_PORT=18481)
#
# Needs llvm-profdata of the LLVM that rustc uses (`rustc -vV`; the
# profile format must match) and wrk. llvm-profdata is taken from the
# toolchain's llvm-tools component, added with rustup when missing, or
# else from Debian's llvm-N package; wrk and curl from Debian's packages,
# which needs root. Everything listens on 127.0.0.1 only.
set -euo pipefail

TRAIN=${TRAIN:-8}
PORT=${PORT:-18480}
ADMIN_PORT=${ADMIN_PORT:-18481}

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
PGO_DIR=${PGO_DIR:-$ROOT/target/pgo}

log() { printf '%s\n' "$*" >&2; }
die() {
    log "error: $*"
    exit 1
}

# --- tools -----------------------------------------------------------------

llvm_major=$(rustc -vV | sed -n 's/^LLVM version: \([0-9]*\).*/\1/p')
[[ -n $llvm_major ]] || die "rustc -vV names no LLVM version"
host=$(rustc -vV | sed -n 's/^host: //p')
# The toolchain's own llvm-profdata: the same LLVM as rustc's, exactly.
toolchain_profdata() {
    local candidate
    candidate="$(rustc --print sysroot)/lib/rustlib/$host/bin/llvm-profdata"
    [[ -x $candidate ]] && printf '%s\n' "$candidate"
}
profdata=$(toolchain_profdata || true)
if [[ -z $profdata ]] && command -v rustup >/dev/null; then
    log "adding the toolchain's llvm-tools component (rustup component add llvm-tools)"
    rustup component add llvm-tools >&2 || log "rustup could not add llvm-tools"
    profdata=$(toolchain_profdata || true)
fi
[[ -n $profdata ]] || profdata=$(command -v "llvm-profdata-$llvm_major" || true)
missing=()
[[ -n $profdata ]] || missing+=("llvm-$llvm_major")
command -v wrk >/dev/null || missing+=(wrk)
command -v curl >/dev/null || missing+=(curl)
if ((${#missing[@]})); then
    log "installing ${missing[*]} from Debian's packages"
    apt-get update >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y "${missing[@]}" >&2 ||
        die "could not install ${missing[*]}; PGO needs llvm-profdata from LLVM $llvm_major, as rustc uses"
    if [[ -z $profdata ]]; then
        profdata=$(command -v "llvm-profdata-$llvm_major") ||
            die "llvm-$llvm_major has no llvm-profdata-$llvm_major"
    fi
fi
log "llvm-profdata: $profdata"

TMP=$(mktemp -d "${TMPDIR:-/tmp}/build-pgo.XXXXXX")
GATEWAY_PID=
cleanup() {
    [[ -n $GATEWAY_PID ]] && kill "$GATEWAY_PID" 2>/dev/null
    rm -rf "$TMP"
}
trap cleanup EXIT

# --- instrumented build and training ----------------------------------------

PROFILES="$TMP/profiles"
log "building the instrumented gateway in $PGO_DIR/instrumented"
RUSTFLAGS="-Cprofile-generate=$PROFILES" \
    cargo build --release --example gateway --target-dir "$PGO_DIR/instrumented" >&2
# Build scripts were instrumented too and wrote counts while building; only
# the gateway's own count.
rm -rf "$PROFILES"

log "training: ${TRAIN} s of new sessions, then ${TRAIN} s of returning ones"
"$PGO_DIR/instrumented/release/examples/gateway" \
    --listen "127.0.0.1:$PORT" --admin-listen "127.0.0.1:$ADMIN_PORT" \
    >"$TMP/stdout" 2>"$TMP/stderr" &
GATEWAY_PID=$!
url="http://127.0.0.1:$PORT/"
for _ in $(seq 1 100); do
    curl -s -o /dev/null --max-time 1 "$url" && break
    kill -0 "$GATEWAY_PID" 2>/dev/null || die "the gateway exited: $(cat "$TMP/stderr")"
    sleep 0.1
done
cookie=$(curl -si --max-time 5 "$url" | tr -d '\r' |
    sed -n 's/^set-cookie:[[:space:]]*\(sticky=[^;]*\).*/\1/Ip' | sed -n 1p)
[[ -n $cookie ]] || die "the gateway at $url set no sticky cookie"
wrk -t 2 -c 64 -d "${TRAIN}s" "$url" >&2
wrk -t 2 -c 64 -d "${TRAIN}s" -H "Cookie: $cookie" "$url" >&2
# The counts are written as the process exits.
kill -INT "$GATEWAY_PID"
wait "$GATEWAY_PID" || die "the gateway did not stop cleanly: $(cat "$TMP/stderr")"
GATEWAY_PID=
compgen -G "$PROFILES/*.profraw" >/dev/null || die "the training wrote no profile"
"$profdata" merge -o "$TMP/gateway.profdata" "$PROFILES"

# --- optimised build ----------------------------------------------------------

log "building the optimised gateway in $PGO_DIR/optimised"
RUSTFLAGS="-Cprofile-use=$TMP/gateway.profdata" \
    cargo build --release --example gateway --target-dir "$PGO_DIR/optimised" >&2
printf '%s\n' "$PGO_DIR/optimised/release/examples/gateway"
