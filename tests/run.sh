#!/usr/bin/env bash
# Install everything the test suite needs, then run it. Safe to run again.
#  - as root (CI): Debian packages via apt-get, a venv in /opt (outside root's home, so the
#    unprivileged users the tests create can run JupyterLab from it);
#  - as a normal user: a venv in .venv; tests that need root say so and skip.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" = 0 ]; then
    # systemd: booted as PID 1 in a sandbox by tests/systemd; gcc: the fake libnvidia-ml.so.1;
    # nginx and chromium: the reverse-proxy and browser tests run the real programs;
    # iproute2: a test brings up loopback in a network namespace of its own; faketime: a
    # wall-clock jump under jlservice alone (libfaketime, LD_PRELOAD); prometheus: promtool
    # checks and unit-tests the shipped rules, and tests/ops runs the real server.
    packages=(python3-venv systemd gcc libc6-dev nginx chromium iproute2 faketime prometheus tmux)
    missing=()
    for p in "${packages[@]}"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
    done
    if [ ${#missing[@]} -gt 0 ]; then
        # Other runs on the same machine may hold the dpkg lock for a while.
        apt-get -o DPkg::Lock::Timeout=600 update -q
        DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 install -y -q \
            --no-install-recommends "${missing[@]}"
    fi
    venv=${JLSERVICE_TEST_VENV:-/opt/jlservice-test-venv}
else
    venv=${JLSERVICE_TEST_VENV:-.venv}
fi

python=/usr/bin/python3  # the system Python: users made by the tests can run a venv from it
[ -x "$python" ] || python=$(command -v python3)
[ -x "$venv/bin/python" ] || "$python" -m venv "$venv"
"$venv/bin/python" -m pip install -q --upgrade pip
# Not editable: the package must live in the venv, readable by the users the tests create.
"$venv/bin/python" -m pip install -q --force-reinstall --no-deps .
"$venv/bin/python" -m pip install -q ".[test]"

"$venv/bin/ruff" check .
"$venv/bin/ruff" format --check .
# Two workers (pytest-xdist): many tests mostly wait (for a backoff, a timeout, a sampler
# round), which one at a time leaves the 2 cores half idle. Each module runs on one worker
# (tests/helpers/workers.py), in collection order (`early` tests first). A short basetemp:
# unix socket paths under it must stay within 108 bytes. Options given here win.
exec "$venv/bin/python" -m pytest -n 2 --no-loadscope-reorder --basetemp=/tmp/jlst-tests "$@"
