#!/usr/bin/env bash
# Compares the gateway example (examples/gateway) with HAProxy (cookie
# insert) and nginx (`hash $cookie_sticky consistent`) in one run: the same
# three loopback backends, the same load generator (wrk), one proxy running
# at a time. Each proxy does the same work per request: besides picking
# the backend, it adds the four forwarding headers the gateway adds
# (X-Forwarded-For, X-Forwarded-Proto, X-Forwarded-Host, Forwarded). The
# gateway and HAProxy also remove their cookie from requests before the
# backends see them; nginx, which sets no cookie, passes the one it
# hashes on.
# Prints a Markdown report on standard output.
#
#   scripts/bench-gateway.sh              # from anywhere in the repository
#
# Settings (environment variables, all optional):
#   DURATION=10       seconds of each measured wrk run
#   WARMUP=2          seconds of the discarded warm-up run before each
#   WRK_THREADS=2     wrk -t
#   WRK_CONNECTIONS=64  wrk -c
#   ROUNDS=3          rounds; each runs every proxy once, in a rotated
#                     order; the table gives the median over rounds
#   MAX_NOISE=10      a measured run during which the hypervisor (steal)
#   RETRIES=2         and processes other than the benchmark's took more
#                     than this % of all CPU time is run again, up to
#                     RETRIES more times; the least disturbed run counts
#   KEEP_TMP=1        keep the temporary directory (configs, logs, wrk
#                     output) instead of removing it
#   PROXY_THREADS=$(nproc)  threads for each proxy: the gateway's
#                     --threads, HAProxy's nbthread, nginx's
#                     worker_processes
#   PIN=0             1: every proxy keeps each of its threads on a CPU of
#                     its own (gateway --pin-workers, HAProxy cpu-map, nginx
#                     worker_cpu_affinity auto MASK, all over the CPUs this
#                     script may use); 0: where the kernel puts
#                     them, each proxy's default
#   PGO=0             1: also measure the gateway built with profile-guided
#                     optimisation (scripts/build-pgo.sh), as gateway-pgo
#
# Needs root for apt-get when haproxy, nginx, wrk or curl are missing.
# Everything listens on 127.0.0.1 only; every process started here is
# stopped, and the temporary directory removed, on exit.
set -euo pipefail

DURATION=${DURATION:-10}
WARMUP=${WARMUP:-2}
WRK_THREADS=${WRK_THREADS:-2}
WRK_CONNECTIONS=${WRK_CONNECTIONS:-64}
PROXY_THREADS=${PROXY_THREADS:-$(nproc)}
ROUNDS=${ROUNDS:-3}
MAX_NOISE=${MAX_NOISE:-10}
RETRIES=${RETRIES:-2}
PIN=${PIN:-0}
PGO=${PGO:-0}

BACKEND_PORTS=(9101 9102 9103)
GATEWAY_PORT=9201
GATEWAY_ADMIN_PORT=9291
HAPROXY_PORT=9202
NGINX_PORT=9203
NGINX_COOKIE='sticky=some-session-id'
# A fixed benchmark-only signing key (>= 16 bytes); nothing outside this
# run ever sees a cookie signed with it.
GATEWAY_SECRET='bench-gateway-secret-0123456789abcdef'

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"

log() { printf '%s\n' "$*" >&2; }
die() {
    log "error: $*"
    exit 1
}

# --- tools -----------------------------------------------------------------

missing=()
command -v haproxy >/dev/null || missing+=(haproxy)
command -v nginx >/dev/null || missing+=(nginx)
command -v wrk >/dev/null || missing+=(wrk)
command -v curl >/dev/null || missing+=(curl)
if ((${#missing[@]})); then
    log "installing ${missing[*]} from Debian's packages"
    apt-get update >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y "${missing[@]}" >&2
fi
for tool in haproxy nginx wrk curl cargo rustc awk sed timeout pgrep getconf; do
    command -v "$tool" >/dev/null || die "$tool not found"
done

# --- processes and the temporary directory ----------------------------------

TMP=$(mktemp -d "${TMPDIR:-/tmp}/bench-gateway.XXXXXX")
# nginx's workers run as nobody: let them reach their temp paths.
chmod 755 "$TMP"
PIDS=()

stop_pid() {
    local pid=$1 i
    kill -TERM "$pid" 2>/dev/null || return 0
    for ((i = 0; i < 50; i++)); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
}

cleanup() {
    local pid
    for pid in "${PIDS[@]}"; do
        stop_pid "$pid"
    done
    if [[ -n ${KEEP_TMP:-} ]]; then
        log "kept $TMP"
    else
        rm -rf "$TMP"
    fi
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# Raise the open-file limit to its hard limit, for the proxies and wrk.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

port_open() {
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

# wait_port PORT PID LOGFILE: waits up to 10 s for PORT to accept.
wait_port() {
    local port=$1 pid=$2 logfile=$3 i
    for ((i = 0; i < 100; i++)); do
        if ! kill -0 "$pid" 2>/dev/null; then
            tail -n 20 "$logfile" >&2 || true
            die "process $pid exited before listening on 127.0.0.1:$port"
        fi
        port_open "$port" && return 0
        sleep 0.1
    done
    tail -n 20 "$logfile" >&2 || true
    die "nothing listens on 127.0.0.1:$port after 10 s"
}

for port in "${BACKEND_PORTS[@]}" "$GATEWAY_PORT" "$GATEWAY_ADMIN_PORT" \
    "$HAPROXY_PORT" "$NGINX_PORT"; do
    port_open "$port" && die "127.0.0.1:$port is already in use"
done

# --- build -------------------------------------------------------------------

log "building the gateway (cargo build --release --example gateway)"
cargo build --release --example gateway >&2
GATEWAY_BIN="$ROOT/target/release/examples/gateway"
[[ -x $GATEWAY_BIN ]] || die "$GATEWAY_BIN not built"
if [[ $PGO == 1 ]]; then
    log "building the gateway with profile-guided optimisation (scripts/build-pgo.sh)"
    GATEWAY_PGO_BIN=$("$ROOT/scripts/build-pgo.sh") || die "scripts/build-pgo.sh failed"
fi

# --- backends: one nginx, three server blocks --------------------------------

# nginx_common DIR: directives every nginx instance here shares; all of its
# files stay under DIR.
nginx_common() {
    local dir=$1
    mkdir -p "$dir/logs" "$dir/tmp"
    cat <<EOF
daemon off;
pid $dir/nginx.pid;
error_log $dir/logs/error.log warn;
events {
    worker_connections 8192;
}
EOF
}

nginx_http_common() {
    local dir=$1
    cat <<EOF
    access_log off;
    keepalive_requests 1000000;
    keepalive_timeout 60s;
    client_body_temp_path $dir/tmp/body;
    proxy_temp_path $dir/tmp/proxy;
    fastcgi_temp_path $dir/tmp/fastcgi;
    uwsgi_temp_path $dir/tmp/uwsgi;
    scgi_temp_path $dir/tmp/scgi;
    default_type text/plain;
EOF
}

BACKENDS_DIR="$TMP/backends"
mkdir -p "$BACKENDS_DIR"
{
    echo "worker_processes 1;"
    nginx_common "$BACKENDS_DIR"
    echo "http {"
    nginx_http_common "$BACKENDS_DIR"
    for i in 1 2 3; do
        cat <<EOF
    server {
        listen 127.0.0.1:${BACKEND_PORTS[i - 1]};
        location / {
            return 200 "b$i\n";
        }
    }
EOF
    done
    echo "}"
} >"$BACKENDS_DIR/nginx.conf"

nginx -t -q -p "$BACKENDS_DIR" -e "$BACKENDS_DIR/logs/error.log" \
    -c "$BACKENDS_DIR/nginx.conf" || die "backend nginx config rejected"
nginx -p "$BACKENDS_DIR" -e "$BACKENDS_DIR/logs/error.log" \
    -c "$BACKENDS_DIR/nginx.conf" >"$BACKENDS_DIR/logs/stderr" 2>&1 &
BACKENDS_PID=$!
PIDS+=("$BACKENDS_PID")
for port in "${BACKEND_PORTS[@]}"; do
    wait_port "$port" "$BACKENDS_PID" "$BACKENDS_DIR/logs/error.log"
done
for i in 1 2 3; do
    body=$(curl -s --max-time 5 "http://127.0.0.1:${BACKEND_PORTS[i - 1]}/")
    [[ $body == "b$i" ]] || die "backend b$i answered ${body@Q}"
done

# --- proxy configurations ------------------------------------------------------

HAPROXY_DIR="$TMP/haproxy"
mkdir -p "$HAPROXY_DIR"
# With PIN=1, each proxy's thread i goes to the i-th CPU this script may
# use (HAProxy's cpu-map; nginx's worker_cpu_affinity with a mask of those
# CPUs, as its `auto` alone would count from CPU 0 whatever is allowed).
HAPROXY_CPU_MAP=""
NGINX_CPU_MASK=""
if [[ $PIN == 1 ]]; then
    cpus=$(sed -n 's/^Cpus_allowed_list:[[:space:]]*//p' /proc/self/status |
        tr ',' '\n' | awk -F- -v n="$PROXY_THREADS" '{
            for (c = $1; c <= ($2 == "" ? $1 : $2); c++) if (k++ < n) print c
        }' | paste -sd ' ' -)
    read -ra pinned_cpus <<<"$cpus"
    ((${#pinned_cpus[@]} == PROXY_THREADS)) ||
        die "PIN=1 needs a CPU for each of the $PROXY_THREADS threads; this script may use ${#pinned_cpus[@]}"
    HAPROXY_CPU_MAP="    cpu-map auto:1/1-$PROXY_THREADS $cpus"
    NGINX_CPU_MASK=$(printf '%s\n' "${pinned_cpus[@]}" | awk '{ bit[$1] = 1; if ($1 > max) max = $1 }
        END { for (c = max; c >= 0; c--) printf "%d", (c in bit) }')
fi
cat >"$HAPROXY_DIR/haproxy.cfg" <<EOF
global
    nbthread $PROXY_THREADS
    maxconn 4096
$HAPROXY_CPU_MAP

defaults
    mode http
    option http-keep-alive
    timeout connect 5s
    timeout client 30s
    timeout server 30s
    timeout http-keep-alive 60s

frontend bench
    bind 127.0.0.1:$HAPROXY_PORT
    default_backend backends

backend backends
    balance roundrobin
    cookie SERVERID insert indirect nocache
    option forwardfor
    http-request set-header X-Forwarded-Proto http
    http-request set-header X-Forwarded-Host %[req.hdr(host)]
    http-request add-header Forwarded "for=%[src];proto=http;host=\\"%[req.hdr(host)]\\""
    server b1 127.0.0.1:${BACKEND_PORTS[0]} cookie b1
    server b2 127.0.0.1:${BACKEND_PORTS[1]} cookie b2
    server b3 127.0.0.1:${BACKEND_PORTS[2]} cookie b3
EOF
haproxy -c -q -f "$HAPROXY_DIR/haproxy.cfg" || die "HAProxy config rejected"

NGINX_DIR="$TMP/nginx"
mkdir -p "$NGINX_DIR"
{
    echo "worker_processes $PROXY_THREADS;"
    if [[ $PIN == 1 ]]; then
        echo "worker_cpu_affinity auto $NGINX_CPU_MASK;"
    fi
    nginx_common "$NGINX_DIR"
    echo "http {"
    nginx_http_common "$NGINX_DIR"
    cat <<EOF
    upstream backends {
        hash \$cookie_sticky consistent;
        server 127.0.0.1:${BACKEND_PORTS[0]};
        server 127.0.0.1:${BACKEND_PORTS[1]};
        server 127.0.0.1:${BACKEND_PORTS[2]};
        keepalive 32;
        keepalive_requests 1000000;
    }
    server {
        listen 127.0.0.1:$NGINX_PORT;
        location / {
            proxy_pass http://backends;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header X-Forwarded-For \$proxy_add_x_forwarded_for;
            proxy_set_header X-Forwarded-Proto \$scheme;
            proxy_set_header X-Forwarded-Host \$http_host;
            proxy_set_header Forwarded "for=\$remote_addr;proto=\$scheme;host=\\"\$http_host\\"";
        }
    }
}
EOF
} >"$NGINX_DIR/nginx.conf"
nginx -t -q -p "$NGINX_DIR" -e "$NGINX_DIR/logs/error.log" \
    -c "$NGINX_DIR/nginx.conf" || die "proxy nginx config rejected"

GATEWAY_DIR="$TMP/gateway"
mkdir -p "$GATEWAY_DIR"
# --strip-cookie is HAProxy's `indirect`: each removes its own cookie
# before the request reaches the backend.
GATEWAY_ARGS=(--listen "127.0.0.1:$GATEWAY_PORT"
    --admin-listen "127.0.0.1:$GATEWAY_ADMIN_PORT" --threads "$PROXY_THREADS"
    --strip-cookie)
if [[ $PIN == 1 ]]; then
    GATEWAY_ARGS+=(--pin-workers)
fi
for i in 1 2 3; do
    GATEWAY_ARGS+=(--backend "b$i=http://127.0.0.1:${BACKEND_PORTS[i - 1]}")
done

# The PGO build's path as the report shows it: relative to the
# repository when inside it (build-pgo.sh's default, or its PGO_DIR).
PGO_BIN_SHOWN=${GATEWAY_PGO_BIN:-$ROOT/target/pgo/optimised/release/examples/gateway}
PGO_SHOWN=${PGO_BIN_SHOWN#"$ROOT"/}

# Display form of each proxy's start command, for the report.
declare -A START_CMD=(
    [gateway]="STICKY_SECRET=<fixed 37-byte test secret> RUST_LOG=warn target/release/examples/gateway ${GATEWAY_ARGS[*]}"
    [gateway-pgo]="STICKY_SECRET=<fixed 37-byte test secret> RUST_LOG=warn ${PGO_SHOWN} ${GATEWAY_ARGS[*]}"
    [haproxy]="haproxy -db -f \$TMP/haproxy/haproxy.cfg"
    [nginx]="nginx -p \$TMP/nginx -e \$TMP/nginx/logs/error.log -c \$TMP/nginx/nginx.conf"
)

# start_proxy NAME: starts one proxy in the background; sets PROXY_PID,
# PROXY_PORT and PROXY_LOG.
start_proxy() {
    case $1 in
    gateway | gateway-pgo)
        local bin=$GATEWAY_BIN
        if [[ $1 == gateway-pgo ]]; then
            bin=$GATEWAY_PGO_BIN
        fi
        PROXY_PORT=$GATEWAY_PORT
        PROXY_LOG="$GATEWAY_DIR/stderr"
        STICKY_SECRET=$GATEWAY_SECRET RUST_LOG=warn \
            "$bin" "${GATEWAY_ARGS[@]}" \
            >"$GATEWAY_DIR/stdout" 2>"$PROXY_LOG" &
        ;;
    haproxy)
        PROXY_PORT=$HAPROXY_PORT
        PROXY_LOG="$HAPROXY_DIR/stderr"
        haproxy -db -f "$HAPROXY_DIR/haproxy.cfg" >"$PROXY_LOG" 2>&1 &
        ;;
    nginx)
        PROXY_PORT=$NGINX_PORT
        PROXY_LOG="$NGINX_DIR/logs/error.log"
        nginx -p "$NGINX_DIR" -e "$PROXY_LOG" -c "$NGINX_DIR/nginx.conf" \
            >"$NGINX_DIR/logs/stderr" 2>&1 &
        ;;
    *) die "unknown proxy $1" ;;
    esac
    PROXY_PID=$!
    PIDS+=("$PROXY_PID")
    wait_port "$PROXY_PORT" "$PROXY_PID" "$PROXY_LOG"
}

# returning_cookie NAME PORT: the Cookie header value of a returning session.
returning_cookie() {
    local name=$1 port=$2 wanted headers value
    case $name in
    gateway | gateway-pgo) wanted=sticky ;;
    haproxy) wanted=SERVERID ;;
    nginx)
        printf '%s\n' "$NGINX_COOKIE"
        return 0
        ;;
    esac
    headers=$(curl -si --max-time 5 -o - "http://127.0.0.1:$port/" | tr -d '\r') ||
        die "$name: curl http://127.0.0.1:$port/ failed"
    value=$(printf '%s\n' "$headers" |
        sed -n "s/^set-cookie:[[:space:]]*\\($wanted=[^;]*\\).*/\\1/Ip" | sed -n 1p)
    [[ -n $value ]] || {
        printf '%s\n' "$headers" >&2
        die "$name set no $wanted cookie"
    }
    printf '%s\n' "$value"
}

# body_counts PORT [COOKIE]: 20 sequential curl requests; prints
# "N×body" per distinct body.
body_counts() {
    local port=$1 cookie=${2:-} i args=(-s --max-time 5)
    [[ -n $cookie ]] && args+=(-H "Cookie: $cookie")
    for ((i = 0; i < 20; i++)); do
        curl "${args[@]}" "http://127.0.0.1:$port/" || echo "curl-failed"
        echo
    done | sed '/^$/d' | sort | uniq -c | awk '{printf "%s%d×%s", (NR > 1 ? ", " : ""), $1, $2} END {print ""}'
}

# wrk's Lua script for the warm-up: counts every status and body, to check
# under load which backends answered.
cat >"$TMP/count.lua" <<'EOF'
local threads = {}
function setup(thread)
    table.insert(threads, thread)
end
function init(args)
    seen = {}
end
function response(status, headers, body)
    local key = tostring(status) .. " " .. (string.gsub(body or "", "%s+$", ""))
    seen[key] = (seen[key] or 0) + 1
end
function done(summary, latency, requests)
    local total = {}
    for _, thread in ipairs(threads) do
        for key, n in pairs(thread:get("seen")) do
            total[key] = (total[key] or 0) + n
        end
    end
    local keys = {}
    for key in pairs(total) do
        table.insert(keys, key)
    end
    table.sort(keys)
    local parts = {}
    for _, key in ipairs(keys) do
        table.insert(parts, total[key] .. "×" .. key)
    end
    io.write("warm-up answers (status body): " .. table.concat(parts, ", ") .. "\n")
end
EOF

# to_ms VALUE: wrk latency (e.g. 812.00us, 1.23ms, 1.02s) in milliseconds.
to_ms() {
    awk -v v="$1" 'BEGIN {
        n = v + 0; u = v; sub(/^[0-9.]+/, "", u)
        if (u == "us") n /= 1000; else if (u == "s") n *= 1000
        else if (u == "m") n *= 60000; else if (u != "ms") n = -1
        printf "%.3f", n
    }'
}

# The 1-minute load average before the first run: much above 0 means
# something else competes for the CPUs and the numbers are suspect.
LOAD_BEFORE=$(cut -d ' ' -f 1-3 /proc/loadavg)

PROXIES=(gateway haproxy nginx)
if [[ $PGO == 1 ]]; then
    PROXIES=(gateway gateway-pgo haproxy nginx)
fi
KINDS=(new returning)
# Per "proxy/kind/round": requests/s, p99 (as wrk prints it, and in ms),
# CPU steal, other processes' CPU and idle during the measured run, tries,
# the proxy's CPU time (ticks).
declare -A RPS REQUESTS P99_RAW P99 STEAL OTHERS NOISE IDLE TRIES PROXY_TICKS
# Per "proxy/kind": wrk command, checks, warm-up counts, errors (all rounds).
declare -A WRK_CMD CHECK WARM ERRORS COOKIE_USED
RAW_OUTPUT="$TMP/wrk-output.txt"
GATEWAY_ALL_LOG="$TMP/gateway-all.log"
: >"$RAW_OUTPUT"
: >"$GATEWAY_ALL_LOG"
declare -A GATEWAY_RESET

# proxy_alive: dies, showing the proxy's log and wrk's last output, if the
# proxy under test has exited.
proxy_alive() {
    local status
    kill -0 "$PROXY_PID" 2>/dev/null && return 0
    wait "$PROXY_PID" 2>/dev/null && status=0 || status=$?
    log "--- proxy log ($PROXY_LOG), last lines:"
    tail -n 30 "$PROXY_LOG" >&2 || true
    log "--- wrk's last output:"
    cat "$TMP/last-wrk.txt" >&2 2>/dev/null || true
    die "the proxy (pid $PROXY_PID) has exited, status $status"
}

run_wrk() { # run_wrk OUTFILE SECONDS [extra wrk args...] URL
    local out=$1 secs=$2
    shift 2
    timeout $((secs + 30)) wrk -t "$WRK_THREADS" -c "$WRK_CONNECTIONS" \
        -d "${secs}s" --latency "$@" >"$out" 2>&1 || {
        cat "$out" >&2
        proxy_alive
        die "wrk failed"
    }
    cp "$out" "$TMP/last-wrk.txt"
    proxy_alive
}

# cpu_ticks: the aggregate "cpu" line of /proc/stat, without its label.
cpu_ticks() { sed -n 's/^cpu  *//p' /proc/stat; }

# cpu_share BEFORE AFTER FIELD: percentage of all CPU time spent in FIELD
# (4 = idle, 8 = steal) between two cpu_ticks readings.
cpu_share() {
    awk -v a="$1" -v b="$2" -v f="$3" 'BEGIN {
        n = split(a, x, " "); split(b, y, " "); total = 0
        for (i = 1; i <= n && i <= 8; i++) total += y[i] - x[i]
        if (total > 0) printf "%.1f", 100 * (y[f] - x[f]) / total; else print "?"
    }'
}

# ours_ticks OURS_VAR PROXY_VAR: sets OURS_VAR to the CPU time (user +
# system, in /proc/stat ticks) used so far by the benchmark's own
# processes: the backends and the proxy (with their child processes:
# nginx's workers) and the commands this shell has waited for (wrk); and
# PROXY_VAR to the proxy's part of it. Not to be called in a subshell:
# `times` must see this shell's children.
ours_ticks() {
    local pid child total=0 proxy=0 ticks stat fields kids
    for pid in "$BACKENDS_PID" "$PROXY_PID"; do
        mapfile -t kids < <(pgrep -P "$pid" || true)
        for child in "$pid" "${kids[@]}"; do
            stat=$(cat "/proc/$child/stat" 2>/dev/null) || continue
            read -ra fields <<<"${stat##*) }"
            ticks=$((fields[11] + fields[12]))
            total=$((total + ticks))
            [[ $pid == "$PROXY_PID" ]] && proxy=$((proxy + ticks))
        done
    done
    times >"$TMP/times"
    printf -v "$1" '%s' "$(awk -v t="$total" -v hz="$CLK_TCK" 'NR == 2 {
        s = 0
        for (i = 1; i <= 2; i++) { split($i, p, /[ms]/); s += p[1] * 60 + p[2] }
        printf "%d\n", t + s * hz
    }' "$TMP/times")"
    printf -v "$2" '%s' "$proxy"
}
CLK_TCK=$(getconf CLK_TCK)

# others_share BEFORE AFTER OURS_BEFORE OURS_AFTER: percentage of all CPU
# time used by processes other than the benchmark's (busy time minus ours).
others_share() {
    awk -v a="$1" -v b="$2" -v o1="$3" -v o2="$4" 'BEGIN {
        n = split(a, x, " "); split(b, y, " "); total = 0
        for (i = 1; i <= n && i <= 8; i++) total += y[i] - x[i]
        busy = total - (y[4] - x[4]) - (y[5] - x[5]) - (y[8] - x[8])
        share = total > 0 ? 100 * (busy - (o2 - o1)) / total : 0
        printf "%.1f", share < 0 ? 0 : share
    }'
}

# note ARRAY KEY TEXT: appends TEXT to ARRAY[KEY], "; "-separated.
note() {
    local -n array=$1
    local key=$2 text=$3
    array[$key]="${array[$key]:+${array[$key]}; }$text"
}

for ((round = 1; round <= ROUNDS; round++)); do
    # Rotate the order each round so no proxy always runs first or last.
    order=()
    for ((i = 0; i < ${#PROXIES[@]}; i++)); do
        order+=("${PROXIES[(i + round - 1) % ${#PROXIES[@]}]}")
    done
    for proxy in "${order[@]}"; do
        log "== round $round/$ROUNDS: $proxy"
        start_proxy "$proxy"
        url="http://127.0.0.1:$PROXY_PORT/"
        for kind in "${KINDS[@]}"; do
            key="$proxy/$kind"
            rkey="$key/$round"
            header=()
            shown_header=""
            if [[ $kind == returning ]]; then
                cookie=$(returning_cookie "$proxy" "$PROXY_PORT") || {
                    proxy_alive
                    log "--- proxy log ($PROXY_LOG), last lines:"
                    tail -n 30 "$PROXY_LOG" >&2 || true
                    exit 1
                }
                COOKIE_USED[$proxy]=$cookie
                header=(-H "Cookie: $cookie")
                shown_header=" -H 'Cookie: <cookie>'"
                note CHECK "$key" "round $round: $(body_counts "$PROXY_PORT" "$cookie") before"
            else
                note CHECK "$key" "round $round: $(body_counts "$PROXY_PORT")"
            fi
            log "   $kind: warm-up ${WARMUP}s"
            run_wrk "$TMP/warm.txt" "$WARMUP" -s "$TMP/count.lua" "${header[@]}" "$url"
            note WARM "$key" "round $round: $(sed -n 's/^warm-up answers (status body): //p' "$TMP/warm.txt")"
            # On a shared VM the host may take CPU time away (steal), and
            # other processes may compete: a run with too much of either is
            # measured again; the least disturbed run counts.
            for ((try = 1; try <= 1 + RETRIES; try++)); do
                log "   $kind: measuring ${DURATION}s (try $try)"
                ours_ticks ours_before proxy_before
                ticks_before=$(cpu_ticks)
                run_wrk "$TMP/try.txt" "$DURATION" "${header[@]}" "$url"
                ticks_after=$(cpu_ticks)
                ours_ticks ours_after proxy_after
                steal=$(cpu_share "$ticks_before" "$ticks_after" 8)
                others=$(others_share "$ticks_before" "$ticks_after" "$ours_before" "$ours_after")
                noise=$(awk -v a="$steal" -v b="$others" 'BEGIN { print a + b }')
                if ((try == 1)) || awk -v a="$noise" -v b="${NOISE[$rkey]}" 'BEGIN { exit !(a < b) }'; then
                    cp "$TMP/try.txt" "$TMP/run.txt"
                    STEAL[$rkey]=$steal
                    OTHERS[$rkey]=$others
                    NOISE[$rkey]=$noise
                    IDLE[$rkey]=$(cpu_share "$ticks_before" "$ticks_after" 4)
                    PROXY_TICKS[$rkey]=$((proxy_after - proxy_before))
                fi
                TRIES[$rkey]=$try
                awk -v n="$noise" -v m="$MAX_NOISE" 'BEGIN { exit !(n <= m) }' && break
                log "   $kind: CPU steal $steal% + other processes $others% > $MAX_NOISE%"
            done
            WRK_CMD[$key]="wrk -t $WRK_THREADS -c $WRK_CONNECTIONS -d ${DURATION}s --latency$shown_header $url"
            {
                echo "### round $round, $proxy, $kind-session"
                echo
                echo '```'
                echo "\$ wrk -t $WRK_THREADS -c $WRK_CONNECTIONS -d ${DURATION}s --latency${header[1]:+ -H '${header[1]}'} $url"
                cat "$TMP/run.txt"
                echo '```'
                echo
            } >>"$RAW_OUTPUT"
            RPS[$rkey]=$(awk '/^Requests\/sec:/ {print $2}' "$TMP/run.txt")
            REQUESTS[$rkey]=$(awk '$2 == "requests" && $3 == "in" {print $1}' "$TMP/run.txt")
            P99_RAW[$rkey]=$(awk '$1 == "99%" {print $2}' "$TMP/run.txt")
            [[ -n ${RPS[$rkey]} && -n ${P99_RAW[$rkey]} ]] || {
                cat "$TMP/run.txt" >&2
                die "could not parse wrk's output for $rkey"
            }
            P99[$rkey]=$(to_ms "${P99_RAW[$rkey]}")
            errors=$(grep -E 'Non-2xx or 3xx responses|Socket errors' "$TMP/run.txt" |
                sed 's/^ *//' | paste -sd ',' -) || true
            [[ -n $errors ]] && note ERRORS "$key" "round $round: $errors"
            # After the load: is the session still where it was?
            if [[ $kind == returning ]]; then
                CHECK[$key]+=", $(body_counts "$PROXY_PORT" "$cookie") after the run"
            fi
            log "   $kind: ${RPS[$rkey]} requests/s, p99 ${P99_RAW[$rkey]}, steal ${STEAL[$rkey]}%, others ${OTHERS[$rkey]}%, idle ${IDLE[$rkey]}%"
        done
        if [[ $proxy == gateway* ]]; then
            cat "$PROXY_LOG" >>"$GATEWAY_ALL_LOG"
            # Does a returning request get a new Set-Cookie?
            GATEWAY_RESET[$proxy]+="${GATEWAY_RESET[$proxy]:+, }$(curl -si --max-time 5 \
                -H "Cookie: ${COOKIE_USED[$proxy]}" "http://127.0.0.1:$PROXY_PORT/" |
                tr -d '\r' | grep -ci '^set-cookie:' || true)"
        elif [[ -s $PROXY_LOG ]]; then
            log "   $proxy log tail:"
            tail -n 5 "$PROXY_LOG" >&2
        fi
        stop_pid "$PROXY_PID"
        unset 'PIDS[-1]'
    done
done

# median PREFIX ARRAY: the median over rounds of ARRAY[PREFIX/round].
median() {
    local prefix=$1 r
    local -n values=$2
    for ((r = 1; r <= ROUNDS; r++)); do
        printf '%s\n' "${values[$prefix/$r]}"
    done | sort -g | awk '{ v[NR] = $1 } END {
        if (NR % 2) print v[(NR + 1) / 2]; else printf "%.3f\n", (v[NR / 2] + v[NR / 2 + 1]) / 2
    }'
}

declare -A MED_RPS MED_P99
for proxy in "${PROXIES[@]}"; do
    for kind in "${KINDS[@]}"; do
        MED_RPS[$proxy/$kind]=$(median "$proxy/$kind" RPS)
        MED_P99[$proxy/$kind]=$(median "$proxy/$kind" P99)
    done
done

# --- report ----------------------------------------------------------------

ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2f×", a / b; else print "—" }'; }
# per_request TICKS REQUESTS: CPU microseconds per request.
per_request() {
    awk -v t="$1" -v n="$2" -v hz="$CLK_TCK" 'BEGIN {
        if (n > 0) printf "%.1f µs", t / hz * 1e6 / n; else print "?"
    }'
}
# paired PROXY/KIND rps|p99|cpu: the median over rounds of the same-round
# ratio to HAProxy, with its range ("1.02× (0.97×–1.08×)").
paired() {
    local key=$1 what=$2 kind=${1#*/} r a b
    for ((r = 1; r <= ROUNDS; r++)); do
        case $what in
        rps) a=${RPS[$key/$r]} b=${RPS[haproxy/$kind/$r]} ;;
        p99) a=${P99[$key/$r]} b=${P99[haproxy/$kind/$r]} ;;
        cpu)
            a=$(awk -v t="${PROXY_TICKS[$key/$r]}" -v n="${REQUESTS[$key/$r]}" 'BEGIN { print (n > 0 ? t / n : 0) }')
            b=$(awk -v t="${PROXY_TICKS[haproxy/$kind/$r]}" -v n="${REQUESTS[haproxy/$kind/$r]}" 'BEGIN { print (n > 0 ? t / n : 0) }')
            ;;
        esac
        awk -v a="$a" -v b="$b" 'BEGIN { if (b > 0) printf "%.4f\n", a / b }'
    done | sort -g | awk '{ v[NR] = $1 } END {
        if (NR == 0) { print "—"; exit }
        m = NR % 2 ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2
        printf "%.2f× (%.2f×–%.2f×)\n", m, v[1], v[NR]
    }'
}
fmt_ms() { awk -v v="$1" 'BEGIN { printf "%.2fms", v }'; }
fmt_rps() { awk -v v="$1" 'BEGIN { printf "%d", v + 0.5 }' | sed ':a;s/\B[0-9]\{3\}\>/,&/;ta'; }

cpu_model=$(lscpu 2>/dev/null | sed -n 's/^Model name:[[:space:]]*//p' | sed -n 1p)
haproxy_version=$(haproxy -v 2>&1 | sed -n 1p)
nginx_version=$(nginx -v 2>&1 | sed -n 1p)
wrk_version=$({ wrk --version 2>&1 || true; } | sed -n 1p)
rustc_version=$(rustc --version)

echo "# Gateway vs HAProxy vs nginx: sticky-session proxying on loopback"
echo
echo "- date: $(date -u '+%Y-%m-%d %H:%M:%S UTC')"
echo "- nproc: $(nproc); CPU: ${cpu_model:-unknown}"
echo "- $haproxy_version"
echo "- $nginx_version"
echo "- $wrk_version"
echo "- $rustc_version; gateway commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown)$(git diff --quiet HEAD -- 2>/dev/null || echo ' (work tree has changes)')"
echo "- proxy threads: $PROXY_THREADS each (gateway: --threads $PROXY_THREADS; HAProxy: nbthread $PROXY_THREADS; nginx: worker_processes $PROXY_THREADS), $(if [[ $PIN == 1 ]]; then echo "each on a CPU of its own (gateway --pin-workers, HAProxy cpu-map, nginx worker_cpu_affinity auto $NGINX_CPU_MASK)"; else echo "placed by the kernel"; fi); backends: one nginx, worker_processes 1, three server blocks answering b1/b2/b3; wrk, backends and proxy share the same $(nproc) CPUs"
echo "- load average (1, 5, 15 min) before the runs: $LOAD_BEFORE; after: $(cut -d ' ' -f 1-3 /proc/loadavg) (the after figure includes the benchmark's own load)"
echo "- load: wrk -t $WRK_THREADS -c $WRK_CONNECTIONS; per proxy and traffic kind a ${WARMUP} s warm-up (discarded) then ${DURATION} s measured; one proxy running at a time; $ROUNDS round(s), the proxies' order rotated each round"
echo
echo "Median over $ROUNDS round(s); ratios are between medians."
echo
echo "| proxy | traffic | requests/s | p99 | requests/s ratio to HAProxy | p99 ratio to HAProxy |"
echo "|---|---|---|---|---|---|"
for proxy in "${PROXIES[@]}"; do
    for kind in "${KINDS[@]}"; do
        key="$proxy/$kind"
        echo "| $proxy | $kind-session | $(fmt_rps "${MED_RPS[$key]}") | $(fmt_ms "${MED_P99[$key]}") | $(ratio "${MED_RPS[$key]}" "${MED_RPS[haproxy/$kind]}") | $(ratio "${MED_P99[$key]}" "${MED_P99[haproxy/$kind]}") |"
    done
done
echo
echo "Same-round ratios to HAProxy (each round's figure over HAProxy's in that round, which"
echo "cancels the drift of a noisy machine between rounds): median, and the range over rounds."
echo
echo "| proxy | traffic | requests/s ratio | p99 ratio | proxy CPU per request ratio |"
echo "|---|---|---|---|---|"
for proxy in "${PROXIES[@]}"; do
    [[ $proxy == haproxy ]] && continue
    for kind in "${KINDS[@]}"; do
        echo "| $proxy | $kind-session | $(paired "$proxy/$kind" rps) | $(paired "$proxy/$kind" p99) | $(paired "$proxy/$kind" cpu) |"
    done
done
echo
echo "Traffic: new-session = no cookie on any request; returning-session = every request carries"
echo "\`Cookie: <value>\`: gateway \`${COOKIE_USED[gateway]:0:24}…\` (its signed cookie, from a first curl; last round's shown),"
echo "HAProxy \`${COOKIE_USED[haproxy]}\` (its inserted cookie, last round's), nginx \`$NGINX_COOKIE\` (fixed; nginx inserts none)."
echo
echo "Every round. Proxy CPU per request: the proxy's processes' user + system CPU time during the"
echo "measured run (/proc/PID/stat, nginx's workers included) over the requests wrk completed."
echo "CPU steal (taken by the hypervisor), other processes (busy time less the"
echo "benchmark's own processes) and idle are shares of all CPU time during the measured run that"
echo "counts, from /proc; tries: runs made, as a run with steal + other processes over $MAX_NOISE% is"
echo "made again, up to $RETRIES more times, and the least disturbed one counts."
echo
echo "| round | proxy | traffic | requests/s | p99 | ratio to HAProxy (same round) | proxy CPU per request | CPU steal | other processes | CPU idle | tries |"
echo "|---|---|---|---|---|---|---|---|---|---|---|"
for ((round = 1; round <= ROUNDS; round++)); do
    for proxy in "${PROXIES[@]}"; do
        for kind in "${KINDS[@]}"; do
            rkey="$proxy/$kind/$round"
            echo "| $round | $proxy | $kind-session | $(fmt_rps "${RPS[$rkey]}") | ${P99_RAW[$rkey]} | $(ratio "${RPS[$rkey]}" "${RPS[haproxy/$kind/$round]}") | $(per_request "${PROXY_TICKS[$rkey]}" "${REQUESTS[$rkey]}") | ${STEAL[$rkey]}% | ${OTHERS[$rkey]}% | ${IDLE[$rkey]}% | ${TRIES[$rkey]} |"
        done
    done
done
echo
echo "## Errors and stickiness"
echo
echo "Bodies b1/b2/b3 name the backend that answered. Before/after: 20 sequential curl requests"
echo "before and after the measured run; warm-up: every answer of the ${WARMUP} s warm-up under"
echo "full load, counted by a wrk Lua script."
echo
for proxy in "${PROXIES[@]}"; do
    for kind in "${KINDS[@]}"; do
        key="$proxy/$kind"
        echo "- $proxy, $kind-session: wrk errors (Non-2xx or 3xx responses, socket errors): ${ERRORS[$key]:-none}"
        echo "  - curl: ${CHECK[$key]}"
        echo "  - warm-up (count×status body): ${WARM[$key]:-?}"
    done
done
for proxy in "${PROXIES[@]}"; do
    if [[ $proxy == gateway* ]]; then
        echo "- $proxy: Set-Cookie headers on a returning request, per round: ${GATEWAY_RESET[$proxy]:-?}"
    fi
done
echo "- gateway stderr lines (RUST_LOG=warn), all rounds: $(wc -l <"$GATEWAY_ALL_LOG")"
if [[ -s $GATEWAY_ALL_LOG ]]; then
    echo
    echo "Gateway stderr, last lines:"
    echo
    echo '```'
    tail -n 20 "$GATEWAY_ALL_LOG"
    echo '```'
fi
echo
echo "## Commands"
echo
echo '```'
echo "cargo build --release --example gateway"
if [[ $PGO == 1 ]]; then
    echo "${PGO_DIR:+PGO_DIR=$PGO_DIR }scripts/build-pgo.sh   # gateway-pgo"
fi
echo "nginx -p \$TMP/backends -e \$TMP/backends/logs/error.log -c \$TMP/backends/nginx.conf   # backends, all runs"
for proxy in "${PROXIES[@]}"; do
    echo "${START_CMD[$proxy]}"
    for kind in "${KINDS[@]}"; do
        echo "  wrk -t $WRK_THREADS -c $WRK_CONNECTIONS -d ${WARMUP}s --latency -s count.lua ... # warm-up, discarded"
        echo "  ${WRK_CMD[$proxy/$kind]}"
    done
done
echo '```'
echo
echo "## Configurations"
for file in backends/nginx.conf haproxy/haproxy.cfg nginx/nginx.conf; do
    echo
    echo "\`\$TMP/$file\`:"
    echo
    echo '```'
    sed "s#$TMP#\$TMP#g" "$TMP/$file"
    echo '```'
done
echo
echo "## wrk output (measured runs)"
echo
cat "$RAW_OUTPUT"
