#!/usr/bin/env bash
# One-command set-up: find (or build) a Python >= 3.12, make .venv, install the project
# editable with its test extras (DOLFINx 0.11 wheel, PyVista, POT, numba, pytest).
#
#   bash scripts/setup.sh            # ~1 min with an existing Python >= 3.12, ~4 min if it builds one
#
# Environment: PYTHON=/path/to/python3.12 forces an interpreter; PREFIX sets where a built
# CPython goes (default: .python/ in the repository).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

ok() { "$1" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 12) else 1)' 2>/dev/null; }

find_python() {
    if [ -n "${PYTHON:-}" ]; then ok "$PYTHON" && { echo "$PYTHON"; return; }; fi
    local c
    for c in python3.13 python3.12 python3.14 python3; do
        if command -v "$c" >/dev/null 2>&1 && ok "$(command -v "$c")"; then command -v "$c"; return; fi
    done
    for c in "$root"/.python/bin/python3.1[2-9] "${PYENV_ROOT:-$HOME/.pyenv}"/versions/3.1[2-9]*/bin/python3 \
             /usr/local/bin/python3.1[2-9] /opt/*/bin/python3.1[2-9]; do
        if [ -x "$c" ] && ok "$c"; then echo "$c"; return; fi
    done
}

build_python() {
    # Build CPython from Debian trixie's source package, fetched from the mirror this machine's
    # apt already uses (read from its sources; no host is hard-coded here).
    local prefix="${PREFIX:-$root/.python}" tmp mirror
    tmp="$(mktemp -d)"
    mirror="$(grep -h -m1 '^URIs:' /etc/apt/sources.list.d/*.sources 2>/dev/null | awk '{print $2}' | head -n1)"
    if [ -z "$mirror" ]; then
        mirror="$(grep -h -m1 '^deb ' /etc/apt/sources.list 2>/dev/null | awk '{print $2}')"
    fi
    [ -n "$mirror" ] || { echo "setup.sh: no Python >= 3.12 and no apt mirror to build one; set PYTHON=" >&2; exit 1; }
    printf 'Types: deb-src\nURIs: %s\nSuites: trixie\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n' \
        "$mirror" > "$tmp/src.sources"
    local aptopts=(-o Dir::Etc::sourcelist="$tmp/src.sources" -o Dir::Etc::sourceparts=/nonexistent
                   -o Dir::State::Lists="$tmp/lists" -o Dir::Cache="$tmp/cache")
    mkdir -p "$tmp/lists/partial" "$tmp/cache/archives/partial"
    apt-get "${aptopts[@]}" update >&2
    apt-get install -y libssl-dev zlib1g-dev libffi-dev libbz2-dev liblzma-dev libsqlite3-dev \
        libreadline-dev uuid-dev >&2 || true
    (cd "$tmp" && apt-get "${aptopts[@]}" source --download-only python3.13 >&2)
    tar -C "$tmp" -xf "$(ls "$tmp"/python3.13_*.orig.tar.* | head -n1)"
    local src
    src="$(find "$tmp" -maxdepth 1 -type d -name 'Python-3.13*' | head -n1)"
    (cd "$src" && ./configure --prefix="$prefix" --with-ensurepip=install >&2 && make -j"$(nproc)" >&2 \
        && make install >&2)
    rm -rf "$tmp"
    echo "$prefix/bin/python3.13"
}

py="$(find_python || true)"
if [ -z "$py" ]; then
    echo "setup.sh: no Python >= 3.12 found; building CPython 3.13 (about 2-3 minutes)" >&2
    py="$(build_python)"
fi
echo "setup.sh: using $py ($("$py" --version))"
if [ ! -x .venv/bin/python ] || ! ok .venv/bin/python; then
    rm -rf .venv
    "$py" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet -e ".[test]"
.venv/bin/python -c "import solver; print('setup.sh: solver', solver.__version__, 'with DOLFINx', solver.dolfinx_version())"
