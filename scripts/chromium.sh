# Sourced by the page checks (check_report_html.sh, check_docs_site.sh): sets $browser to a Chromium on
# PATH (Debian: apt-get install --no-install-recommends chromium; chromium-browser and google-chrome
# work too), or exits 2, saying so, when there is none.
browser=$(command -v chromium || command -v chromium-browser || command -v google-chrome || true)
if [[ -z "$browser" ]]; then
    echo "$(basename "$0" .sh): no chromium on PATH" >&2
    exit 2
fi
