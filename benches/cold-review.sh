#!/usr/bin/env bash
# Cold review latency: the first review of a revision, whose overlay
# checksum is not cached, for an overlay of 1,000 files (~10 MiB).
# Not part of CI: run by hand, record in docs/benchmarks.md.
#
#   benches/cold-review.sh [COMMITS]     (default 40)
#
# Three cases, all over TLS with curl, wall time as the client sees it:
#   first   the first review after start: every blob read and hashed;
#   unseen  a revision already in the mirror, never checksummed (blob caches
#           warm except the changed file; `staleness: content` checksums the
#           revision, the head's is cached);
#   fetched a revision pushed after the last poll: on-demand fetch, then the
#           checksum.
set -euo pipefail
commits=${1:-40}
here=$(cd "$(dirname "$0")/.." && pwd)
for tool in curl openssl git python3; do
  command -v "$tool" >/dev/null || { echo "cold-review: $tool is missing" >&2; exit 2; }
done
work=$(mktemp -d)
pid=''
cleanup() { [ -n "$pid" ] && kill "$pid" 2>/dev/null; rm -rf "$work"; }
trap cleanup EXIT
(cd "$here" && cargo build --release -q)
sg="$here/target/release/stale-guard"

echo "== repository: 1,000 ConfigMaps of ~10 KiB behind a symlinked base"
repo="$work/origin"
mkdir -p "$repo/platform/big" "$repo/bases" "$repo/overlays/prod/east"
git -C "$repo" init -q -b main
python3 - "$repo/platform/big" <<'EOF'
import sys, os, random
random.seed(7)
d = sys.argv[1]
names = []
for i in range(1000):
    name = f"cm-{i:04d}.yaml"
    names.append(name)
    data = "".join(f"  k{j}: \"{random.getrandbits(64):016x}{'x' * 120}\"\n" for j in range(70))
    open(os.path.join(d, name), "w").write(
        f"apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: cm-{i:04d}\ndata:\n{data}")
open(os.path.join(d, "kustomization.yaml"), "w").write(
    "resources:\n" + "".join(f"- {n}\n" for n in names))
EOF
ln -s ../platform/big "$repo/bases/big"
printf 'resources: [../../../bases/big]\nnamespace: prod-apps\n' > "$repo/overlays/prod/east/kustomization.yaml"
g() { git -C "$repo" -c user.name=bench -c user.email=bench@example.com "$@"; }
g add -A && g commit -qm base
for i in $(seq "$commits"); do
  echo "# change $i" >> "$repo/platform/big/cm-$(printf %04d $((i % 1000))).yaml"
  g commit -qam "change $i"
done
g gc -q
echo "closure: $(du -sh "$repo/platform/big" | cut -f1), $(git -C "$repo" rev-list --count HEAD) commits"

mkdir -p "$work/certs"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 -subj /CN=bench-ca \
  -keyout "$work/certs/ca.key" -out "$work/certs/ca.crt" 2>/dev/null
openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj /CN=localhost \
  -keyout "$work/certs/tls.key" -out "$work/certs/tls.csr" 2>/dev/null
openssl x509 -req -in "$work/certs/tls.csr" -CA "$work/certs/ca.crt" -CAkey "$work/certs/ca.key" \
  -CAcreateserial -days 2 -extfile <(printf 'subjectAltName=IP:127.0.0.1,DNS:localhost') \
  -out "$work/certs/tls.crt" 2>/dev/null
cat > "$work/config.yaml" <<EOF
listen: "127.0.0.1:9444"
tls: { certFile: $work/certs/tls.crt, keyFile: $work/certs/tls.key }
mirrorDir: $work/mirrors
sources:
  - { name: gitops, url: $repo, branch: main, pollInterval: 1h }
rules:
  - { name: prod-east, match: { namespaces: [prod-apps] }, source: gitops, overlay: overlays/prod/east, staleness: content }
EOF
RUST_LOG=warn "$sg" serve --config "$work/config.yaml" > "$work/server.log" 2>&1 &
pid=$!
for _ in $(seq 100); do curl -sf --cacert "$work/certs/ca.crt" https://127.0.0.1:9444/readyz >/dev/null && break; sleep 0.2; done

review() { # rev checksum -> prints "seconds reason"
  python3 - "$1" "$2" > "$work/review.json" <<'EOF'
import json, sys, uuid
print(json.dumps({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": {
  "uid": str(uuid.uuid4()), "kind": {"group": "", "version": "v1", "kind": "ConfigMap"},
  "resource": {"group": "", "version": "v1", "resource": "configmaps"}, "name": "cm-0001",
  "namespace": "prod-apps", "operation": "CREATE",
  "userInfo": {"username": "system:serviceaccount:flux-system:kustomize-controller"},
  "object": {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "cm-0001", "annotations": {
    "stale-guard.io/revision": sys.argv[1], "stale-guard.io/checksum": sys.argv[2]}}}}}))
EOF
  curl -s -o "$work/answer.json" -w '%{time_total}' --cacert "$work/certs/ca.crt" \
    -H 'Content-Type: application/json' --data-binary @"$work/review.json" https://127.0.0.1:9444/validate
  printf ' %s\n' "$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["response"]["auditAnnotations"]["reason"])' "$work/answer.json")"
}
sum_at() { "$sg" checksum --repo "$repo" --overlay overlays/prod/east --rev "$1"; }
stats() { sort -n | awk '{a[NR]=$1} END {printf "n=%d p50=%.1fms p99=%.1fms max=%.1fms\n", NR, a[int((NR+1)/2)]*1000, a[int(NR*0.99+0.999)]*1000, a[NR]*1000}'; }

head=$(git -C "$repo" rev-parse HEAD)
echo "== first review after start (fully cold): $(review "$head" "$(sum_at "$head")")"
: > "$work/unseen.txt"
for rev in $(git -C "$repo" rev-list --skip=1 HEAD); do
  review "$rev" "$(sum_at "$rev")" >> "$work/unseen.txt"
done
echo "== unseen revisions in the mirror: $(cut -d' ' -f2 "$work/unseen.txt" | sort | uniq -c | xargs), $(cut -d' ' -f1 "$work/unseen.txt" | stats)"
: > "$work/fetched.txt"
for i in $(seq 10); do
  echo "# pushed $i" >> "$repo/platform/big/cm-0500.yaml"
  g commit -qam "pushed $i"
  rev=$(git -C "$repo" rev-parse HEAD)
  review "$rev" "$(sum_at "$rev")" >> "$work/fetched.txt"
done
echo "== pushed after the last poll (fetch + checksum): $(cut -d' ' -f2 "$work/fetched.txt" | sort | uniq -c | xargs), $(cut -d' ' -f1 "$work/fetched.txt" | stats)"
echo "stale-guard peak RSS: $(awk '/VmHWM/{print $2/1024 " MiB"}' /proc/$pid/status)"
