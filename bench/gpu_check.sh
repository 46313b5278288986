#!/usr/bin/env bash
# On a GPU machine, in at most ~8 minutes: the CUDA-marked tests, both benches on CUDA, and a
# 1-epoch float + W2A2 run on Fashion-MNIST with the fastest settings. Figures go to $OUT
# (or ./gpu_check) for README. Never part of CI.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-gpu_check}
mkdir -p "$OUT"
python3 -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'; print(torch.cuda.get_device_name())" \
  | tee "$OUT/device.txt" || exit 1
timeout 180 python3 -m pytest -q -m cuda tests 2>&1 | tail -20 | tee "$OUT/cuda_tests.txt"
timeout 120 python3 bench/quantizers.py --device cuda --reps 20 2>&1 | tee "$OUT/quantizers.txt"
timeout 180 python3 bench/train_step.py --device cuda --batch 256 --settings fp32 fp32-compile bf16 bf16-cl-compile \
  --rounds 20 2>&1 | tee "$OUT/train_step.txt"
for m in float lsq; do
  extra=()
  [ "$m" = lsq ] && extra=(--set "init_from=$OUT/run_float" --set qat.w_bits=2 --set qat.a_bits=2 --set optim.lr=0.02)
  timeout 120 python3 -m nuq train --config configs/fmnist_resnet20_float.yaml --set epochs=1 --set device=cuda \
    --set "out_dir=$OUT/run_$m" --set name="$m" --set train.precision=bf16 --set train.channels_last=true \
    --set progress=false "${extra[@]}" 2>&1 | tail -2 | tee -a "$OUT/runs.txt"
done
