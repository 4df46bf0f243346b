#!/usr/bin/env bash
# Run a command with what the browser tests need: Debian's Chromium (installed with apt-get when
# missing; Playwright never downloads a browser here) and axe-core from npm (package-lock.json).
set -euo pipefail
cd "$(dirname "$0")/.."
export PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1
if [ ! -x /usr/bin/chromium ]; then
  echo "with-browser: Chromium not found; installing Debian's chromium package" >&2
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get update -qq
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
fi
if [ ! -f node_modules/axe-core/axe.min.js ]; then
  echo "with-browser: installing axe-core and nhsuk-frontend from package-lock.json (npm ci)" >&2
  npm ci --no-audit --no-fund --silent
fi
export FAMILYVIEW_REQUIRE_BROWSER=1
exec "$@"
