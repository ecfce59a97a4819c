#!/usr/bin/env bash
# Soak test of `stale-guard serve`. Run by hand, not in CI; record the
# results in docs/reliability.md.
#
#   tests/soak/run.sh
#
# For DURATION seconds (default 600) h2load sends a fixed rate of
# AdmissionReviews over TLS (h2), in back-to-back slices of SLICE seconds
# (default 30) so that each slice reports its own latency percentiles, while:
#   - a commit is pushed to the served repository every PUSH_EVERY seconds
#     (default 3; it changes a file outside the overlay);
#   - the serving certificate is rotated every ROTATE_EVERY seconds (default
#     60) by a kubelet-style `..data` symlink swap, with a new bundle from
#     `stale-guard certs`;
#   - the git remote (`git daemon`) is stopped for DOWN_FOR seconds (default
#     20) every DOWN_EVERY seconds (default 120).
# RSS and open file descriptors of the server are sampled every 10 s; its
# smaps and /metrics every SNAPSHOT_EVERY seconds (default 300), so the
# summary can say which kind of memory grew (tests/soak/anon.py) next to
# how full the checksum caches were.
#
# Environment:
#   SG_BIN   the stale-guard binary (default target/release/stale-guard,
#            relative to the repository root; build it with
#            `cargo build --release` first)
#   RPS      requests per second in total (default 100) over CONNS
#            connections (default 4)
#   OUT      directory for the results (default: a new temporary directory,
#            kept and printed at the end)
#   LIMITS   a `limits:` value for the server's config, e.g.
#            '{ caches: { resultEntries: 400, treeEntries: 400 } }' to see
#            RSS once the checksum caches are full (default: none)
#
# The review is stamped with the repository's first commit and the overlay's
# checksum there; every pushed commit leaves the overlay unchanged, and the
# rule has `staleness: content`. So the expected verdicts are `Fresh` (while
# the first commit is the head) and `UnchangedOverlay` (after), both allowed.
# An UNEXPECTED ERROR is: a transport error or timeout (h2load "failed",
# "errored" or "timeout"), a status other than 200, or a verdict other than
# Fresh or UnchangedOverlay (counted from the server's
# stale_guard_reviews_total by reason, and from a curl probe every 10 s
# that reads the verdict itself). The script exits 1 if there is any.
#
# Needs: h2load (Debian nghttp2-client), curl, openssl, git, python3.
# Only loopback addresses are used; ports are picked free.
set -euo pipefail
here=$(cd "$(dirname "$0")/../.." && pwd)
cd "$here"
duration=${DURATION:-600}
slice=${SLICE:-30}
push_every=${PUSH_EVERY:-3}
rotate_every=${ROTATE_EVERY:-60}
down_every=${DOWN_EVERY:-120}
down_for=${DOWN_FOR:-20}
rps=${RPS:-100}
conns=${CONNS:-4}
snapshot_every=${SNAPSHOT_EVERY:-300}
sg_bin=${SG_BIN:-target/release/stale-guard}
case "$sg_bin" in /*) ;; *) sg_bin="$here/$sg_bin" ;; esac

for tool in h2load curl openssl git python3; do
  command -v "$tool" >/dev/null || { echo "soak: $tool is missing (apt-get install nghttp2-client curl openssl git python3)" >&2; exit 2; }
done
[ -x "$sg_bin" ] || { echo "soak: $sg_bin is not an executable (set SG_BIN, or cargo build --release)" >&2; exit 2; }

work=$(mktemp -d)
out=${OUT:-$(mktemp -d)}
mkdir -p "$out"
pids=()
daemon_pid=
cleanup() {
  for p in "${pids[@]}" $daemon_pid; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
export GIT_CONFIG_NOSYSTEM=1 GIT_CONFIG_GLOBAL=/dev/null
export GIT_AUTHOR_NAME=soak GIT_AUTHOR_EMAIL=soak@example.com GIT_COMMITTER_NAME=soak GIT_COMMITTER_EMAIL=soak@example.com
log() { printf '%s %s\n' "$(date -u +%H:%M:%S)" "$*" | tee -a "$out/events.log"; }

# --- repository: a bare origin served by git daemon, pushed to from a clone
"$here/tests/sample-repo.sh" "$work/src" >/dev/null
mkdir -p "$work/git"
git clone -q --bare "$work/src" "$work/git/gitops.git"
git -C "$work/src" remote add origin "$work/git/gitops.git"
rev=$(git -C "$work/src" rev-parse HEAD)
overlay=overlays/prod/east
sum=$("$sg_bin" checksum --repo "$work/src" --overlay "$overlay")
git_port=$(free_port)
start_daemon() {
  git daemon --reuseaddr --export-all --listen=127.0.0.1 --port="$git_port" \
    --base-path="$work/git" "$work/git" >>"$out/git-daemon.log" 2>&1 &
  daemon_pid=$!
}
stop_daemon() { kill "$daemon_pid" 2>/dev/null || true; wait "$daemon_pid" 2>/dev/null || true; daemon_pid=; }
start_daemon

# --- certificates: tls/<version>/ and tls/..data -> <version>
mkdir -p "$work/tls"
cert_version=0
rotate() {
  cert_version=$((cert_version + 1))
  local v="v$cert_version"
  "$sg_bin" certs --service soak --namespace soak --out "$work/tls/$v" --force >>"$out/certs.log" 2>&1
  ln -sfn "$v" "$work/tls/..data_tmp"
  mv -T "$work/tls/..data_tmp" "$work/tls/..data"
  openssl x509 -in "$work/tls/$v/tls.crt" -noout -fingerprint -sha256 | cut -d= -f2 >"$work/tls/$v/fingerprint"
}
rotate
ln -s ..data/tls.crt "$work/tls/tls.crt"
ln -s ..data/tls.key "$work/tls/tls.key"

# --- the review: Fresh now, UnchangedOverlay after the first push
python3 - "$work/review.json" "$rev" "$sum" <<'EOF'
import json, sys
review = {
    "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
    "request": {
        "uid": "soak-1",
        "kind": {"group": "networking.k8s.io", "version": "v1", "kind": "Ingress"},
        "resource": {"group": "networking.k8s.io", "version": "v1", "resource": "ingresses"},
        "name": "web", "namespace": "prod-apps", "operation": "UPDATE",
        "userInfo": {"username": "system:serviceaccount:flux-system:kustomize-controller",
                     "groups": ["system:serviceaccounts"]},
        "object": {"apiVersion": "networking.k8s.io/v1", "kind": "Ingress",
                   "metadata": {"name": "web", "namespace": "prod-apps",
                                "annotations": {"stale-guard.io/revision": sys.argv[2],
                                                "stale-guard.io/checksum": sys.argv[3]}},
                   "spec": {"rules": [{"host": "east.example.com"}]}},
        "dryRun": False,
    },
}
json.dump(review, open(sys.argv[1], "w"), separators=(",", ":"))
EOF

# --- the server
port=$(free_port)
cat >"$work/config.yaml" <<EOF
listen: "127.0.0.1:$port"
tls: { certFile: $work/tls/tls.crt, keyFile: $work/tls/tls.key }
mirrorDir: $work/mirrors
sources:
  - { name: gitops, url: "git://127.0.0.1:$git_port/gitops.git", branch: main, pollInterval: 2s, fetchTimeout: 10s }
rules:
  - name: prod-east
    match: { namespaces: [prod-apps], kinds: [Ingress] }
    source: gitops
    overlay: $overlay
    mode: enforce
    staleness: content
failure: { mirrorUnavailable: deny, maxMirrorStaleness: 10m, decisionTimeout: 4s }
EOF
[ -z "${LIMITS:-}" ] || echo "limits: $LIMITS" >>"$work/config.yaml"
RUST_LOG=${RUST_LOG:-warn} "$sg_bin" serve --config "$work/config.yaml" >"$out/server.log" 2>&1 &
sg_pid=$!
pids+=("$sg_pid")
base="https://127.0.0.1:$port"
for _ in $(seq 100); do
  curl -sfk "$base/readyz" >/dev/null && break
  kill -0 "$sg_pid" 2>/dev/null || { echo "soak: the server exited:" >&2; cat "$out/server.log" >&2; exit 1; }
  sleep 0.2
done
curl -sfk "$base/readyz" >/dev/null || { echo "soak: the server is not ready" >&2; cat "$out/server.log" >&2; exit 1; }

verdict() { curl -sk --max-time 5 -H 'content-type: application/json' --data-binary @"$work/review.json" "$base/validate"; }
first=$(verdict)
case "$first" in
  *'"allowed":true'*'"reason":"Fresh"'* | *'"reason":"Fresh"'*'"allowed":true'*) ;;
  *) echo "soak: expected Fresh first, got: $first" >&2; exit 1 ;;
esac
rss() { awk '/^VmRSS/{print $2}' "/proc/$sg_pid/status"; }
fds() { ls "/proc/$sg_pid/fd" | wc -l; }
# RSS split into anonymous memory (the heap: what a leak grows) and
# file-backed pages (mmapped pack files and the binary: page cache the
# kernel can reclaim), plus the mappings of files already deleted.
rss_parts() { awk '/^RssAnon/{a=$2} /^RssFile/{f=$2} END{printf "%s,%s", a, f}' "/proc/$sg_pid/status"; }
deleted_maps() { grep -c '(deleted)' "/proc/$sg_pid/maps" || true; }
echo "elapsed_s,rss_kib,rss_anon_kib,rss_file_kib,fds,threads,deleted_maps" >"$out/resources.csv"
rss_start=$(rss); fds_start=$(fds)
log "server pid $sg_pid on $base; git daemon on port $git_port; review Fresh; RSS ${rss_start} KiB, ${fds_start} fds; $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg)"
log "plan: ${duration}s at ${rps} req/s over ${conns} h2 connections, ${slice}s slices; push every ${push_every}s; rotate every ${rotate_every}s; remote down ${down_for}s every ${down_every}s"

t0=$(date +%s)
elapsed() { echo $(( $(date +%s) - t0 )); }

# --- disturbances, in the background
(
  n=0
  while [ "$(elapsed)" -lt "$duration" ]; do
    # Never sleep past the end (PUSH_EVERY=100000 means no pushes).
    left=$(( duration - $(elapsed) ))
    sleep "$(( push_every < left ? push_every : left ))"
    [ "$(elapsed)" -lt "$duration" ] || break
    n=$((n + 1))
    echo "push $n at $(date -u +%T)" >>"$work/src/activity.log"
    git -C "$work/src" add activity.log
    git -C "$work/src" commit -qm "soak push $n"
    git -C "$work/src" push -q origin main 2>>"$out/push-errors.log" || echo "push $n failed" >>"$out/push-errors.log"
  done
  echo "$n" >"$out/pushes"
) &
pids+=($!)

probe_bad=0
probe_n=0
next_rotate=$rotate_every
next_down=$down_every
next_sample=0
next_snapshot=0
up_at=-1
declare -A reasons=()
slice_no=0
echo "slice,start_s,requests,succeeded,failed,errored,timeout,non2xx,p50_ms,p99_ms,max_ms,rss_kib,fds,h2load_status" >"$out/slices.csv"
monitor() {
  # Runs in the foreground between slices' h2load: rotates, stops and
  # starts the remote, samples resources and probes the verdict.
  local until=$1
  while [ "$(elapsed)" -lt "$until" ] && kill -0 "$h2_pid" 2>/dev/null; do
    local e
    e=$(elapsed)
    if [ "$e" -ge "$next_rotate" ]; then
      rotate
      log "rotated the certificate to v$cert_version"
      next_rotate=$((next_rotate + rotate_every))
      rotated_check_at=$((e + 5))
    fi
    if [ "${rotated_check_at:-0}" -gt 0 ] && [ "$e" -ge "$rotated_check_at" ]; then
      served=$(openssl s_client -connect "127.0.0.1:$port" -servername soak.soak.svc </dev/null 2>/dev/null \
        | openssl x509 -noout -fingerprint -sha256 | cut -d= -f2)
      if [ "$served" = "$(cat "$work/tls/v$cert_version/fingerprint")" ]; then
        log "serving certificate v$cert_version"
      else
        log "UNEXPECTED: still serving an older certificate 5 s after rotating to v$cert_version"
        probe_bad=$((probe_bad + 1))
      fi
      rotated_check_at=0
    fi
    if [ -n "$daemon_pid" ] && [ "$e" -ge "$next_down" ]; then
      stop_daemon
      log "git remote down"
      up_at=$((e + down_for))
      next_down=$((next_down + down_every))
    fi
    if [ -z "$daemon_pid" ] && [ "$e" -ge "$up_at" ]; then
      start_daemon
      log "git remote up"
    fi
    if [ "$e" -ge "$next_snapshot" ]; then
      next_snapshot=$((next_snapshot + snapshot_every))
      mkdir -p "$out/snapshots"
      cp "/proc/$sg_pid/smaps" "$out/snapshots/smaps-$e.txt" 2>/dev/null || true
      curl -sk "$base/metrics" >"$out/snapshots/metrics-$e.txt" || true
    fi
    if [ "$e" -ge "$next_sample" ]; then
      next_sample=$((next_sample + 10))
      echo "$e,$(rss),$(rss_parts),$(fds),$(awk '/^Threads/{print $2}' "/proc/$sg_pid/status"),$(deleted_maps)" >>"$out/resources.csv"
      v=$(verdict || true)
      probe_n=$((probe_n + 1))
      r=$(sed -n 's/.*"reason":"\([A-Za-z]*\)".*/\1/p' <<<"$v")
      reasons[${r:-none}]=$(( ${reasons[${r:-none}]:-0} + 1 ))
      case "$r" in
        Fresh | UnchangedOverlay) ;;
        *) probe_bad=$((probe_bad + 1)); log "UNEXPECTED probe verdict: ${v:0:300}" ;;
      esac
    fi
    sleep 0.5
  done
}

while [ "$(elapsed)" -lt "$duration" ]; do
  slice_no=$((slice_no + 1))
  start=$(elapsed)
  d=$(( duration - start < slice ? duration - start : slice ))
  [ "$d" -ge 5 ] || break
  h2load -D "$d" -c "$conns" -m 1 --rps "$(( rps / conns ))" \
    -H 'content-type: application/json' -d "$work/review.json" \
    --log-file="$out/slice-$slice_no.tsv" "$base/validate" >"$out/slice-$slice_no.txt" 2>&1 &
  h2_pid=$!
  pids+=("$h2_pid")
  monitor "$((start + d + 30))"
  h2_status=0
  wait "$h2_pid" || h2_status=$?
  if [ "$h2_status" -ne 0 ]; then
    sig=$( [ "$h2_status" -gt 128 ] && kill -l "$((h2_status - 128))" 2>/dev/null || true)
    log "h2load ended with status $h2_status${sig:+ (SIG$sig)} in slice $slice_no, after $(( $(elapsed) - start )) s"
  fi
  python3 - "$out/slice-$slice_no.txt" "$out/slice-$slice_no.tsv" "$slice_no" "$start" "$(rss)" "$(fds)" "$h2_status" >>"$out/slices.csv" <<'EOF'
import re, sys
txt, tsv, n, start, rss, fds, status = sys.argv[1:]
text = open(txt).read()
def num(pattern):
    m = re.search(pattern, text)
    return int(m.group(1)) if m else -1
total = num(r"requests: (\d+) total")
succeeded = num(r"(\d+) succeeded")
failed = num(r"(\d+) failed")
errored = num(r"(\d+) errored")
timeout = num(r"(\d+) timeout")
m = re.search(r"status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx", text)
non2xx = sum(int(x) for x in m.groups()[1:]) if m else -1
lat, other = [], 0
for line in open(tsv):
    parts = line.split("\t")
    if len(parts) >= 3:
        if parts[1] != "200":
            other += 1
        lat.append(int(parts[2]) / 1000.0)
lat.sort()
def pct(p):
    return lat[min(len(lat) - 1, int(p * len(lat)))] if lat else -1
non2xx = max(non2xx, other)
if total < 0:
    # h2load ended without its summary (killed): count what its log holds.
    total, succeeded = len(lat), len(lat) - other
    failed = errored = timeout = 0
print(f"{n},{start},{total},{succeeded},{failed},{errored},{timeout},{non2xx},{pct(0.5):.2f},{pct(0.99):.2f},{lat[-1] if lat else -1:.2f},{rss},{fds},{status}")
EOF
  tail -1 "$out/slices.csv" | tee -a "$out/events.log"
  # Cache sizes after the first slice, to tell cache fill from a leak.
  [ "$slice_no" != 1 ] || curl -sk "$base/metrics" >"$out/metrics-warm.txt" || true
done
[ -n "$daemon_pid" ] || start_daemon
wait "${pids[1]}" || true

rss_end=$(rss); fds_end=$(fds)
rss_parts_end=$(rss_parts)
mkdir -p "$out/snapshots"
cp "/proc/$sg_pid/smaps" "$out/snapshots/smaps-$(elapsed).txt" 2>/dev/null || true
# The largest mappings at the end, by resident size, to tell heap from mapped packs.
awk '/^[0-9a-f]+-[0-9a-f]+ /{name=$6} /^Rss:/{if ($2 > 256) printf "%8d KiB  %s\n", $2, (name == "" ? "[anon]" : name)}' \
  "/proc/$sg_pid/smaps" | sort -rn | head -25 >"$out/smaps-end.txt" || true
curl -sk "$base/metrics" >"$out/metrics.txt"
# RSS "start" for the flatness check: after the first slice (warm caches,
# TLS and h2 buffers allocated), as well as right after start-up.
rss_warm=$(awk -F, 'NR==2{print $12}' "$out/slices.csv")
PYTHONPATH="$here/tests/soak" python3 - "$out" "$rss_start" "$rss_warm" "$rss_end" "$fds_start" "$fds_end" "$probe_bad" "$probe_n" "$rss_parts_end" <<'EOF' | tee "$out/summary.txt"
import csv, re, sys
out, rss_start, rss_warm, rss_end, fds_start, fds_end, probe_bad, probe_n, parts_end = sys.argv[1:]
rows = list(csv.DictReader(open(f"{out}/slices.csv")))
tot = lambda k: sum(int(r[k]) for r in rows)
metrics = open(f"{out}/metrics.txt").read()
by_reason = {}
for m in re.finditer(r'^stale_guard_reviews_total\{decision="(\w+)",reason="(\w+)"\} (\d+)', metrics, re.M):
    by_reason[f"{m.group(1)}/{m.group(2)}"] = int(m.group(3))
bad = re.search(r"^stale_guard_bad_requests_total (\d+)", metrics, re.M)
expected = {"allow/Fresh", "allow/UnchangedOverlay"}
unexpected_verdicts = sum(v for k, v in by_reason.items() if k not in expected)
errors = tot("failed") + tot("errored") + tot("timeout") + tot("non2xx")
p99 = [float(r["p99_ms"]) for r in rows]
print(f"slices: {len(rows)}; requests: {tot('requests')}, succeeded {tot('succeeded')}")
print(f"transport errors/timeouts: failed {tot('failed')}, errored {tot('errored')}, timeout {tot('timeout')}; non-200: {tot('non2xx')}")
print(f"verdicts (server metrics): {by_reason}; bad requests: {bad.group(1) if bad else '?'}")
print(f"unexpected verdicts: {unexpected_verdicts}; probe problems: {probe_bad} of {probe_n} probes")
print(f"p99 per slice (ms): {' '.join(f'{x:.1f}' for x in p99)}")
print(f"p99 range: {min(p99):.1f}..{max(p99):.1f} ms; max latency {max(float(r['max_ms']) for r in rows):.1f} ms")
rs, rw, re_ = int(rss_start), int(rss_warm), int(rss_end)
print(f"RSS: start {rs/1024:.1f} MiB, after slice 1 {rw/1024:.1f} MiB, end {re_/1024:.1f} MiB ({(re_-rw)/rw*100:+.1f}% vs after slice 1)")
growth = (re_ - rw) / rw * 100
print(f"RSS target (end within 10% of after slice 1): {'met' if abs(growth) <= 10 else 'NOT MET'} ({growth:+.1f}%); see resources.csv for the curve")
res = list(csv.DictReader(open(f"{out}/resources.csv")))
if len(res) > 3:
    first = res[3]  # 30 s in: warm, like "after slice 1"
    anon_end, file_end = (int(x) for x in parts_end.split(","))
    a0, f0 = int(first["rss_anon_kib"]), int(first["rss_file_kib"])
    print(f"RSS anonymous (heap): {a0/1024:.1f} -> {anon_end/1024:.1f} MiB ({(anon_end-a0)/a0*100:+.1f}%); "
          f"file-backed (binary, mapped packs): {f0/1024:.1f} -> {file_end/1024:.1f} MiB; "
          f"deleted files still mapped at the end: {res[-1]['deleted_maps']}")
    # The second half alone: does the growth level off?
    mid = res[len(res) // 2]
    rm, ae = int(mid["rss_kib"]), anon_end
    print(f"second half ({mid['elapsed_s']} s -> end): RSS {rm/1024:.1f} -> {re_/1024:.1f} MiB ({(re_-rm)/rm*100:+.1f}%), "
          f"anonymous {int(mid['rss_anon_kib'])/1024:.1f} -> {ae/1024:.1f} MiB")
print(f"open fds: start {fds_start}, end {fds_end}")
import glob
from anon import breakdown
t = lambda p: re.search(r"-(\d+)\.txt$", p).group(1)
snaps = sorted(glob.glob(f"{out}/snapshots/smaps-*.txt"), key=lambda p: int(t(p)))
if len(snaps) >= 2:
    # The first snapshot after start-up that is warm (the one at 0 s is taken before any load).
    first = snaps[1] if len(snaps) > 2 else snaps[0]
    a, b = breakdown(first), breakdown(snaps[-1])
    kinds = sorted(set(a) | set(b))
    print(f"anonymous memory by kind, KiB ({t(first)} s -> {t(snaps[-1])} s): " + ", ".join(
        f"{k} {a.get(k, (0, 0))[1]} -> {b.get(k, (0, 0))[1]}" for k in kinds))
def caches(text):
    return {f"{m.group(1)}/{m.group(2)}": int(m.group(3)) for m in re.finditer(
        r'^stale_guard_cache_(entries|weight)\{[^}]*cache="(\w+)"[^}]*\} (\d+)', text, re.M)}
try:
    warm = caches(open(f"{out}/metrics-warm.txt").read())
except OSError:
    warm = {}
end = caches(metrics)
if end:
    print("checksum caches (after slice 1 -> end): " + ", ".join(
        f"{k} {warm.get(k, '?')} -> {v}" for k, v in sorted(end.items())))
    over_time = []
    for p in sorted(glob.glob(f"{out}/snapshots/metrics-*.txt"), key=lambda p: int(t(p))):
        w = caches(open(p).read())
        over_time.append(f"{t(p)}s " + "/".join(
            str(w.get(f"weight/{c}", "?")) for c in ("results", "trees", "blob_digests", "kustomizations")))
    if over_time:
        print("cache weight over time (results/trees/blob_digests/kustomizations): " + ", ".join(over_time))
served = sum(by_reason.values())
print(f"reviews answered by the server: {served} (h2load logged {tot('requests')}, the probes {probe_n}, the first check 1)")
died = [r for r in rows if r["h2load_status"] != "0"]
if died:
    print(f"h2load did not finish {len(died)} slice(s) (status {', '.join(r['h2load_status'] for r in died)}): a client-side stop; "
          "every request it logged is counted above, and the server's counts show whether any verdict was unexpected")
unexpected = errors + unexpected_verdicts + int(probe_bad)
print(f"UNEXPECTED ERRORS: {unexpected}")
sys.exit(1 if unexpected else 0)
EOF
status=${PIPESTATUS[0]}
cp "$work/config.yaml" "$out/"
probe_summary=""
for r in "${!reasons[@]}"; do probe_summary+=" $r=${reasons[$r]}"; done
log "pushes: $(cat "$out/pushes" 2>/dev/null || echo ?); certificate versions: $cert_version; probe verdicts:$probe_summary; results in $out"
exit "$status"
