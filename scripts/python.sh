#!/usr/bin/env bash
# The Python package (python/): `scripts/python.sh test` builds it with pip
# and maturin (its PEP 517 backend) into a virtual environment of its own,
# python/.venv, and runs its tests with pytest; `scripts/python.sh install`
# only builds and installs it there.
set -euo pipefail
cd "$(dirname "$0")/.."
venv=python/.venv
if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv"
  "$venv/bin/python" -m pip install -q --upgrade pip
fi
case "${1:-}" in
  install) "$venv/bin/python" -m pip install -q ./python ;;
  test)
    "$venv/bin/python" -m pip install -q "./python[test]"
    "$venv/bin/python" -m pytest -q -rs python/tests
    ;;
  *) echo "usage: scripts/python.sh install | test" >&2; exit 2 ;;
esac
