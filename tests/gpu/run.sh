#!/usr/bin/env bash
# The GPU check on a lent GPU machine (from the repo root, with .gpu/ carried):
#   bash tests/gpu/run.sh            -> JSON line on stdout and $OUT/gpu_check.json
# Installs the carried wheels (.gpu/whl) into /tmp/site where the machine lacks them.
set -uo pipefail
if ! python3 -c 'import trl, datasets, pydantic, psycopg' 2>/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .gpu/whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 \
  TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false \
  TRL_EXPERIMENTAL_SILENCE=1 WANDB_DISABLED=true
nvidia-smi -L || echo "nvidia-smi: not available"
timeout -k 10 "${GPU_CHECK_TIMEOUT_S:-480}" python3 -m tests.gpu.check "$@"
