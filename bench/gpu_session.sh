#!/usr/bin/env bash
# Every check that needs a GPU, as one command: the speed benchmark (bench/gpu_anonymize.py, about 5 minutes on
# an H100) and the tests marked `gpu` (CUDA vs CPU parity of dlib's ResNet, MTCNN and the attribute predictors;
# batch_size: auto measured on the device). Run from the repository root on any CUDA machine whose python3 has
# torch; where the project's dependencies are not installed (a bare GPU image), first run `make gpu-carry` on a
# machine with the venv and bring the `.gpu/` folder it makes (wheels + two dlib model files, 38 MB).
#
#   OUT=results bash bench/gpu_session.sh        # writes gpu.txt, session.log (every step's output) and
#                                                # gpu_anonymize, gpu_pipeline, resize_forms, gpu_compile_warm
#                                                # and gpu_loop_fixed_segments .json: 7 files (the device tool
#                                                # brings back at most 8)
#   BENCH_ARGS="--profile tiny" PIPELINE_ARGS="--profile tiny" bash ...   # a dry run of the same script on a CPU
set -u -o pipefail
OUT=${OUT:-bench/gpu_session}
mkdir -p "$OUT"
export PYTHONPATH=".${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
if [ -d .gpu/wheels ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/falco-site \
    .gpu/wheels/*.whl || exit 1
  cp -r .gpu/site/. /tmp/falco-site/
  export PYTHONPATH="$PYTHONPATH:/tmp/falco-site"
fi
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>/dev/null || echo "no nvidia-smi"
  python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())"; } | tee "$OUT/gpu.txt"
# Every step runs under its own cap and under what is left of DEADLINE seconds (default 540: the whole script fits
# one 10-minute device command); a step with less than 20 s left is skipped and says so. Most important first.
START=$SECONDS
DEADLINE=${DEADLINE:-540}
LOG="$OUT/session.log"
step() {  # step CAP NAME COMMAND...
  local cap=$1 name=$2 left
  shift 2
  left=$(( DEADLINE - (SECONDS - START) ))
  echo "=== $name ($(( SECONDS - START )) s in)" | tee -a "$LOG"
  if (( left < 20 )); then
    echo "skipped: ${DEADLINE} s of the session spent ($*)" | tee -a "$LOG"
    return 124
  fi
  timeout $(( left < cap ? left : cap )) "$@" 2>&1 | tee -a "$LOG"
}
# shellcheck disable=SC2086  # BENCH_ARGS and PIPELINE_ARGS hold several arguments
# dynamo's graph breaks and recompilations are logged (an H200 run compiled without end over one in torch 2.11)
TORCH_LOGS=${TORCH_LOGS:-graph_breaks,recompiles} step 320 "speed: every configuration" \
  python3 bench/gpu_anonymize.py --budget-s 300 --out "$OUT/gpu_anonymize.json" ${BENCH_ARGS:-}
bench=$?
# The whole pipeline's stages and CelebA-HQ projected (bench/gpu_pipeline.py)
# shellcheck disable=SC2086
step 100 "pipeline stages" python3 bench/gpu_pipeline.py --images 128 --pool-sample 512 \
  --out "$OUT/gpu_pipeline.json" ${PIPELINE_ARGS:-}
pipeline=$?
step 60 "gpu tests" python3 -m pytest -q -rs -m gpu -p no:cacheprovider tests/test_batch_size.py \
  tests/test_dlib_resnet.py tests/test_mtcnn.py tests/test_attributes.py tests/test_attribute_predictors.py \
  tests/test_stylegan2.py tests/test_polyphase_upconv.py tests/test_resample.py
tests=$?
# The loop under the allocator's fixed segments (the suspect for its 0.040 vs 0.057 s/step)
# shellcheck disable=SC2086
PYTORCH_CUDA_ALLOC_CONF=expandable_segments:False step 30 "loop, fixed segments" \
  python3 bench/gpu_anonymize.py --only a a_batch4 --batch-size 1 --out "$OUT/gpu_loop_fixed_segments.json" \
  ${BENCH_ARGS:-}
loop=$?
# The networks' input resize alone, reference kernels vs matrix products (seconds)
step 30 "resize forms" python3 bench/resize_forms.py --out "$OUT/resize_forms.json"
resize=$?
# What compiling costs in a fresh process once inductor's on-disk caches hold the first run's kernels: what a
# pipeline's next shard on the same machine pays
batch=$(python3 -c "import json, sys; print(json.load(open(sys.argv[1]))['batch_size'])" "$OUT/gpu_anonymize.json" \
  2>/dev/null || echo auto)
# shellcheck disable=SC2086
step 120 "compile, warm caches" python3 bench/gpu_anonymize.py --only c_channels_last c_compiled_blocks \
  c_compiled --batch-size "$batch" --budget-s 100 --out "$OUT/gpu_compile_warm.json" ${BENCH_ARGS:-}
warm=$?
echo "bench exit $bench, gpu tests exit $tests, resize exit $resize, loop exit $loop, pipeline exit $pipeline," \
  "warm compile exit $warm ($(( SECONDS - START )) s)"
exit $(( bench || tests || resize || loop || pipeline || warm ))
