#!/usr/bin/env bash
# Set up a fresh machine that has only Python 3.11: .venv with torch==2.13.0 installed first
# (an unpinned torch would pull gigabytes of CUDA packages), then xalign and its test tools,
# at the exact versions of constraints.txt (what the test suite was last run with).
#   EXTRAS=dev,gguf bash scripts/setup.sh    # also the optional Gemma-3-270m GGUF model
#   bash scripts/setup.sh --freeze           # rewrite constraints.txt from .venv (after a green suite)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-}
if [ -z "$PY" ]; then
  for c in python3.11 python3; do command -v "$c" >/dev/null && { PY=$c; break; }; done
fi
export PIP_DISABLE_PIP_VERSION_CHECK=1
if [ "${1:-}" = "--freeze" ]; then
  { sed -n '/^#/p' constraints.txt
    .venv/bin/python -m pip freeze --exclude-editable | grep -v -i '^torch=='; } > constraints.txt.new
  mv constraints.txt.new constraints.txt
  echo "constraints.txt: $(grep -vc '^#' constraints.txt) pins from .venv"
  exit 0
fi
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q torch==2.13.0 2> >(grep -v "^WARNING: Location" >&2)
.venv/bin/python -m pip install -q -c constraints.txt -e ".[${EXTRAS:-dev}]" 2> >(grep -v "^WARNING: Location" >&2)
.venv/bin/python -c "import torch, transformers, peft, bitsandbytes, xalign; print('xalign env ready: torch', torch.__version__, '| transformers', transformers.__version__, '| peft', peft.__version__, '| bitsandbytes', bitsandbytes.__version__)"
