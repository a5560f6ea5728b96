#!/usr/bin/env bash
# Installs what the chat page's browser test needs when it is missing: Debian's Chromium (/usr/bin/chromium)
# and Node.js from the distribution, and playwright-core (the version pinned in tests/browser's lock file)
# from npm into tests/browser/node_modules. Playwright never downloads a browser of its own here.
set -euo pipefail
tools="$(cd "$(dirname "$0")" && pwd)"
cd "$tools/.."
need=()
[ -x /usr/bin/chromium ] || need+=(chromium)
command -v node >/dev/null || need+=(nodejs)
command -v npm >/dev/null || need+=(npm)
"$tools/apt-install.sh" ${need[@]+"${need[@]}"}
[ -d tests/browser/node_modules/playwright-core ] \
  || npm ci --prefix tests/browser --no-audit --no-fund --loglevel=error
/usr/bin/chromium --version 2>/dev/null | head -1
