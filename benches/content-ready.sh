#!/usr/bin/env bash
# Time from a push being fetched to head's rendering being ready, for a
# rule with `content: verify` (docs/benchmarks.md, "Content verification").
# Not part of CI: run by hand.
#
#   benches/content-ready.sh [PUSHES]     (default 20)
#
# The release server follows a local repository (tests/sample-repo.sh)
# polled every second; each push changes the overlay. Its JSON log says
# when the fetch saw the new head ("new head") and when head's rendering
# was ready ("head rendered", with the rendering's own duration); the
# difference is what a review arriving right after the fetch waits at
# most. Needs git, kubectl (kustomize), python3.
set -euo pipefail
pushes=${1:-20}
here=$(cd "$(dirname "$0")/.." && pwd)
work=$(mktemp -d)
pid=
cleanup() { [ -n "$pid" ] && kill "$pid" 2>/dev/null; rm -rf "$work"; }
trap cleanup EXIT
(cd "$here" && cargo build --release -q)
sg="$here/target/release/stale-guard"
"$here/tests/sample-repo.sh" "$work/repo" >/dev/null
"$sg" certs --service sg --namespace bench --out "$work/certs" >/dev/null
cat > "$work/config.yaml" <<EOF
listen: "127.0.0.1:0"
tls: { certFile: $work/certs/tls.crt, keyFile: $work/certs/tls.key }
mirrorDir: $work/mirrors
sources:
  - { name: gitops, url: $work/repo, branch: main, pollInterval: 1s }
rules:
  - name: east
    source: gitops
    overlay: overlays/prod/east
    provenance: none
    content: verify
render: { command: [kubectl, kustomize], history: 0 }
EOF
RUST_LOG=info "$sg" serve --config "$work/config.yaml" >"$work/log" 2>&1 &
pid=$!
wait_lines() { # pattern count
  for _ in $(seq 300); do
    [ "$(grep -c "$1" "$work/log" || true)" -ge "$2" ] && return 0
    sleep 0.1
  done
  echo "content-ready: timed out waiting for $2 x '$1'" >&2; tail -5 "$work/log" >&2; exit 1
}
wait_lines '"head rendered"' 1
for i in $(seq "$pushes"); do
  echo "replicas=$((i + 3))" > "$work/repo/bases/prod-east/app.properties"
  git -C "$work/repo" -c user.name=b -c user.email=b@example.com commit -qam "push $i"
  wait_lines '"head rendered"' $((i + 1))
done
echo "machine: $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg)"
python3 - "$work/log" <<'EOF'
import json, sys
from datetime import datetime
def ts(line):
    return datetime.fromisoformat(line["timestamp"].replace("Z", "+00:00")).timestamp()
heads, ready, took = [], [], []
for raw in open(sys.argv[1]):
    try:
        line = json.loads(raw)
    except ValueError:
        continue
    msg = line.get("fields", {}).get("message")
    if msg == "new head":
        heads.append(ts(line))
    elif msg == "head rendered":
        ready.append(ts(line))
        took.append(line["fields"].get("took_ms", 0))
pairs = [(r - h) * 1000 for h, r in zip(heads[1:], ready[1:])]
pairs.sort(); took = sorted(took[1:])
def q(v, p):
    return v[min(len(v) - 1, int(p * len(v)))]
print(f"pushes {len(pairs)}: fetched -> rendering ready: p50 {q(pairs, .5):.0f} ms, p90 {q(pairs, .9):.0f} ms, max {pairs[-1]:.0f} ms; kustomize run inside it: p50 {q(took, .5)} ms")
EOF
