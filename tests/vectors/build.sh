#!/usr/bin/env bash
# Builds the small deterministic repositories whose overlay checksums are
# pinned in tests/vectors.rs (and documented in docs/checksum.md).
#
#   usage: tests/vectors/build.sh OUTDIR
#
# Creates OUTDIR/plain, OUTDIR/symlinked, OUTDIR/generators, OUTDIR/helm and
# OUTDIR/helm-repo-slash, each a git repository with one commit. Checksums depend only on the tree,
# but author, committer and dates are fixed too, so the commits are stable.
set -euo pipefail

if [ "$#" -ne 1 ]; then
  echo "usage: $0 OUTDIR" >&2
  exit 2
fi
out=$1
mkdir -p "$out"
out=$(cd "$out" && pwd)

export GIT_CONFIG_NOSYSTEM=1
export GIT_CONFIG_GLOBAL=/dev/null
export GIT_AUTHOR_NAME="Vector Author" GIT_AUTHOR_EMAIL="vectors@example.com"
export GIT_COMMITTER_NAME="Vector Author" GIT_COMMITTER_EMAIL="vectors@example.com"
export GIT_AUTHOR_DATE="1700000000 +0000" GIT_COMMITTER_DATE="1700000000 +0000"
export LC_ALL=C
unset GIT_DIR GIT_WORK_TREE GIT_INDEX_FILE 2>/dev/null || true
umask 022

new_repo() {
  rm -rf "${out:?}/$1"
  mkdir -p "$out/$1"
  cd "$out/$1"
  git init -q -b main .
}

commit() {
  git add -A
  git -c commit.gpgsign=false -c core.autocrlf=false commit -q -m "$1"
}

# put PATH CONTENT: write a file (creating parent directories).
put() {
  mkdir -p "$(dirname "$1")"
  printf '%s' "$2" > "$1"
}

# --- 1. plain: a base and an overlay --------------------------------------
new_repo plain
put base/kustomization.yaml 'resources:
- deployment.yaml
- service.yaml
'
put base/deployment.yaml 'apiVersion: apps/v1
kind: Deployment
metadata:
  name: hello
spec:
  replicas: 1
  selector:
    matchLabels:
      app: hello
  template:
    metadata:
      labels:
        app: hello
    spec:
      containers:
      - name: hello
        image: nginx:1.27
'
put base/service.yaml 'apiVersion: v1
kind: Service
metadata:
  name: hello
spec:
  selector:
    app: hello
  ports:
  - port: 80
'
put overlay/kustomization.yaml 'resources:
- ../base
namePrefix: prod-
patches:
- path: replicas.yaml
'
put overlay/replicas.yaml 'apiVersion: apps/v1
kind: Deployment
metadata:
  name: hello
spec:
  replicas: 3
'
put README.md 'Not part of any overlay.
'
commit "plain base and overlay"

# --- 2. symlinked: the base is reached through a symlink outside the overlay --
new_repo symlinked
put bases/app/kustomization.yaml 'resources:
- deployment.yaml
configMapGenerator:
- name: app-env
  envs:
  - app.env
'
put bases/app/deployment.yaml 'apiVersion: apps/v1
kind: Deployment
metadata:
  name: app
spec:
  replicas: 2
  selector:
    matchLabels:
      app: app
  template:
    metadata:
      labels:
        app: app
    spec:
      containers:
      - name: app
        image: ghcr.io/example/app:1.0.0
'
put shared/app.env 'LOG_LEVEL=info
'
ln -s ../../shared/app.env bases/app/app.env
put overlays/prod/east/kustomization.yaml 'namespace: prod
resources:
- base
'
ln -s ../../../bases/app overlays/prod/east/base
put bases/app/README.md 'Unreferenced.
'
commit "symlinked base"

# --- 3. generators, a remote resource and an inline patch -----------------
new_repo generators
put app/kustomization.yaml 'resources:
- https://github.com/example/platform//deploy/base?ref=v1.2.3
- cm.yaml
configMapGenerator:
- name: settings
  files:
  - app.properties
  - motd=files/motd.txt
  envs:
  - settings.env
  literals:
  - MODE=prod
secretGenerator:
- name: creds
  envs:
  - creds.env
patches:
- target:
    kind: ConfigMap
    name: extra
  patch: |-
    - op: add
      path: /data/patched
      value: "yes"
'
put app/cm.yaml 'apiVersion: v1
kind: ConfigMap
metadata:
  name: extra
data:
  a: "1"
'
put app/app.properties 'threads=4
'
put app/files/motd.txt 'Welcome.
'
put app/settings.env 'TIMEOUT=30s
'
put app/creds.env 'USER=svc
'
commit "generators, remote resource, inline patch"

# --- 4. helm: a local chart under charts/<name> and a chart pull ----------
new_repo helm
put deploy/kustomization.yaml 'helmCharts:
- name: hello
  releaseName: hello
  valuesFile: values-prod.yaml
- name: redis
  repo: https://charts.example.com/stable
  version: 18.0.0
  releaseName: cache
'
put deploy/values-prod.yaml 'replicaCount: 3
'
put deploy/charts/hello/Chart.yaml 'apiVersion: v2
name: hello
version: 0.1.0
'
put deploy/charts/hello/values.yaml 'replicaCount: 1
image: nginx:1.27
'
put deploy/charts/hello/.helmignore '*.md
'
put deploy/charts/hello/README.md 'A tiny chart.
'
put deploy/charts/hello/templates/deployment.yaml 'apiVersion: apps/v1
kind: Deployment
metadata:
  name: {{ .Release.Name }}
spec:
  replicas: {{ .Values.replicaCount }}
'
commit "local helm chart and a chart pull"

# --- 5. helm-repo-slash: a chart repo written with a trailing slash -------
# The remote entry drops it: remote:https://charts.example.com/stable/redis@18.0.0
new_repo helm-repo-slash
put deploy/kustomization.yaml 'helmCharts:
- name: redis
  repo: https://charts.example.com/stable/
  version: 18.0.0
  releaseName: cache
'
commit "a chart repo with a trailing slash"
