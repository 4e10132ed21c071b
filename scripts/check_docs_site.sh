#!/usr/bin/env bash
# Render three pages of the built documentation site in headless Chromium (file:// URLs, no server,
# no network) and fail on an empty page, an image that did not decode, or math MathJax did not render.
#   scripts/check_docs_site.sh [HTML_DIR] [SCREENSHOT_DIR]
# HTML_DIR defaults to docs/_build/html; with SCREENSHOT_DIR each page is also saved as a PNG there.
# Needs `chromium` (Debian: apt-get install --no-install-recommends chromium) or chromium-browser /
# google-chrome on PATH. Exits 0 when every page passes, 1 when one does not, 2 when no browser.
set -euo pipefail
site=$(realpath "${1:-docs/_build/html}")
shots=${2:-}
. "$(dirname "$0")/chromium.sh"  # sets $browser, or exits 2
tmp=$(mktemp -d)
cleanup() { rm -rf "$tmp"; rm -f "$site"/*.__probe__.html "$site"/api/generated/*.__probe__.html; }
trap cleanup EXIT
# page : what it must have besides text (the page name relative to the site, minimum math, minimum images)
pages=("concepts.html 10 0" "quickstart.html 1 1" "api/generated/samedge.measure.html 0 0")
# Once the page has loaded and MathJax has typeset it, write what the browser sees into the DOM:
# the text length of the article, images and how many decoded, math elements and how many hold
# MathJax's output (mjx-container) without an error (mjx-merror).
probe='<script>window.addEventListener("load",()=>{
const done=()=>{const i=[...document.images];const ok=i.filter(x=>x.complete&&x.naturalWidth>0).length;
const m=[...document.querySelectorAll(".math")];
const typeset=m.filter(x=>x.querySelector("mjx-container")&&!x.querySelector("mjx-merror")).length;
const main=document.querySelector("article")||document.body;
const p=document.createElement("pre");p.id="probe";
p.textContent=`PROBE text=${main.innerText.trim().length} images=${i.length} decoded=${ok} math=${m.length} typeset=${typeset}`;
document.body.appendChild(p);};
if(window.MathJax&&MathJax.startup&&MathJax.startup.promise){MathJax.startup.promise.then(done,done);}else{done();}});</script>'
status=0
for entry in "${pages[@]}"; do
    read -r page min_math min_images <<<"$entry"
    src="$site/$page"
    if [[ ! -f "$src" ]]; then
        echo "check_docs_site: FAIL $page: not built" >&2
        status=1
        continue
    fi
    copy="${src%.html}.__probe__.html"  # beside the page, so its relative links to _static resolve
    { cat "$src"; printf '%s\n' "$probe"; } > "$copy"
    dom=$("$browser" --headless --no-sandbox --disable-gpu --disable-dev-shm-usage --allow-file-access-from-files \
          --user-data-dir="$tmp/profile" --virtual-time-budget=15000 --dump-dom "file://$copy" 2>/dev/null || true)
    line=$(grep -o 'PROBE text=[0-9]* images=[0-9]* decoded=[0-9]* math=[0-9]* typeset=[0-9]*' <<<"$dom" || true)
    if [[ -z "$line" ]]; then
        echo "check_docs_site: FAIL $page: did not finish loading in $browser" >&2
        status=1
        continue
    fi
    read -r text images decoded math typeset < <(sed -E 's/PROBE text=([0-9]+) images=([0-9]+) decoded=([0-9]+) math=([0-9]+) typeset=([0-9]+)/\1 \2 \3 \4 \5/' <<<"$line")
    verdict=OK
    if (( text < 500 )); then verdict="FAIL (empty page: $text characters)"; fi
    if (( decoded != images || images < min_images )); then verdict="FAIL ($decoded of $images images decoded, at least $min_images expected)"; fi
    if (( typeset != math || math < min_math )); then verdict="FAIL ($typeset of $math formulas rendered, at least $min_math expected)"; fi
    echo "check_docs_site: $page: text $text chars, images $decoded/$images, math $typeset/$math: $verdict"
    [[ "$verdict" == OK ]] || status=1
    if [[ -n "$shots" ]]; then
        mkdir -p "$shots"
        "$browser" --headless --no-sandbox --disable-gpu --disable-dev-shm-usage --hide-scrollbars \
            --user-data-dir="$tmp/profile" --virtual-time-budget=15000 --window-size=1280,1800 \
            --screenshot="$(realpath "$shots")/$(basename "${page%.html}").png" "file://$src" >/dev/null 2>&1 || true
    fi
done
exit $status
