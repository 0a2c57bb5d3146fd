#!/usr/bin/env bash
# The offline default corpus: the King James Bible (public domain, 4.3 MB of English), from
# Debian's bible-kjv-text package, written as plain text, one chapter per paragraph.
#   scripts/get_kjv.sh OUT.txt
set -euo pipefail
out=${1:?usage: scripts/get_kjv.sh OUT.txt}
mkdir -p "$(dirname "$out")" 2>/dev/null && : >> "$out" 2>/dev/null || { echo "error: cannot write $out" >&2; exit 1; }
if ! command -v bible >/dev/null 2>&1; then
    echo "installing Debian's bible-kjv (the text is in bible-kjv-text)" >&2
    if [ "$(id -u)" -eq 0 ]; then SUDO=; else SUDO=sudo; fi
    $SUDO apt-get install -y -qq bible-kjv bible-kjv-text >/dev/null
fi
# "bible" prints "Book N" headings and "  V text" verse lines; keep the text, a blank line between chapters
bible -l0 gen1:1-rev22:21 | awk '
    /^[A-Za-z0-9 ]+ [0-9]+$/ { if (n) printf "\n\n"; n = 0; next }
    /^ +[0-9]+ / { sub(/^ +[0-9]+ /, ""); printf "%s%s", (n ? " " : ""), $0; n = 1 }
    END { printf "\n" }' > "$out"
echo "wrote $out: $(wc -c < "$out") bytes, $(wc -w < "$out") words" >&2
