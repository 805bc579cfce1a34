#!/usr/bin/env bash
# Renders a Tessera HTML report in headless Chromium and checks that it drew
# without JavaScript errors.
#
#   scripts/check-report.sh FILE.html
#
# Prints one line
#
#   tasks_drawn=N tasks_run=M console_errors=K
#
# read back from the attributes the page sets on <body> once it has rendered
# (data-rendered, data-tasks-drawn, data-tasks-run, data-errors), K also
# counting console errors Chromium itself logged. Exits 0 only when the page
# says it rendered and K == 0; 1 otherwise (printing the error lines); 2 on
# usage errors or when chromium is missing.
#
# Environment: CHROMIUM (default: chromium on PATH), CHECK_REPORT_TIMEOUT
# (seconds, default 60).
set -euo pipefail

if [[ $# -ne 1 ]]; then
    echo "usage: $0 FILE.html" >&2
    exit 2
fi
if [[ ! -f $1 ]]; then
    echo "$0: no such file: $1" >&2
    exit 2
fi
file=$(cd "$(dirname -- "$1")" && pwd)/$(basename -- "$1")
# file:// URL: escape the characters that would otherwise change its meaning.
url=${file//%/%25}
url=${url// /%20}
url=${url//#/%23}
url=${url//\?/%3F}

chromium=${CHROMIUM:-$(command -v chromium || command -v chromium-browser || true)}
if [[ -z $chromium || ! -x $chromium ]]; then
    echo "$0: chromium not found (install Debian's chromium package, or set CHROMIUM=/path/to/chromium)" >&2
    exit 2
fi

work=$(mktemp -d)
trap 'rm -rf -- "$work"' EXIT

# --no-sandbox: Chromium refuses to run as root with its sandbox (and
# containers often lack the namespaces it needs); the page is a local file.
# A throwaway profile keeps concurrent runs from fighting over one.
rc=0
timeout "${CHECK_REPORT_TIMEOUT:-60}" "$chromium" \
    --headless --disable-gpu --no-sandbox --no-first-run --no-default-browser-check \
    --user-data-dir="$work/profile" --enable-logging=stderr --v=0 \
    --dump-dom "file://$url" >"$work/dom.html" 2>"$work/stderr.log" || rc=$?
if [[ $rc -ne 0 ]]; then
    echo "$0: chromium failed (exit $rc)" >&2
    tail -n 20 "$work/stderr.log" >&2 || true
    exit 1
fi

# The opening <body ...> tag (the first one after </head>, so that text in
# head scripts cannot match) holds only the attributes the page sets.
body=$(sed -n '/<\/head>/,$p' "$work/dom.html" | grep -o -m1 -E '<body( [a-z-]+="[^"]*")*>' || true)
attr() {
    local v
    v=$(grep -o "$1=\"[0-9]*\"" <<<"$body" | head -n1 | tr -dc '0-9' || true)
    echo "${v:-}"
}
rendered=$(attr data-rendered)
drawn=$(attr data-tasks-drawn)
run=$(attr data-tasks-run)
page_errors=$(attr data-errors)

# Console errors Chromium logged, e.g.
#   [..:INFO:CONSOLE:550] "Uncaught TypeError: ...", source: file:///... (550)
# (console.error calls are logged at INFO too: the page counts those itself).
grep -E 'CONSOLE' "$work/stderr.log" | grep -E 'ERROR|Uncaught' >"$work/console.log" || true
log_errors=$(wc -l <"$work/console.log" | tr -d ' ')

errors=$(( ${page_errors:-0} + log_errors ))
echo "tasks_drawn=${drawn:-?} tasks_run=${run:-?} console_errors=$errors"

ok=1
if [[ $errors -ne 0 ]]; then
    ok=0
    echo "console errors: page counted ${page_errors:-0}, chromium logged $log_errors" >&2
    cat "$work/console.log" >&2
    # The page also shows its own error list in <div id="errors">.
    grep -o '<div id="errors"[^>]*>[^<]*' "$work/dom.html" | sed 's/<[^>]*>//' | grep -v '^$' >&2 || true
fi
if [[ $rendered != 1 ]]; then
    ok=0
    echo "the page did not report rendering (data-rendered=${rendered:-missing})" >&2
fi
[[ $ok -eq 1 ]]
