#!/usr/bin/env bash
# Render an HTML file (a run's report.html) in headless Chromium and save a PNG screenshot:
#
#   bash scripts/screenshot.sh runs/minimal/report.html /tmp/report.png [WIDTH,HEIGHT]
#
# WIDTH,HEIGHT is the window (default 1280,2400; the screenshot is that size). Needs Debian's
# chromium (apt-get install -y chromium); $CHROMIUM names another binary. Nothing is fetched:
# the page is opened from disk with the network off (a self-contained report needs none).
set -euo pipefail
if [ $# -lt 2 ]; then echo "usage: $0 FILE.html OUT.png [WIDTH,HEIGHT]" >&2; exit 2; fi
src=$1; out=$2; size=${3:-1280,2400}
[ -f "$src" ] || { echo "error: $src: no such file" >&2; exit 2; }
bin=${CHROMIUM:-$(command -v chromium || command -v chromium-browser || true)}
[ -n "$bin" ] || { echo "error: chromium not found (apt-get install -y chromium, or set CHROMIUM)" >&2; exit 2; }
abs_src=$(cd "$(dirname "$src")" && pwd)/$(basename "$src")
mkdir -p "$(dirname "$out")"
abs_out=$(cd "$(dirname "$out")" && pwd)/$(basename "$out")
rm -f "$abs_out"
profile=$(mktemp -d)   # a fresh profile: no state shared with another chromium
trap 'rm -rf "$profile"' EXIT
"$bin" --headless --no-sandbox --disable-gpu --hide-scrollbars --no-first-run --mute-audio \
  --user-data-dir="$profile" --proxy-server="127.0.0.1:9" --proxy-bypass-list="<-loopback>" \
  --run-all-compositor-stages-before-draw --virtual-time-budget=5000 \
  --window-size="$size" --screenshot="$abs_out" "file://$abs_src" >/dev/null 2>&1 || true
[ -s "$abs_out" ] || { echo "error: chromium wrote no screenshot to $out" >&2; exit 1; }
echo "$out"
