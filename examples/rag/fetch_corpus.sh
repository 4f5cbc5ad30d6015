#!/usr/bin/env bash
# Fetch the whole Python 3.11 documentation sources from Debian's python3.11-doc package (for --corpus full).
# Usage: fetch_corpus.sh DIR   -> DIR/python3.11-doc/ holds the 497 *.rst.txt files, DIR/VERSION the package version.
set -euo pipefail
dir=${1:?usage: fetch_corpus.sh DIR}
mkdir -p "$dir"
cd "$dir"
if [ -f VERSION ] && [ -d python3.11-doc ]; then cat VERSION; exit 0; fi
if ! ls python3.11-doc_*_all.deb >/dev/null 2>&1; then
  { apt-get download python3.11-doc 2>/dev/null || { apt-get update -qq && apt-get download python3.11-doc; }; } >&2
fi
deb=$(ls python3.11-doc_*_all.deb | head -1)
rm -rf unpacked && dpkg-deb -x "$deb" unpacked
rm -rf python3.11-doc && mv unpacked/usr/share/doc/python3.11/html/_sources python3.11-doc && rm -rf unpacked
dpkg-deb -f "$deb" Version > VERSION
echo "python3.11-doc $(cat VERSION): $(find python3.11-doc -name '*.rst.txt' | wc -l) files" >&2
cat VERSION
