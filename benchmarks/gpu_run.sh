#!/usr/bin/env bash
# The benchmarks at SD-1.5 full width on a CUDA GPU (issue: benchmarks item 5). Run from the repo root on a
# machine whose python3 has torch (CUDA), transformers, accelerate, peft; diffusers may come as wheels in .whl/.
# Results go to $OUT (or ./gpu_results) as markdown; docs/benchmarks.md is updated from them by hand.
set -uo pipefail
OUT=${OUT:-gpu_results}
mkdir -p "$OUT"
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site
fi
export PYTHONPATH=${PYTHONPATH:+$PYTHONPATH:}$PWD/src PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total --format=csv | tee "$OUT/gpu.txt"
python3 -c "import torch, diffusers, transformers; print('torch', torch.__version__, 'diffusers', diffusers.__version__, 'transformers', transformers.__version__)" | tee -a "$OUT/gpu.txt"
timeout 200 python3 benchmarks/generator_step.py --backends sd --width 1.0 --size 512 --batch-size 4 \
  --device cuda --dtype bf16 --repeats 10 --no-doc 2>&1 | tee "$OUT/generator_step.md"
timeout 200 python3 benchmarks/synthesis_speed.py --random-sd 1.0 --size 512 --num 8 --batch-size 8 --repeats 5 \
  --device cuda --dtype fp16 --no-doc 2>&1 | tee "$OUT/synthesis.md"
timeout 120 python3 benchmarks/segmenter_step.py --preset b0 --size 512 --generator sd --width 1.0 --batch-size 4 \
  --device cuda --repeats 10 --no-doc 2>&1 | tee "$OUT/segmenter_step.md"
