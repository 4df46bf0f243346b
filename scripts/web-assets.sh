#!/usr/bin/env bash
# Copy the pinned nhsuk-frontend build (package.json / package-lock.json) into app/web/static, where
# the pages serve it from: run after changing the version (`npm ci` first). The copy is committed,
# so `make run` needs no npm; tests/web/test_assets.py checks it matches node_modules when present.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -d node_modules/nhsuk-frontend ] || npm ci --no-audit --no-fund
SRC=node_modules/nhsuk-frontend/dist/nhsuk
DEST=app/web/static/nhsuk
rm -rf "$DEST" && mkdir -p "$DEST/images"
cp "$SRC/nhsuk-frontend.min.js" "$DEST/"
# the stylesheet names its icons under /assets/images/: served here under /static/nhsuk/images/
sed 's#url(/assets/images/#url(/static/nhsuk/images/#g' "$SRC/nhsuk-frontend.min.css" > "$DEST/nhsuk-frontend.min.css"
cp "$SRC"/assets/images/*.svg "$SRC/assets/images/favicon.ico" "$DEST/images/"
VERSION=$(node -p 'require("./node_modules/nhsuk-frontend/package.json").version')
{
  echo "nhsuk-frontend $VERSION (npm), copied by scripts/web-assets.sh."
  echo
  echo "The MIT License (MIT)"
  echo
  echo "Copyright (c) NHS England (nhsuk-frontend contributors)"
  echo
  cat <<'MIT'
Permission is hereby granted, free of charge, to any person obtaining a copy of this software and
associated documentation files (the "Software"), to deal in the Software without restriction,
including without limitation the rights to use, copy, modify, merge, publish, distribute,
sublicense, and/or sell copies of the Software, and to permit persons to whom the Software is
furnished to do so, subject to the following conditions:

The above copyright notice and this permission notice shall be included in all copies or
substantial portions of the Software.

THE SOFTWARE IS PROVIDED "AS IS", WITHOUT WARRANTY OF ANY KIND, EXPRESS OR IMPLIED, INCLUDING BUT
NOT LIMITED TO THE WARRANTIES OF MERCHANTABILITY, FITNESS FOR A PARTICULAR PURPOSE AND
NONINFRINGEMENT. IN NO EVENT SHALL THE AUTHORS OR COPYRIGHT HOLDERS BE LIABLE FOR ANY CLAIM,
DAMAGES OR OTHER LIABILITY, WHETHER IN AN ACTION OF CONTRACT, TORT OR OTHERWISE, ARISING FROM, OUT
OF OR IN CONNECTION WITH THE SOFTWARE OR THE USE OR OTHER DEALINGS IN THE SOFTWARE.
MIT
  echo
  echo "The documentation and brand assets are (c) NHS England under the Open Government Licence v3.0."
} > "$DEST/LICENSE.txt"
echo "web-assets: nhsuk-frontend $VERSION copied to $DEST"
