#!/usr/bin/env bash
# Set up espnet_rwkv on a fresh machine, idempotently:
#   1. Debian packages the tests and recipes use (sox, sctk, espeak-ng, flite, fortunes), when apt is there;
#   2. a Python 3.12 virtual environment in .venv;
#   3. torch/torchaudio 2.11, then the plugin itself (editable, with its test and recipe extras; ESPnet 202611 pulled in).
# Needs the package registries (PyPI, Debian); nothing else.
set -euo pipefail
cd "$(dirname "$0")"

debian_packages=(sox sctk espeak-ng flite fortunes)
if command -v apt-get >/dev/null; then
    missing=()
    for pkg in "${debian_packages[@]}"; do
        dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
    done
    if ((${#missing[@]})); then
        sudo=""; [ "$(id -u)" = 0 ] || sudo="sudo"
        echo "setup: installing Debian packages: ${missing[*]}"
        $sudo apt-get update -qq
        DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
    fi
else
    echo "setup: no apt-get here; install ${debian_packages[*]} yourself (tests that need them are skipped)" >&2
fi

find_python312() {
    local candidate
    for candidate in "${PYTHON:-}" python3.12 "$(command -v pyenv >/dev/null && pyenv root)"/versions/3.12*/bin/python3.12; do
        [ -n "$candidate" ] && command -v "$candidate" >/dev/null 2>&1 || continue
        # stderr hidden: a pyenv shim for a version not selected here only says so.
        if "$candidate" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 12))' 2>/dev/null; then
            echo "$candidate"; return 0
        fi
    done
    return 1
}

if [ ! -x .venv/bin/python ]; then
    python=$(find_python312) || { echo "setup: no Python 3.12 found (set PYTHON=/path/to/python3.12)" >&2; exit 1; }
    echo "setup: creating .venv with $python"
    "$python" -m venv .venv
fi
# pip's own output goes to a log, shown when it fails: the build backends' notices read as errors.
pip_log=.venv/pip.log
: > "${pip_log}"
pip() {
    .venv/bin/python -m pip install --disable-pip-version-check "$@" >>"${pip_log}" 2>&1 || {
        tail -n 40 "${pip_log}" >&2
        echo "setup: pip install $* failed (whole log: ${pip_log})" >&2
        exit 1
    }
}
echo "setup: installing torch 2.11, torchaudio 2.11, then espnet_rwkv with ESPnet 202611 (log: ${pip_log})"
# setuptools below 82: torch 2.11 and espnet 202611 require it.
pip --upgrade pip wheel "setuptools>=77.0.3,<82"
# torch first: the plugin's setup.py imports it (CUDA extension build), so it builds without isolation.
pip "torch==2.11.0" "torchaudio==2.11.0" numpy
pip --no-build-isolation -e ".[test,recipe]"
echo "setup: done ($(.venv/bin/python -c 'import espnet_rwkv, torch; print("espnet_rwkv", espnet_rwkv.__version__, "torch", torch.__version__)' 2>/dev/null | tail -1))"
