#!/usr/bin/env bash
# Tools the deploy checks need (tests/unit/test_deploy_k8s.py): kustomize (renders deploy/k8s) and
# kube-score (static analysis of the rendered manifests), built from their Go modules through the Go
# module proxy into .cache/deploy-tools/bin. Idempotent and quiet; skipped when both are there.
# kubernetes-validate and hadolint come as wheels with the test extra (pyproject.toml).
set -euo pipefail
cd "$(dirname "$0")/.."
BIN="$PWD/.cache/deploy-tools/bin"
KUSTOMIZE_VERSION=v5.5.0
KUBE_SCORE_VERSION=v1.20.0
[ -x "$BIN/kustomize" ] && [ -x "$BIN/kube-score" ] && exit 0
GO=$(command -v go || true)
[ -n "$GO" ] || { [ -x /usr/local/go/bin/go ] && GO=/usr/local/go/bin/go; }
if [ -z "$GO" ]; then
  echo "install_deploy_tools: no Go toolchain (needs go >= 1.23); the k8s checks will fail" >&2
  exit 1
fi
mkdir -p "$BIN"
echo "building kustomize $KUSTOMIZE_VERSION and kube-score $KUBE_SCORE_VERSION (Go modules)"
GOBIN="$BIN" GOFLAGS=-mod=mod "$GO" install "sigs.k8s.io/kustomize/kustomize/v5@$KUSTOMIZE_VERSION"
GOBIN="$BIN" GOFLAGS=-mod=mod "$GO" install "github.com/zegl/kube-score/cmd/kube-score@$KUBE_SCORE_VERSION"
