#!/usr/bin/env bash
# Train tiny-barlow-twins, tiny-simsiam and tiny-dino-vit in ONE run on ONE GPU (about 6 minutes).
#
#   bash benchmarks/gpu_train.sh                      # from the repository root, images in .devdata/imagenet-sample
#   SSL_WIDGETS_SMOKE=1 bash benchmarks/gpu_train.sh  # CPU smoke test of every run with tiny settings
#   SSL_WIDGETS_SMOKE=2 bash benchmarks/gpu_train.sh  # CPU: real model sizes, one short epoch each
#
# Several configurations per family train concurrently (background processes sharing the GPU, each
# with --time-budget and a hard `timeout`); one failing run does not stop the others. Each run keeps
# the weights of its best held-out retrieval evaluation (query seed 1, every 10 epochs). The best
# run per family is copied to $OUT (tiny-barlow-twins.pt, tiny-simsiam.pt, tiny-dino-vit.pt) with
# $OUT/gpu_train_runs.json (every run: command, config, curve, chosen epoch, seconds, log tail,
# and the final test with query seed 0 of the chosen files).
set -u
cd "$(dirname "$0")/.."
export PYTHONPATH=$PWD
PY=${PYTHON:-python3}
SMOKE=${SSL_WIDGETS_SMOKE:-0}
OUT=${OUT:-$PWD/out/gpu_train}
WORK=${WORK:-${TMPDIR:-/tmp}/ssl_widgets_gpu_train}
DATA=${DATA:-.devdata/imagenet-sample}
mkdir -p "$OUT"
rm -rf "$WORK"
mkdir -p "$WORK"
T0=$(date +%s)

if [ "$SMOKE" = "2" ]; then
  # the real model sizes and crops, one short epoch on 20 images on the CPU (shapes and file sizes)
  mkdir -p "$WORK/smoke_images"
  ls "$DATA" | head -20 | while read -r f; do cp "$DATA/$f" "$WORK/smoke_images/"; done
  DATA="$WORK/smoke_images"
  DEVICE=cpu BUDGET=2 KILL=280 THREADS=1
  COMMON="--epochs 1 --eval-every 1 --amp --channels-last"
  SMALL_CNN="--batch-size 8" SMALL_HEAD="" SMALL_PRED="" SMALL_VIT="--batch-size 8"
elif [ "$SMOKE" = "1" ]; then
  # tiny everything on the CPU: 20 images, 3 epochs, small models; bf16 autocast and channels-last
  # forced on so that the CUDA code paths (dtype, memory format) run too
  mkdir -p "$WORK/smoke_images"
  ls "$DATA" | head -20 | while read -r f; do cp "$DATA/$f" "$WORK/smoke_images/"; done
  DATA="$WORK/smoke_images"
  DEVICE=cpu BUDGET=0.5 KILL=120 THREADS=1
  COMMON="--epochs 3 --eval-every 2 --amp --channels-last"
  SMALL_CNN="--image-size 32 --width 4 --batch-size 8"
  SMALL_HEAD="--head-dims 32,16"
  SMALL_PRED="--predictor-dims 8,16"
  SMALL_VIT="--batch-size 8 --image-size 32 --local-size 16 --local-crops 2 --embed-dim 24 --depth 1 --num-heads 2 --out-dim 64"
else
  DEVICE=cuda BUDGET=${BUDGET:-4.6} KILL=${KILL:-330} THREADS=2
  COMMON="--epochs 2000 --eval-every 10"
  SMALL_CNN="" SMALL_HEAD="" SMALL_PRED="" SMALL_VIT=""
fi
[ -d "$DATA" ] || { echo "image folder $DATA not found" >&2; exit 2; }
echo "data $DATA ($(ls "$DATA" | wc -l) files), device $DEVICE, budget $BUDGET min per run, out $OUT"

launch() {  # launch NAME METHOD ARGS... : one background training run, its log, exit code and command
  local name=$1 method=$2
  shift 2
  if [ -n "${RUNS:-}" ] && [[ " $RUNS " != *" $name "* ]]; then return; fi  # RUNS="a b": only those runs
  mkdir -p "$WORK/$name"
  local cmd="$PY -m ssl_widgets.train --method $method --data $DATA --out $WORK/$name/model.pt --device $DEVICE \
--threads $THREADS --time-budget $BUDGET --no-resume --no-progress $COMMON $*"
  echo "$cmd" > "$WORK/$name.cmd"
  ( timeout -k 10 "$KILL" $cmd > "$WORK/$name.log" 2>&1; echo $? > "$WORK/$name.rc" ) &
}

# Barlow Twins (LARS; projector ends in BatchNorm(affine=False), the standardisation of the loss)
launch bt-base barlow-twins --head-dims 1024,1024,1024 --lambd 0.0051 --batch-size 256 --lr 0.3 \
  --min-scale 0.2 --weight-decay 1e-4 --warmup-epochs 10 $SMALL_CNN $SMALL_HEAD
launch bt-lam01 barlow-twins --head-dims 1024,1024,1024 --lambd 0.01 --batch-size 128 --lr 0.1 \
  --min-scale 0.08 --weight-decay 1.5e-6 --warmup-epochs 20 $SMALL_CNN $SMALL_HEAD
launch bt-2layer barlow-twins --head-dims 1024,1024 --lambd 0.02 --batch-size 128 --lr 0.15 \
  --min-scale 0.14 --weight-decay 1.5e-6 --warmup-epochs 20 $SMALL_CNN $SMALL_HEAD
# SimSiam (SGD momentum 0.9, fixed predictor lr, cosine); small batches: more steps in the budget
launch ss-3layer simsiam --head-dims 1024,1024,1024 --predictor-dims 256,1024 --batch-size 128 --lr 0.06 \
  --min-scale 0.2 --weight-decay 1e-4 --warmup-epochs 10 $SMALL_CNN $SMALL_HEAD $SMALL_PRED
launch ss-2layer simsiam --head-dims 512,512 --predictor-dims 128,512 --batch-size 64 --lr 0.05 \
  --min-scale 0.2 --weight-decay 5e-4 --warmup-epochs 10 $SMALL_CNN $SMALL_HEAD $SMALL_PRED
# DINO, ViT 192-d, depth 6, 3 heads, patch 8 at 112 px; 2 global + 6 local crops; teacher momentum
# 0.99 (few hundred steps in the budget: 0.996 would leave the teacher far behind)
launch dino-base dino --batch-size 128 --lr 5e-4 --out-dim 4096 --momentum-teacher 0.99 \
  --warmup-epochs 10 --min-scale 0.25 --local-min-scale 0.05 $SMALL_VIT
launch dino-bs64 dino --batch-size 64 --lr 5e-4 --out-dim 8192 --momentum-teacher 0.99 \
  --warmup-epochs 10 --min-scale 0.25 --local-min-scale 0.05 --warmup-teacher-temp-epochs 20 $SMALL_VIT
# second-round variants (longer runs of the families that were still improving)
launch ss-2layer-lr01 simsiam --head-dims 512,512 --predictor-dims 128,512 --batch-size 64 --lr 0.1 \
  --min-scale 0.2 --weight-decay 5e-4 --warmup-epochs 10 $SMALL_CNN $SMALL_HEAD $SMALL_PRED
launch dino-bs256 dino --batch-size 256 --lr 1e-3 --out-dim 4096 --momentum-teacher 0.99 \
  --warmup-epochs 10 --min-scale 0.25 --local-min-scale 0.05 $SMALL_VIT
if [ "${SSL_WIDGETS_SMOKE_CRASH:-0}" = "1" ]; then  # smoke test of the robustness: a run that fails at once
  launch crash simsiam --head-dims 32,16 --predictor-dims 8,16 --min-scale 7 $SMALL_CNN
fi

wait
echo "training finished after $(( $(date +%s) - T0 )) s"
timeout -k 5 45 "$PY" benchmarks/gpu_train_select.py "$WORK" "$OUT" "$DATA" "$DEVICE"
rc=$?
echo "total $(( $(date +%s) - T0 )) s; files in $OUT:"
ls -la "$OUT"
exit $rc
