#!/usr/bin/env bash
# The study grids in the order the most telling cells land first (finished cells are skipped,
# so this continues wherever it stopped): W2A2 seed 0 on both models, the other W2A2 seeds,
# then W3A3 seed 0, APoT's comparison set at W3A3 and the remaining methods and distillation
# at W2A2 on ResNet-20 (resnet20_more.yaml), the other seeds (distillation and APoT's
# comparison set on ResNet-20, the schedule test -- resnet20_long.yaml: W2A2 on all 60k
# images, 3.5x the steps -- MobileNetV2's W3A3 seed 0 and its schedule test
# (mobilenetv2_long.yaml), MobileNetV2's W3A3 seeds 1-2, APoT's comparison set's seeds, then the other
# methods' seeds).
set -euo pipefail
cd "$(dirname "$0")/.."
R=configs/study/resnet20.yaml
M=configs/study/mobilenetv2.yaml
X=configs/study/resnet20_more.yaml
nuq compare --config $R --set bits=[2] --set seeds=[0]
nuq compare --config $M --set bits=[2] --set seeds=[0] --methods lsq nulsq-a
nuq compare --config $R --set bits=[2]
nuq compare --config $M --set bits=[2] --set seeds=[0]
nuq compare --config $R --set bits=[3] --set seeds=[0]
nuq compare --config $X --set bits=[3] --methods uniform pot lloyd
nuq compare --config $X --set bits=[2] --methods lsq-kd nulsq-a-kd n2uq-kd nulsq-w lcq pact dorefa
nuq compare --config $M --set bits=[2]
nuq compare --config $R
nuq compare --config $X --set bits=[2] --set seeds=[0,1,2] --methods lsq-kd nulsq-a-kd n2uq-kd
nuq compare --config configs/study/resnet20_long.yaml --set seeds=[0]
nuq compare --config configs/study/resnet20_long.yaml
nuq compare --config $M --set seeds=[0]
nuq compare --config configs/study/mobilenetv2_long.yaml --set seeds=[0]
nuq compare --config $M
nuq compare --config $X --set bits=[3] --set seeds=[0,1,2] --methods uniform pot lloyd
nuq compare --config $X --set bits=[2] --set seeds=[0,1,2] --methods nulsq-w lcq pact dorefa
