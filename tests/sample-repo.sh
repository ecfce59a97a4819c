#!/usr/bin/env bash
# Makes a small GitOps repository to try `stale-guard checksum` on:
#   tests/sample-repo.sh DIR
# overlays/prod/east -> overlays/prod/common -> bases/linked (a symlink to
# bases/prod-east, outside the overlay), the shape of the incident the
# checksum exists for.
set -euo pipefail
dir=${1:?usage: $0 DIR}
[ -e "$dir" ] && { echo "$dir exists; pick a new directory" >&2; exit 2; }
mkdir -p "$dir" && cd "$dir"
git init -q -b main
mkdir -p bases/prod-east overlays/prod/east overlays/prod/common overlays/staging
cat > bases/prod-east/kustomization.yaml <<'YAML'
resources: [ingress.yaml]
configMapGenerator:
  - name: web-config
    files: [app.properties]
YAML
cat > bases/prod-east/ingress.yaml <<'YAML'
apiVersion: networking.k8s.io/v1
kind: Ingress
metadata:
  name: web
spec:
  rules:
    - host: east.example.com
YAML
echo "replicas=3" > bases/prod-east/app.properties
ln -s prod-east bases/linked
cat > overlays/prod/common/kustomization.yaml <<'YAML'
resources: [../../../bases/linked]
labels:
  - pairs: {env: prod}
YAML
cat > overlays/prod/east/kustomization.yaml <<'YAML'
resources: [../common]
namespace: prod-apps
patches:
  - target: {kind: Ingress}
    patch: |-
      - op: add
        path: /metadata/annotations
        value: {region: east}
YAML
cat > overlays/staging/kustomization.yaml <<'YAML'
resources: [../../bases/prod-east]
namespace: staging
YAML
echo "# sample GitOps repository" > README.md
git add -A
git -c user.name=sample -c user.email=sample@example.com commit -qm "sample GitOps repository"
echo "made $dir: try --overlay overlays/prod/east"
