#!/usr/bin/env bash
# Render a report.html in headless Chromium (no server, file:// URL) and check that the browser
# sees the summary table's rows and that every figure decoded (naturalWidth > 0).
#   scripts/check_report_html.sh REPORT_DIR/report.html [EXPECTED_ROWS]
# Needs `chromium` (Debian: apt-get install --no-install-recommends chromium) or chromium-browser /
# google-chrome on PATH. Exits 0 when the page passes, 1 when it does not, 2 when no browser.
set -euo pipefail
page=$(realpath "$1")
expected_rows=${2:-}
. "$(dirname "$0")/chromium.sh"  # sets $browser, or exits 2
# A copy of the page plus a script that writes what the browser sees into the DOM once every image
# has loaded; --dump-dom prints the DOM after the load event.
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
probe='<script>window.addEventListener("load",()=>{const i=[...document.images];
const ok=i.filter(x=>x.complete&&x.naturalWidth>0).length;
const rows=document.querySelectorAll("#summary tbody tr").length;
const p=document.createElement("pre");p.id="probe";
p.textContent=`PROBE rows=${rows} images=${i.length} decoded=${ok}`;document.body.appendChild(p);});</script>'
# (a script after </html> is parsed into the body by every browser)
{ cat "$page"; printf '%s\n' "$probe"; } > "$tmp/report.html"
dom=$("$browser" --headless --no-sandbox --disable-gpu --disable-dev-shm-usage --allow-file-access-from-files \
      --user-data-dir="$tmp/profile" --virtual-time-budget=5000 --dump-dom "file://$tmp/report.html" 2>/dev/null)
line=$(grep -o 'PROBE rows=[0-9]* images=[0-9]* decoded=[0-9]*' <<<"$dom" || true)
if [[ -z "$line" ]]; then
    echo "check_report_html: the page did not finish loading in $browser" >&2
    exit 1
fi
echo "$line"
read -r rows images decoded < <(sed -E 's/PROBE rows=([0-9]+) images=([0-9]+) decoded=([0-9]+)/\1 \2 \3/' <<<"$line")
if (( images == 0 || decoded != images || rows == 0 )); then
    echo "check_report_html: FAIL (every figure must decode and the table must have rows)" >&2
    exit 1
fi
if [[ -n "$expected_rows" && "$rows" != "$expected_rows" ]]; then
    echo "check_report_html: FAIL ($rows table rows, expected $expected_rows)" >&2
    exit 1
fi
echo "check_report_html: OK ($rows rows, $decoded of $images figures rendered)"
