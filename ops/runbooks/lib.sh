# shellcheck shell=bash
# Sourced by the runbook scripts: common options, calls to the servers' APIs with curl, JSON
# read with node (on every server host), command templates, and the waits they share.

RB_NAME="$(basename "$0")"
RB_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
RB_TIMEOUT=300
RB_MAX_LAG_MS=5000
# As the master's own handover on SIGTERM: a replica within 1,000 transactions is caught up.
RB_MAX_LAG_TX=1000
RB_TOKEN_FILE=''
RB_CACERT=''
# The common options as given, to pass on to cluster-check.
RB_COMMON_ARGS=()
RB_TMP="$(mktemp -d)"
trap 'rm -rf "$RB_TMP"' EXIT

RB_COMMON_HELP='Common options:
  --token-file FILE   file holding the operator token (default: env NEBULAGC_OPERATOR_TOKEN)
  --cacert FILE       CA bundle for https node URLs (curl --cacert)
  --timeout SECONDS   how long a command may run, and a node may take at each step (default 300)
  --max-lag-ms MS     a replica further behind than this is not caught up (default 5000)
  --max-lag-tx N      nor one more than N transactions behind (default 1000)
  -h, --help          this text'

rb_log() { printf '%s %s: %s\n' "$(date -u +%H:%M:%S)" "$RB_NAME" "$*"; }
rb_die() {
  printf '%s: error: %s\n' "$RB_NAME" "$*" >&2
  exit 1
}
rb_usage_error() {
  printf '%s: %s (see --help)\n' "$RB_NAME" "$*" >&2
  exit 2
}

# Takes one common option off "$@": returns 1 when $1 is not one; sets RB_SHIFT.
rb_common_opt() {
  case "$1" in
    --token-file | --cacert | --timeout | --max-lag-ms | --max-lag-tx) ;;
    *) return 1 ;;
  esac
  [ $# -ge 2 ] || rb_usage_error "$1 needs a value"
  case "$1" in
    --token-file) RB_TOKEN_FILE="$2" ;;
    --cacert) RB_CACERT="$2" ;;
    --timeout) RB_TIMEOUT="$2" ;;
    --max-lag-ms) RB_MAX_LAG_MS="$2" ;;
    --max-lag-tx) RB_MAX_LAG_TX="$2" ;;
  esac
  case "$1" in
    --timeout | --max-lag-ms | --max-lag-tx) [[ "$2" =~ ^[0-9]+$ ]] || rb_usage_error "$1 must be a whole number" ;;
  esac
  RB_COMMON_ARGS+=("$1" "$2")
  RB_SHIFT=2
}

rb_check_tools() {
  command -v curl >/dev/null || rb_die "curl is needed"
  command -v node >/dev/null || rb_die "node is needed (to read the servers' JSON)"
  command -v timeout >/dev/null || rb_die "timeout (coreutils) is needed"
}

# Puts the operator token in a header file (mode 0600) so that it never shows in `ps`. Returns 1
# when there is none.
rb_load_token() {
  local token
  if [ -n "$RB_TOKEN_FILE" ]; then
    token="$(tr -d '[:space:]' <"$RB_TOKEN_FILE")" || rb_die "cannot read the token file $RB_TOKEN_FILE"
  else
    token="${NEBULAGC_OPERATOR_TOKEN:-}"
  fi
  [ -n "$token" ] || return 1
  (umask 077 && printf 'Authorization: Bearer %s\n' "$token" >"$RB_TMP/auth")
}

rb_require_token() {
  rb_load_token || rb_die "an operator token is needed: set NEBULAGC_OPERATOR_TOKEN or pass --token-file"
}

# rb_http METHOD URL PATH OUTFILE [JSON-BODY] [MAX-SECONDS]: prints the HTTP status, 000 when
# nothing answered; the body goes to OUTFILE.
rb_http() {
  local method="$1" url="${2%/}" path="$3" out="$4" body="${5:-}" max="${6:-5}" code
  local args=(-s -X "$method" --max-time "$max" -o "$out" -w '%{http_code}')
  if [ -n "$RB_CACERT" ]; then args+=(--cacert "$RB_CACERT"); fi
  if [ -f "$RB_TMP/auth" ]; then args+=(-H "@$RB_TMP/auth"); fi
  if [ -n "$body" ]; then args+=(-H 'content-type: application/json' --data-binary "$body"); fi
  : >"$out"
  code="$(curl "${args[@]}" "$url$path")" || true
  printf '%s' "${code:-000}"
}

# rb_hint STATUS: what an HTTP status most likely means here, for error messages.
rb_hint() {
  case "$1" in
    000) echo " (no answer)" ;;
    401) echo " (the operator token was refused)" ;;
    403) echo " (the token is not the operator token)" ;;
  esac
}

# rb_json FILE EXPR: the value of a JS expression over the parsed file `j`; strings raw, null
# and undefined as nothing, anything else as JSON. Fails on a file that is not JSON.
rb_json() {
  node -e '
    const fs = require("fs");
    let j;
    try { j = JSON.parse(fs.readFileSync(process.argv[1], "utf8")); } catch { process.exit(3); }
    const v = new Function("j", "return (" + process.argv[2] + ");")(j);
    if (v !== undefined && v !== null) process.stdout.write(typeof v === "string" ? v : JSON.stringify(v));
  ' "$1" "$2"
}

# rb_run_template TEMPLATE URL NODE-ID: runs the command with {url}, {host}, {port} and {node}
# filled in, for at most --timeout. Values go in unquoted, so only a safe set of characters is accepted.
rb_run_template() {
  local cmd="$1" url="${2%/}" node="$3" host port value safe='^[]A-Za-z0-9._:/@%+=,[-]*$'
  [[ "$url" =~ ^(https?)://(\[[^]]+\]|[^:/]+)(:([0-9]+))?(/.*)?$ ]] || rb_die "not an http(s) URL: $url"
  host="${BASH_REMATCH[2]}"
  port="${BASH_REMATCH[4]}"
  if [ -z "$port" ]; then
    if [ "${BASH_REMATCH[1]}" = https ]; then port=443; else port=80; fi
  fi
  host="${host#[}"
  host="${host%]}"
  if [[ "$cmd" == *'{node}'* ]] && [ -z "$node" ]; then
    rb_die "the node at $url is down, so its id is unknown: use {url}, {host} or {port} in the command"
  fi
  for value in "$url" "$host" "$port" "$node"; do
    [[ "$value" =~ $safe ]] || rb_die "refusing to put '$value' into a shell command (unexpected characters)"
  done
  cmd="${cmd//\{url\}/$url}"
  cmd="${cmd//\{host\}/$host}"
  cmd="${cmd//\{port\}/$port}"
  cmd="${cmd//\{node\}/$node}"
  rb_log "running: $cmd"
  # `systemctl start` waits for readiness without a bound (the unit's TimeoutStartSec=infinity).
  timeout "$RB_TIMEOUT" bash -c "$cmd"
}

# rb_following_problem URL NODE-ID MASTER-URL: prints why the node is not a caught-up replica of
# the serving master at MASTER-URL, and returns 1; returns 0 silently when it is.
rb_following_problem() {
  local url="$1" id="$2" master="$3" code
  code="$(rb_http GET "$url" /health "$RB_TMP/f-health")"
  if [ "$code" != 200 ]; then
    echo "$url: no answer ($code)"
    return 1
  fi
  code="$(rb_http GET "$master" /cluster/status "$RB_TMP/f-status")"
  if [ "$code" != 200 ]; then
    echo "the master $master: /cluster/status answered $code"
    return 1
  fi
  node -e '
    const fs = require("fs");
    const read = (f) => { try { return JSON.parse(fs.readFileSync(f, "utf8")); } catch { return undefined; } };
    const [h, s, id, maxMs, maxTx] = [read(process.argv[1]), read(process.argv[2]), process.argv[3], +process.argv[4], +process.argv[5]];
    const why = (() => {
      if (!h || !s) return "an answer that is not JSON";
      if (h.node_id !== id) return `answers as ${h.node_id}, not ${id}`;
      if (h.ha_state !== "replica.following") return `it is ${h.ha_state}, not replica.following`;
      if (h.lag.ms === null || h.lag.ms > maxMs) return `its lag is ${h.lag.ms ?? "unknown"} ms (at most ${maxMs})`;
      if (s.ha_mode !== "master") return `${s.node_id} is ${s.ha_mode}, not the master`;
      const r = s.replicas.find((x) => x.id === id);
      if (!r || !r.connected) return `the master ${s.node_id} does not list it as connected`;
      if (r.lag.transactions > maxTx) return `the master ${s.node_id} sees it ${r.lag.transactions} transactions behind (at most ${maxTx})`;
      return "";
    })();
    if (why) { console.log(why); process.exit(1); }
  ' "$RB_TMP/f-health" "$RB_TMP/f-status" "$id" "$RB_MAX_LAG_MS" "$RB_MAX_LAG_TX"
}

# rb_wait_following URL NODE-ID MASTER-URL: waits (--timeout) until the node follows that master, caught up.
rb_wait_following() {
  local deadline=$((SECONDS + RB_TIMEOUT)) why
  while ! why="$(rb_following_problem "$@")"; do
    [ "$SECONDS" -lt "$deadline" ] || rb_die "$2 ($1) is not a caught-up replica of $3 after ${RB_TIMEOUT} s: $why"
    sleep 0.5
  done
}

# rb_switchover MASTER-URL TARGET-ID: POST /cluster/switchover {to}; prints the new master's URL.
# A switchover that found the target not caught up, or another operation under way, is retried.
rb_switchover() {
  local master="$1" to="$2" code attempt body
  body="$(node -e 'process.stdout.write(JSON.stringify({ to: process.argv[1] }))' "$to")"
  for attempt in 1 2 3; do
    code="$(rb_http POST "$master" /cluster/switchover "$RB_TMP/switchover" "$body" 120)"
    if [ "$code" = 200 ]; then
      rb_json "$RB_TMP/switchover" 'j.url'
      return 0
    fi
    if [ "$code" = 409 ] && [ "$attempt" -lt 3 ] && [[ "$(rb_json "$RB_TMP/switchover" 'j.code' 2>/dev/null || true)" =~ ^(NOT_CAUGHT_UP|HA_BUSY)$ ]]; then
      rb_log "switchover to $to refused ($(cat "$RB_TMP/switchover")); trying again" >&2
      sleep 2
      continue
    fi
    rb_die "switchover to $to answered $code: $(cat "$RB_TMP/switchover")"
  done
}

# rb_wait_master URL NODE-ID ABOVE-EPOCH: waits until the node is a serving master on a newer epoch.
rb_wait_master() {
  local url="$1" id="$2" above="$3" deadline=$((SECONDS + RB_TIMEOUT)) seen
  while :; do
    if [ "$(rb_http GET "$url" /health/master "$RB_TMP/m-check")" = 200 ] && [ "$(rb_http GET "$url" /health "$RB_TMP/m-health")" = 200 ]; then
      seen="$(rb_json "$RB_TMP/m-health" '[j.ha_state, j.epoch > '"$above"', j.node_id].join(" ")')"
      [ "$seen" != "master.serving true $id" ] || return 0
    fi
    [ "$SECONDS" -lt "$deadline" ] || rb_die "$id ($url) is not a serving master on an epoch above $above after ${RB_TIMEOUT} s"
    sleep 0.5
  done
}
