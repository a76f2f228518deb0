#!/usr/bin/env bash
# Refresh the chart library that the dashboard ships inside the Python package.
#
#   scripts/vendor_js.sh            # the pinned version below
#   scripts/vendor_js.sh 5.2.1      # another version (then update README.txt's note)
#
# The page must work with no internet and no npm at run time, so the built
# file is committed under cryptostream/web_static/vendor/ with its licence.
# Needs npm (only to run this script, never to run or test the service).
set -euo pipefail
cd "$(dirname "$0")/.."

version="${1:-5.2.1}"
dest=cryptostream/web_static/vendor
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

(cd "$tmp" && npm pack --silent "lightweight-charts@${version}" >/dev/null && tar xzf lightweight-charts-*.tgz)
cp "$tmp/package/dist/lightweight-charts.standalone.production.js" "$dest/"
cp "$tmp/package/LICENSE" "$dest/lightweight-charts.LICENSE.txt"
# The library's NOTICE (its licence asks for this attribution on the page too).
printf 'TradingView Lightweight Charts\xe2\x84\xa2\nCopyright (c) TradingView, Inc. https://www.tradingview.com/\n' \
  >"$dest/NOTICE.txt"
sha=$(sha256sum "$dest/lightweight-charts.standalone.production.js" | cut -d' ' -f1)
cat >"$dest/README.txt" <<TXT
lightweight-charts ${version} (npm package "lightweight-charts", TradingView, Apache-2.0)
file: lightweight-charts.standalone.production.js (from the package's dist/, unchanged)
sha256: ${sha}
refresh: scripts/vendor_js.sh [version]
TXT
echo "vendored lightweight-charts ${version} (sha256 ${sha})"
