#!/usr/bin/env bash
# Print the first Python >= 3.12 found: plain names on PATH first, then pyenv's and the
# system's versioned installs (pyenv shims of versions not selected fail the check and are skipped).
ok() { "$1" -c 'import sys; sys.exit(sys.version_info < (3, 12))' >/dev/null 2>&1; }
for p in python3.12 python3.13 python3.14 python3 python \
         "$HOME"/.pyenv/versions/3.1[2-9]*/bin/python3 /usr/local/bin/python3.1[2-9] /usr/bin/python3.1[2-9]; do
  if command -v "$p" >/dev/null 2>&1 && ok "$p"; then command -v "$p"; exit 0; fi
done
echo "no Python >= 3.12 found; run make PYTHON=/path/to/python3.12" >&2
exit 1
