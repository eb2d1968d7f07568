#!/usr/bin/env bash
# Create (if missing) and update the project's virtual environment in .venv.
#
#   PYTHON=python3.11 bash scripts/setup_env.sh      # interpreter used to create .venv
#   WORKBENCH_SYSTEM_SITE_PACKAGES=1 ...             # reuse the system's (e.g. CUDA) torch
#   WORKBENCH_TORCH_SPEC='torch==2.13.0' ...         # what to install when no torch imports
#   WORKBENCH_BROWSER_TESTS=1 ...                    # also make sure Debian chromium is present
#
# torch: if the venv can already import torch, that torch is kept and pinned (constraints file)
# while the project installs. Only when no torch imports is WORKBENCH_TORCH_SPEC installed; the
# default, torch==2.13.0, is the CPU wheel lying on this project's machines. Other specs would
# make pip pull a multi-GB CUDA build from PyPI.
#
# Idempotent: .venv/.setup-stamp holds a hash of pyproject.toml, this script and the list of
# top-level packages present; when it matches, the pip install step is skipped.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT="$(pwd)"
VENV="$ROOT/.venv"
VPY="$VENV/bin/python"
STAMP="$VENV/.setup-stamp"
PYTHON="${PYTHON:-python3}"
TORCH_SPEC="${WORKBENCH_TORCH_SPEC:-torch==2.13.0}"

log() { printf '[setup_env] %s\n' "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

# ---------------------------------------------------------------------------------------------
# Browser tests (WORKBENCH_BROWSER_TESTS=1, which `make test` sets): Debian's chromium, driven
# by Playwright through executable_path (never `playwright install`). Without root or apt-get,
# or when the install fails, the browser tests skip and say why.
ensure_chromium() {
    if command -v chromium >/dev/null 2>&1; then
        log "chromium present: $(chromium --version 2>/dev/null | head -n1 || echo '?')"
        return 0
    fi
    if command -v apt-get >/dev/null 2>&1 && [[ "$(id -u)" -eq 0 ]]; then
        log "installing Debian's chromium for the browser tests (apt-get, about a minute)"
        if ! (export DEBIAN_FRONTEND=noninteractive; apt-get update -qq \
                && apt-get install -y -qq chromium >/dev/null); then
            log "WARNING: apt-get could not install chromium; the browser tests will be skipped"
        fi
    else
        log "WARNING: chromium not found and cannot be installed here (needs root and apt-get);" \
            "the browser tests will be skipped (apt-get install -y chromium to run them)"
    fi
}
# ---------------------------------------------------------------------------------------------

ensure_venv() {
    if [[ ! -x "$VPY" ]]; then
        command -v "$PYTHON" >/dev/null 2>&1 || die "interpreter '$PYTHON' not found (set PYTHON=...)"
        local args=()
        if [[ "${WORKBENCH_SYSTEM_SITE_PACKAGES:-0}" == "1" ]]; then
            args+=(--system-site-packages)
        fi
        log "creating $VENV with $("$PYTHON" --version 2>&1) ${args[*]+"${args[*]}"}"
        "$PYTHON" -m venv ${args[@]+"${args[@]}"} "$VENV"
    fi
    "$VPY" -c 'import sys; sys.exit(sys.version_info < (3, 10))' \
        || die "$VPY is older than Python 3.10; remove .venv and set PYTHON to a newer interpreter"
    if ! "$VPY" -m pip --version >/dev/null 2>&1; then
        log "pip missing in .venv; bootstrapping it with ensurepip"
        "$VPY" -m ensurepip --upgrade >/dev/null
    fi
}

setup_inputs() {
    # What the install depends on: pyproject.toml, this script, and which top-level packages
    # exist (an editable install maps only the packages present when it ran, so creating
    # workbench/ or widgets/ must trigger a reinstall).
    cat pyproject.toml scripts/setup_env.sh
    local pkg
    for pkg in workbench widgets; do
        [[ -f "$pkg/__init__.py" ]] && printf 'package:%s\n' "$pkg"
    done
    return 0
}

setup_hash() {
    if command -v sha256sum >/dev/null 2>&1; then
        setup_inputs | sha256sum | cut -d' ' -f1
    else
        setup_inputs \
            | "$VPY" -c 'import hashlib, sys; print(hashlib.sha256(sys.stdin.buffer.read()).hexdigest())'
    fi
}

torch_dist_version() {
    # Version as pip sees it (distribution metadata), e.g. 2.13.0+cpu; empty if unknown.
    "$VPY" -c 'import importlib.metadata as m; print(m.version("torch"))' 2>/dev/null || true
}

ensure_torch() {
    local tv
    if tv="$("$VPY" -W ignore -c 'import torch; print(torch.__version__)' 2>/dev/null)"; then
        log "keeping installed torch $tv"
    else
        log "no importable torch in .venv; installing $TORCH_SPEC"
        "$VPY" -m pip install --progress-bar off "$TORCH_SPEC"
        tv="$("$VPY" -W ignore -c 'import torch; print(torch.__version__)')" \
            || die "torch still does not import after installing $TORCH_SPEC"
        log "installed torch $tv"
    fi
}

install_project() {
    local tv cons
    tv="$(torch_dist_version)"
    [[ -n "$tv" ]] || die "torch imports but pip cannot see its distribution metadata; installing" \
        "the project would make pip fetch another torch. Install torch with pip into .venv first."
    cons="$(mktemp "${TMPDIR:-/tmp}/workbench-constraints.XXXXXX")"
    # shellcheck disable=SC2064
    trap "rm -f '$cons'" EXIT
    printf 'torch==%s\n' "$tv" >"$cons"
    log "installing interp-workbench (editable) with extras [dev,widgets]; torch pinned to $tv"
    "$VPY" -m pip install -q --progress-bar off -c "$cons" -e ".[dev,widgets]"
    local after
    after="$(torch_dist_version)"
    [[ "$after" == "$tv" ]] || die "torch changed during install ($tv -> $after)"
}

main() {
    ensure_venv
    local want have=""
    want="$(setup_hash)"
    [[ -f "$STAMP" ]] && have="$(cat "$STAMP")"
    # Stamp matches and torch is still there (find_spec: no slow import): nothing to do.
    if [[ "$want" == "$have" ]] \
        && "$VPY" -c 'import importlib.util as u, sys; sys.exit(u.find_spec("torch") is None)' 2>/dev/null
    then
        log ".venv up to date (stamp matches); skipping installs"
    else
        ensure_torch
        install_project
        printf '%s\n' "$want" >"$STAMP"
        log "done: .venv ready"
    fi
    if [[ "${WORKBENCH_BROWSER_TESTS:-0}" == "1" ]]; then
        ensure_chromium
    fi
}

main "$@"
