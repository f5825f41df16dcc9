#!/usr/bin/env bash
# Memory and throughput of password checks in one `tessera serve` (DESIGN.md rule 8).
#
# Builds the release binary, starts one server on loopback ports with a fresh data directory
# (embedded SQLite + in-memory store), and measures, sampling VmRSS every 100 ms:
#   (a) 64 concurrent POST /login, unknown usernames, wrong passwords, for 30 s
#       (each request from another X-Forwarded-For address, the facade trusting loopback as its
#       proxy: many sources, so the per-source throttle does not hide the password pool)
#   (b) 800 password grants (POST /oauth2/token) at 8 concurrent
#   (c) password grants at 64 concurrent for 20 s (most are refused: the queue is full)
#   (e) password grants at 8 concurrent for 20 s — as many as the pool admits, so every one is
#       checked and none is refused: grants/s for the ratio
# The account throttle would rightly refuse one user signing in 64 times at once, so the
# server runs with a huge tokens.lockout_threshold: this measures the pool, not the throttle.
#   (d) the raw Argon2id rate of the same parameters on every core, in the same run
# then the resident size after 60 s idle. Prints a table and the ratio grants/s ÷ raw rate,
# and exits non-zero when a target is missed: < 150 MB during the bursts, < 60 MB after a
# minute idle, grants/s ≥ 0.9 × raw rate.
#
# Needs wrk and curl. Takes about two and a half minutes after the build, then stops by
# itself; it ends only the processes it started. Environment:
#   SKIP_BUILD=1        use the binaries already built
#   BENCH_TESSERA, BENCH_ARGON2_RATE   other binaries to measure (implies nothing is built)
#   PRELOAD=/path.so    run the server with LD_PRELOAD (to compare allocators)
#   TESSERA_PASSWORDS__WORKERS, TESSERA_PASSWORDS__QUEUE   passed to the server
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
BIN=${BENCH_TESSERA:-$TARGET/release/tessera}
RATE=${BENCH_ARGON2_RATE:-$TARGET/release/examples/argon2-rate}
LUA=$ROOT/bench/password-memory.lua
for tool in wrk curl; do
  command -v "$tool" >/dev/null || { echo "needs $tool (apt-get install -y $tool)" >&2; exit 2; }
done

if [[ "${SKIP_BUILD:-}" != 1 && -z "${BENCH_TESSERA:-}" ]]; then
  (cd "$ROOT" && cargo build --release -q -p tessera && cargo build --release -q -p tessera-crypto --example argon2-rate)
fi

WORK=$(mktemp -d /tmp/tessera-password-memory.XXXXXX)
SERVER=""
SAMPLER=""
cleanup() {
  [[ -n "$SAMPLER" ]] && kill "$SAMPLER" 2>/dev/null || true
  if [[ -n "$SERVER" ]]; then
    kill "$SERVER" 2>/dev/null || true
    wait "$SERVER" 2>/dev/null || true
  fi
  rm -rf "$WORK"
}
trap cleanup EXIT

free_port() {
  local port
  while :; do
    port=$((20000 + RANDOM % 40000))
    (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null || { echo "$port"; return; }
  done
}
GRPC_PORT=$(free_port)
HTTP_PORT=$(free_port)
while [[ "$HTTP_PORT" == "$GRPC_PORT" ]]; do HTTP_PORT=$(free_port); done
BASE=http://127.0.0.1:$HTTP_PORT

echo "starting tessera serve on 127.0.0.1:$HTTP_PORT (gRPC $GRPC_PORT), data in $WORK" >&2
env ${PRELOAD:+LD_PRELOAD=$PRELOAD} \
  TESSERA_DATA_DIR="$WORK/data" TESSERA_GRPC__LISTEN="127.0.0.1:$GRPC_PORT" \
  TESSERA_HTTP__LISTEN="127.0.0.1:$HTTP_PORT" TESSERA_METRICS__LISTEN="" TESSERA_DEMO__ENABLED=false \
  TESSERA_FACADE__TRUSTED_PROXIES=127.0.0.1/32 TESSERA_TOKENS__LOCKOUT_THRESHOLD=1000000 \
  TESSERA_LOG__LEVEL=warn "$BIN" serve >"$WORK/server.log" 2>&1 &
SERVER=$!
for _ in $(seq 300); do
  curl -sf -o /dev/null "$BASE/.well-known/openid-configuration" && break
  kill -0 "$SERVER" 2>/dev/null || { cat "$WORK/server.log" >&2; exit 1; }
  sleep 0.1
done
curl -sf -o /dev/null "$BASE/.well-known/openid-configuration" || { echo "the server did not start" >&2; exit 1; }

# Sampler: "<epoch seconds> <VmRSS kB>" every 100 ms, without forking.
(
  while [[ -r /proc/$SERVER/status ]]; do
    while read -r key value _; do
      [[ "$key" == VmRSS: ]] && echo "$EPOCHREALTIME $value" && break
    done <"/proc/$SERVER/status"
    sleep 0.1
  done
) >"$WORK/rss.log" 2>/dev/null &
SAMPLER=$!

rss_kb() { awk '/^VmRSS:/ {print $2}' "/proc/$SERVER/status"; }
hwm_kb() { awk '/^VmHWM:/ {print $2}' "/proc/$SERVER/status"; }
# Resets VmHWM so each phase reports its own peak (proc(5): clear_refs, value 5).
reset_hwm() { echo 5 >"/proc/$SERVER/clear_refs" 2>/dev/null || true; }
peak_kb() { awk -v a="$1" -v b="$2" '$1 >= a && $1 <= b && $2 > m {m = $2} END {print m + 0}' "$WORK/rss.log"; }
mb() { awk -v k="$1" 'BEGIN {printf "%.0f", k / 1024}'; }

# A client allowed the password grant and a user, provisioned as an operator would.
ADMIN=("$BIN" admin --endpoint "http://127.0.0.1:$GRPC_PORT" --token-file "$WORK/data/admin-token")
SECRET=$("${ADMIN[@]}" --json client create --id bench --name bench --grant password \
  --grant authorization_code --redirect-uri http://127.0.0.1/cb --skip-consent |
  sed -n 's/.*"client_secret": *"\([^"]*\)".*/\1/p')
[[ -n "$SECRET" ]] || { echo "could not create the bench client" >&2; exit 1; }
USER_PASSWORD=bench-password-$RANDOM$RANDOM
TESSERA_PASSWORD=$USER_PASSWORD "${ADMIN[@]}" user create --username bench >/dev/null
BASIC=$(printf '%s' "bench:$SECRET" | base64 -w0)
# A real login form first: its CSRF cookie is what every POST /login must carry.
CSRF=$(curl -s -D - -o /dev/null \
  "$BASE/oauth2/authorize?response_type=code&client_id=bench&redirect_uri=http%3A%2F%2F127.0.0.1%2Fcb" |
  sed -n 's/^[Ss]et-[Cc]ookie: tessera_csrf=\([^;]*\).*/\1/p')
[[ -n "$CSRF" ]] || { echo "the login page set no CSRF cookie" >&2; exit 1; }

BASELINE=$(rss_kb)
declare -A PEAK HWM STAT RATE_OF
run_phase() { # name, "wrk options", script arguments...
  local name=$1 options=$2
  shift 2
  reset_hwm
  local start=$EPOCHREALTIME
  local out
  # shellcheck disable=SC2086 # the options are words
  out=$(wrk $options -s "$LUA" "$BASE" -- "$@" 2>&1 | tail -n 50) || true
  local end=$EPOCHREALTIME
  sleep 0.2
  PEAK[$name]=$(peak_kb "$start" "$end")
  HWM[$name]=$(hwm_kb)
  STAT[$name]=$(grep '^statuses' <<<"$out" | sed 's/^statuses //')
  [[ -n "${STAT[$name]}" ]] || { echo "$out" >&2; exit 1; }
}
echo "(a) 64 concurrent POST /login for 30 s" >&2
run_phase login "-t2 -c64 -d30s --timeout 10s" login "$CSRF"
echo "(b) 800 password grants at 8 concurrent" >&2
# An exact count, so curl rather than wrk (which runs for a duration).
reset_hwm
START=$EPOCHREALTIME
CODES=$(seq 800 | awk '{printf "198.18.%d.%d\n", $1 / 250, $1 % 250 + 1}' | xargs -P8 -I{} curl -s -o /dev/null -w '%{http_code}\n' --max-time 30 \
  -H "Authorization: Basic $BASIC" -H "X-Forwarded-For: {}" \
  --data-urlencode grant_type=password --data-urlencode username=bench \
  --data-urlencode "password=$USER_PASSWORD" "$BASE/oauth2/token" || true)
END=$EPOCHREALTIME
sleep 0.2
PEAK[grants800]=$(peak_kb "$START" "$END")
HWM[grants800]=$(hwm_kb)
count() { grep -c "^$1\$" <<<"$CODES" || true; }
STAT[grants800]=$(printf '200=%d 400=%d 401=%d 503=%d other=%d duration_s=%.3f' "$(count 200)" "$(count 400)" \
  "$(count 401)" "$(count 503)" "$(grep -cv '^\(200\|400\|401\|503\)$' <<<"$CODES" || true)" \
  "$(awk -v a="$START" -v b="$END" 'BEGIN {print b - a}')")
echo "(c) password grants at 64 concurrent for 20 s" >&2
run_phase grants64 "-t2 -c64 -d20s --timeout 10s" grant "$BASIC" bench "$USER_PASSWORD"
echo "(e) password grants at 8 concurrent for 20 s" >&2
run_phase grants8 "-t1 -c8 -d20s --timeout 10s" grant "$BASIC" bench "$USER_PASSWORD"

IDLE_FROM=$(date +%s)
echo "(d) raw Argon2id rate on every core (the server is idle meanwhile)" >&2
RAW=$("$RATE" 5)
sleep $((IDLE_FROM + 60 - $(date +%s)))
IDLE=$(rss_kb)

field() { sed -n "s/.*$2=\([0-9.]*\).*/\1/p" <<<"$1"; }
RAW_RATE=$(field "$RAW" reused_per_s)
OK200=$(field "${STAT[grants8]}" 200)
SECS=$(field "${STAT[grants8]}" duration_s)
GRANTS=$(awk -v n="$OK200" -v s="$SECS" 'BEGIN {printf "%.1f", n / s}')
RATIO=$(awk -v g="$GRANTS" -v r="$RAW_RATE" 'BEGIN {printf "%.2f", g / r}')

printf '\n%s\n' "$RAW"
printf 'server: %s, workers=%s queue=%s%s\n' "$("$BIN" --version 2>/dev/null || echo tessera)" \
  "${TESSERA_PASSWORDS__WORKERS:-cores}" "${TESSERA_PASSWORDS__QUEUE:-4x}" "${PRELOAD:+, LD_PRELOAD=$PRELOAD}"
printf '%-34s %10s %10s  %s\n' phase "peak MB" "VmHWM MB" statuses
printf '%-34s %10s %10s\n' "baseline (started, provisioned)" "$(mb "$BASELINE")" ""
printf '%-34s %10s %10s  %s\n' "(a) 64 x POST /login, 30 s" "$(mb "${PEAK[login]}")" "$(mb "${HWM[login]}")" "${STAT[login]}"
printf '%-34s %10s %10s  %s\n' "(b) 800 grants, 8 concurrent" "$(mb "${PEAK[grants800]}")" "$(mb "${HWM[grants800]}")" "${STAT[grants800]}"
printf '%-34s %10s %10s  %s\n' "(c) grants, 64 concurrent, 20 s" "$(mb "${PEAK[grants64]}")" "$(mb "${HWM[grants64]}")" "${STAT[grants64]}"
printf '%-34s %10s %10s  %s\n' "(e) grants, 8 concurrent, 20 s" "$(mb "${PEAK[grants8]}")" "$(mb "${HWM[grants8]}")" "${STAT[grants8]}"
printf '%-34s %10s\n' "after 60 s idle" "$(mb "$IDLE")"
printf 'password grants: %s/s; raw Argon2id: %s/s; ratio %s\n' "$GRANTS" "$RAW_RATE" "$RATIO"

FAILED=0
for phase in login grants800 grants64 grants8; do
  [[ $(mb "${HWM[$phase]}") -lt 150 ]] || { echo "MISSED: $phase peak ≥ 150 MB"; FAILED=1; }
done
[[ $(mb "$IDLE") -lt 60 ]] || { echo "MISSED: ≥ 60 MB after a minute idle"; FAILED=1; }
awk -v r="$RATIO" 'BEGIN {exit !(r >= 0.9)}' || { echo "MISSED: grants/s < 0.9 × raw Argon2id rate"; FAILED=1; }
grep -q "other=0 " <<<"${STAT[login]} ${STAT[grants800]} ${STAT[grants64]} ${STAT[grants8]}" || true
[[ $FAILED == 0 ]] && echo "all targets met"
exit $FAILED
