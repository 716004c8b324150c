#!/usr/bin/env bash
# Headless Chromium screenshot of a page served on this machine (the Prefect or MLflow UI).
#   scripts/screenshot_ui.sh URL OUT.png [WIDTH,HEIGHT]
# Debian's chromium (apt-get install chromium). The flags keep it off the network: this
# machine has none, and Chromium's background connections would otherwise be refused at
# every start. The UIs are single-page apps: --virtual-time-budget lets their API calls
# finish before the picture is taken.
set -euo pipefail
url=$1 out=$2 size=${3:-1440,900}
browser=$(command -v chromium || command -v chromium-browser || true)
[ -n "$browser" ] || { echo "chromium not found (apt-get install chromium)" >&2; exit 3; }
profile=$(mktemp -d)
trap 'rm -rf "$profile"' EXIT
"$browser" --headless --no-sandbox --disable-gpu --disable-quic --no-first-run \
  --disable-background-networking --disable-component-update --disable-sync \
  --hide-scrollbars --user-data-dir="$profile" --window-size="$size" \
  --run-all-compositor-stages-before-draw --virtual-time-budget=60000 \
  --screenshot="$out" "$url" >/dev/null 2>&1
test -s "$out"
