#!/usr/bin/env bash
# Creates .venv-clients, the Python environment of the client tests (the official `openai` package talking
# to `serve`), when it is missing or its requirements (tests/clients/requirements.txt) changed. Users never need it; `.ci/run` calls this.
set -euo pipefail
cd "$(dirname "$0")/.."
venv=.venv-clients
[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
if ! cmp -s tests/clients/requirements.txt "$venv/requirements.installed"; then
  "$venv/bin/pip" install -q --disable-pip-version-check -r tests/clients/requirements.txt
  cp tests/clients/requirements.txt "$venv/requirements.installed"
fi
"$venv/bin/python" -c "import openai; print('openai', openai.__version__)"
