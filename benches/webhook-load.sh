#!/usr/bin/env bash
# Load benchmark of the webhook against the floor (../shared/tools/floor, a
# minimal axum+rustls AdmissionReview server), measured in the same run,
# taking turns. Not part of CI: run by hand, record in docs/benchmarks.md.
#
#   benches/webhook-load.sh [ROUNDS]        (default 4; DUR=10 seconds a run)
#   ATTACKS=1 benches/webhook-load.sh 0     (only valid reviews during attacks)
#   MODE=content benches/webhook-load.sh     (a content: verify rule, no annotations read)
#   MODE=flux benches/webhook-load.sh        (provenance: flux from a Kustomization)
#   CONFIGS='-p h1 -c 64;-t wrk -p h1 -c 64' benches/webhook-load.sh   (only these runs)
#
# With ATTACKS=1, valid reviews (h1, 64 connections) are then measured
# quiet, while benches/attack_client.py holds request bodies open or
# holds idle connections from another loopback address (127.0.0.2), and
# quiet again.
#
# With MODE=content, the repository gains an overlay that renders the
# floor's Ingress (the sample review's object without the fields the API
# server adds), and the rule verifies the object against it with
# `provenance: none`: the review is the floor's, byte for byte.
#
# With MODE=flux, the fake API server of tests/kube_support (the ignored
# test `serve_api_for_bench` in tests/provenance.rs, release build) serves
# a Kustomization at head for overlays/prod/east; the rule has
# `provenance: flux` and no source or overlay, and the review's object
# carries Flux's two labels naming it (its stale-guard annotations are
# not read).
#
# Needs h2load (Debian nghttp2-client), wrk, curl, openssl, git (and
# kubectl for MODE=content).
# A warm, in-scope `Fresh` review of about 4.5 KB (the floor's sample review
# with valid stale-guard annotations), 64 connections, over TLS.
set -euo pipefail
rounds=${1:-4}
here=$(cd "$(dirname "$0")/.." && pwd)
floor_src=${FLOOR:-$here/../shared/tools/floor}
for tool in h2load wrk curl openssl git; do
  command -v "$tool" >/dev/null || { echo "webhook-load: $tool is missing (apt-get install nghttp2-client wrk curl openssl git)" >&2; exit 2; }
done
work=$(mktemp -d)
pids=()
cleanup() {
  touch "$work/stop" 2>/dev/null || true
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  sleep 0.5; rm -rf "$work"
}
trap cleanup EXIT

echo "== building (release)"
cp -r "$floor_src" "$work/floor" && chmod -R u+w "$work/floor"
(cd "$work/floor" && CARGO_TARGET_DIR="${FLOOR_TARGET:-$work/floor/target}" cargo build --release -q)
floor_bin="${FLOOR_TARGET:-$work/floor/target}/release/floor-server"
(cd "$here" && cargo build --release -q)
sg_bin="$here/target/release/stale-guard"

echo "== certificates, repository, review"
(cd "$work/floor" && ./gen-certs.sh >/dev/null 2>&1)
certs=/tmp/floor-certs
"$here/tests/sample-repo.sh" "$work/repo" >/dev/null
rev=$(git -C "$work/repo" rev-parse HEAD)
sum=$("$sg_bin" checksum --repo "$work/repo" --overlay overlays/prod/east)
python3 - "$work/floor/sample-review.json" "$work/fresh.json" "$rev" "$sum" <<'EOF'
import json, sys
review = json.load(open(sys.argv[1]))
ann = review["request"]["object"]["metadata"]["annotations"]
ann["stale-guard.io/revision"] = sys.argv[3]
ann["stale-guard.io/checksum"] = sys.argv[4]
json.dump(review, open(sys.argv[2], "w"), separators=(",", ":"))
EOF
rule_extra=""
render=""
overlay=overlays/prod/east
if [ "${MODE:-annotations}" = content ]; then
  mkdir -p "$work/repo/overlays/bench"
  python3 - "$work/floor/sample-review.json" "$work/repo/overlays/bench/ingress.yaml" <<'EOF'
import json, sys
obj = json.load(open(sys.argv[1]))["request"]["object"]
for k in ("uid", "generation", "creationTimestamp", "managedFields", "resourceVersion"):
    obj["metadata"].pop(k, None)
obj.pop("status", None)
json.dump(obj, open(sys.argv[2], "w"), indent=1)
EOF
  printf 'resources: [ingress.yaml]\n' > "$work/repo/overlays/bench/kustomization.yaml"
  git -C "$work/repo" add -A
  git -C "$work/repo" -c user.name=bench -c user.email=bench@example.com commit -qm bench
  cp "$work/floor/sample-review.json" "$work/fresh.json"
  overlay=overlays/bench
  rule_extra="    provenance: none
    content: verify"
  render="render: { command: [kubectl, kustomize] }"
fi
kube=""
if [ "${MODE:-annotations}" = flux ]; then
  (cd "$here" && cargo test --release -q --test provenance --no-run 2>/dev/null)
  SG_BENCH_URL="$work/repo" SG_BENCH_REV="$rev" SG_BENCH_DIR="$work" \
    cargo test --release -q --manifest-path "$here/Cargo.toml" --test provenance -- \
    --ignored --exact serve_api_for_bench >"$work/api.log" 2>&1 &
  pids+=("$!")
  for _ in $(seq 100); do [ -s "$work/kubeconfig" ] && break; sleep 0.2; done
  [ -s "$work/kubeconfig" ] || { echo "webhook-load: the fake API server did not start:" >&2; cat "$work/api.log" >&2; exit 1; }
  python3 - "$work/fresh.json" <<'EOF'
import json, sys
review = json.load(open(sys.argv[1]))
labels = review["request"]["object"]["metadata"].setdefault("labels", {})
labels["kustomize.toolkit.fluxcd.io/name"] = "bench"
labels["kustomize.toolkit.fluxcd.io/namespace"] = "flux-system"
json.dump(review, open(sys.argv[1], "w"), separators=(",", ":"))
EOF
  rule_extra="    provenance: flux"
  kube="kube: { kubeconfig: $work/kubeconfig }"
fi
rule_source="    source: gitops
    overlay: $overlay"
[ "${MODE:-annotations}" = flux ] && rule_source=""
cat > "$work/config.yaml" <<EOF
listen: "127.0.0.1:9443"
tls: { certFile: $certs/server.crt, keyFile: $certs/server.key }
mirrorDir: $work/mirrors
sources:
  - { name: gitops, url: $work/repo, branch: main, pollInterval: 30s }
rules:
  - name: prod-east
    match: { namespaces: [prod-apps], kinds: [Ingress] }
$rule_source
$rule_extra
$render
$kube
EOF

echo "== starting both servers"
"$floor_bin" --port 8443 --cert "$certs/server.crt" --key "$certs/server.key" >"$work/floor.log" 2>&1 &
floor_pid=$!; pids+=("$floor_pid")
RUST_LOG=warn "$sg_bin" serve --config "$work/config.yaml" >"$work/sg.log" 2>&1 &
sg_pid=$!; pids+=("$sg_pid")
for _ in $(seq 50); do
  curl -sf --cacert "$certs/ca.crt" https://127.0.0.1:9443/readyz >/dev/null && break
  sleep 0.2
done
for p in "$floor_pid" "$sg_pid"; do
  kill -0 "$p" 2>/dev/null || { echo "webhook-load: a server exited (port in use?):" >&2; cat "$work"/*.log >&2; exit 1; }
done
verdict=$(curl -s --cacert "$certs/ca.crt" --data-binary @"$work/fresh.json" https://127.0.0.1:9443/validate)
case "$verdict" in
  *'"reason":"Fresh"'*) echo "review is Fresh (warm after this call)" ;;
  *) echo "webhook-load: expected a Fresh verdict, got: $verdict" >&2; exit 1 ;;
esac
echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), load $(cut -d' ' -f1-3 /proc/loadavg)"

IFS=';' read -r -a configs <<< "${CONFIGS:--p h1 -c 64;-p h2 -c 64 -m 1;-p h2 -c 1 -m 64;-t wrk -p h1 -c 64}"
[ "$rounds" -gt 0 ] && for cfg in "${configs[@]}"; do
  echo "== $cfg"
  DUR=${DUR:-10} "$work/floor/compare.sh" -r "$rounds" -A "$floor_pid" -B "$sg_pid" -o "$cfg -d ${DUR:-10}" \
    https://127.0.0.1:8443 https://127.0.0.1:9443 "$certs/ca.crt" "$work/fresh.json" | tail -3
done
echo "== stale-guard RSS after the runs: $(awk '/VmRSS/{print $2/1024 " MiB"}' /proc/$sg_pid/status), peak $(awk '/VmHWM/{print $2/1024 " MiB"}' /proc/$sg_pid/status)"

if [ "${ATTACKS:-0}" = 1 ]; then
  dur=${DUR:-10}
  for attack in quiet "bodies 48" "idle 400" quiet; do
    set -- $attack
    if [ "$1" != quiet ]; then
      python3 "$here/benches/attack_client.py" 127.0.0.1 9443 "$certs/ca.crt" "$1" "$2" $((dur + 6)) >"$work/attack.out" &
      attacker=$!; pids+=("$attacker")
      sleep 3
    fi
    result=$("$work/floor/loadtest.sh" -p h1 -c 64 -d "$dur" -P "$sg_pid" https://127.0.0.1:9443 "$certs/ca.crt" "$work/fresh.json" 2>/dev/null | tail -1 || true)
    if [ "$1" != quiet ]; then wait "$attacker" || true; fi
    echo "== attack: $attack: $result $( [ "$1" != quiet ] && cat "$work/attack.out")"
  done
  echo "== stale-guard RSS after the attacks: $(awk '/VmRSS/{print $2/1024 " MiB"}' /proc/$sg_pid/status), peak $(awk '/VmHWM/{print $2/1024 " MiB"}' /proc/$sg_pid/status)"
fi
