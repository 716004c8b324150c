#!/usr/bin/env bash
# Render `dvc plots show` in headless Chromium with the network cut off and screenshot it.
#
# Usage: scripts/render_offline_plots.sh [SCREENSHOT]   (default docs/dvc-plots-offline.png)
#        PLOTS_PROJECT=DIR renders another DVC project's plots (the tests use this).
#
# Every request Chromium would make outside the page goes to a proxy on a closed port, so
# the plots appear only if the HTML carries vega itself (dvc_plots/offline_template.html).
# The rendered DOM is checked for the chart's SVG/canvas, not just for a screenshot.
set -euo pipefail
repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
screenshot="${1:-$repo_root/docs/dvc-plots-offline.png}"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
cd "${PLOTS_PROJECT:-$repo_root}"
dvc plots show -q -o "$work/plots" >/dev/null
page="$work/plots/index.html"
chromium_flags=(--headless --no-sandbox --disable-gpu --disable-quic --no-first-run
  --disable-background-networking --disable-component-update --disable-sync
  --user-data-dir="$work/profile" --proxy-server=127.0.0.1:9 --proxy-bypass-list="<-loopback>"
  --virtual-time-budget=10000 --window-size=1400,900)
chromium "${chromium_flags[@]}" --dump-dom "file://$page" > "$work/dom.html" 2>/dev/null
if ! grep -q -E "<svg|<canvas" "$work/dom.html"; then
  echo "no chart rendered in $page (offline)" >&2
  exit 1
fi
chromium "${chromium_flags[@]}" --screenshot="$screenshot" "file://$page" 2>/dev/null
echo "rendered offline: $screenshot"
