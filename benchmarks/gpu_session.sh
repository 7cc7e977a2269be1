#!/usr/bin/env bash
# One lent GPU, one call: fetch HOMUS, time the stroke data source against the CUDA training step,
# then run a study (the random-split 2 x 2 at this machine's settings) until LIMIT stops it, and
# pack every small result under $OUT.
#
#   HOMUS_SOURCE=.devdata/HOMUS-v2.zip OUT=/tmp/out bash benchmarks/gpu_session.sh
#
# STEPS ("raster accuracy") chooses the parts: ``raster`` times the torch rasterizer's data source
# against the CUDA step (target >= 3x), times the step under each mixed precision, and trains
# ResNet-18 for 20 epochs at 64 px from strokes drawn on the device (target <= 15 s of training; test accuracy against the CPU renderer's source, two
# seeds each); ``accuracy`` runs the random-split 2 x 2 as a study (homus run).
# ``folds`` runs the 5-fold cross-validation studies of configs/ (FOLD_STUDIES, the writer folds first)
# unchanged but for where they train: on this GPU, PARALLEL runs at once, strokes drawn on the device,
# until FOLD_LIMIT seconds are spent. Each study's report (mean +- std over folds, pooled accuracy,
# ensembles, where the best ensemble errs) comes back under reports/; a study stopped by the limit
# leaves its finished runs' metrics in runs.tgz, and the same command on the still-warm machine
# continues it (runs are resumable).
#
#   STEPS=folds OUT=/tmp/out bash benchmarks/gpu_session.sh
#
# Settings (environment): EPOCHS (20), SEEDS ("0 1"),
# LIMIT (seconds before the accuracy step is stopped, 490), WORKERS (cores - 2), DEVICE (cuda; cpu for a
# dry run), FOLD_STUDIES ("configs/writer-5fold.yaml configs/random-5fold.yaml"), PARALLEL (4),
# FOLD_LIMIT (seconds for the folds step, 480).
# Checkpoints stay on the machine (too big to bring back); metrics, histories and pictures come back.
set -u -o pipefail
OUT=$(realpath -m "${OUT:-gpu-out}")  # taken from the caller's folder
cd "$(dirname "$0")/.."
EPOCHS=${EPOCHS:-20}
SEEDS=${SEEDS:-0 1}
LIMIT=${LIMIT:-490}
WORKERS=${WORKERS:-$(( $(nproc) > 3 ? $(nproc) - 2 : 1 ))}
RUNS=${RUNS:-runs/gpu}
RAW=${RAW:-raw}
DEVICE=${DEVICE:-cuda}
STEPS=${STEPS:-raster accuracy}
RASTER_SEEDS=${RASTER_SEEDS:-0 1}
FOLD_STUDIES=${FOLD_STUDIES:-configs/writer-5fold.yaml configs/random-5fold.yaml}
PARALLEL=${PARALLEL:-4}
FOLD_LIMIT=${FOLD_LIMIT:-480}
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1 TQDM_DISABLE=1
mkdir -p "$OUT"
log=$OUT/log.txt

{
  date -u
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
  python3 -c "import sys, torch, torchvision, numpy, cv2; print('python', sys.version.split()[0], 'torch', \
torch.__version__, 'torchvision', torchvision.__version__, 'numpy', numpy.__version__, 'opencv', cv2.__version__, \
'cuda', torch.cuda.is_available())"
  shm=$(df -k --output=avail /dev/shm 2>/dev/null | tail -1)
  if [ -n "$shm" ] && [ "$shm" -lt 1048576 ] && [ "$WORKERS" -gt 4 ]; then  # loader batches pass through /dev/shm
    echo "/dev/shm has ${shm} KiB free: 4 workers instead of $WORKERS"; WORKERS=4
  fi
  echo "workers $WORKERS · epochs $EPOCHS · seeds $SEEDS · $(nproc) cores"
  [ -f "$RAW/homus.json" ] || python3 -m homus.cli fetch --raw-dir "$RAW" || exit 1

  status=0
  if [[ " $STEPS " == *" raster "* ]]; then
    echo "## raster: the data sources against the CUDA training step (cpu, raster-cpu: $WORKERS loader workers)"
    timeout 200 python3 benchmarks/raster_bench.py sources --raw-dir "$RAW" --device "$DEVICE" --sizes 32 64 \
      --workers "$WORKERS" --repeats 2 --batches 40 || status=$?
    echo "## raster: the CUDA training step in full precision, bf16 and fp16 (train.amp)"
    timeout 90 python3 benchmarks/train_bench.py precision --device "$DEVICE" --size 32 64 --channels 1 3 \
      --batches 20 || status=$?
    for seed in $RASTER_SEEDS; do
      echo "## raster: 20 epochs of ResNet-18 at 64 px, strokes drawn on the device, seed $seed"
      timeout 150 python3 benchmarks/raster_bench.py epochs --raw-dir "$RAW" --device "$DEVICE" --raster device \
        --epochs 20 --size 64 --seed "$seed" || status=$?
      echo "## raster: the same run fed by the CPU renderer in $WORKERS loader workers (the accuracy to match)"
      timeout 150 python3 benchmarks/raster_bench.py epochs --raw-dir "$RAW" --device "$DEVICE" --raster cpu \
        --workers "$WORKERS" --epochs 20 --size 64 --seed "$seed" || status=$?
    done
    echo "## raster: 20 epochs on the device with twice the batch (and lr)"
    timeout 150 python3 benchmarks/raster_bench.py epochs --raw-dir "$RAW" --device "$DEVICE" --raster device \
      --epochs 20 --size 64 --batch-size 256 --lr 0.1 || status=$?
    echo "## raster: 20 epochs on the device, the training step torch.compile'd (the first epoch compiles)"
    timeout 200 python3 benchmarks/raster_bench.py epochs --raw-dir "$RAW" --device "$DEVICE" --raster device \
      --epochs 20 --size 64 --compile || status=$?
  fi
  if [[ " $STEPS " == *" accuracy "* ]]; then
    echo "## the stroke data source against the CUDA training step"
    timeout 120 python3 benchmarks/train_bench.py strokes --raw-dir "$RAW" --device "$DEVICE" \
      --workers 0 1 "$WORKERS" --channels ink ink,time,stroke --batches 40

    echo "## accuracy: a study (homus run), the 2 x 2 of configs/random-2x2.yaml at this machine's settings"
    seeds_yaml=$(echo "$SEEDS" | tr ' ' ',')
    cat > "$OUT/gpu-study.yaml" <<YAML
dataset: {raw_dir: $RAW}
render: {rendered_dir: rendered}
train: {device: $DEVICE, workers: $WORKERS, runs_dir: $RUNS, epochs: $EPOCHS}
study:
    name: gpu
    variants: [{thickness: 3, size: 64}]
    seeds: [$seeds_yaml]
    split_seed: 0
    union: false
    train: {from_strokes: true, split: random, epochs: $EPOCHS}
    arms:
      ink+size: {channels: [ink, size]}
      ink+time+stroke+size: {channels: [ink, time, stroke, size]}
    ensembles:
      all: {arms: [ink+size, ink+time+stroke+size]}
    reports_dir: $OUT/reports
YAML
    timeout "$LIMIT" python3 -m homus.cli run --config "$OUT/gpu-study.yaml"
    status=$?
    echo "accuracy step exit $status"
  fi
  if [[ " $STEPS " == *" folds "* ]]; then
    end=$(( $(date +%s) + FOLD_LIMIT ))
    for study in $FOLD_STUDIES; do
      left=$(( end - $(date +%s) ))
      if [ "$left" -lt 60 ]; then echo "## folds: $study not started, $left s left"; status=124; break; fi
      name=$(basename "$study" .yaml)
      echo "## folds: $study, $PARALLEL runs at once on $DEVICE, $left s left"
      # the study as committed; only where it trains changes (device, loader workers, folders)
      python3 - "$study" "$OUT/$name.yaml" "$RAW" "$DEVICE" "$RUNS" "$OUT/reports" <<'PY' || { status=1; continue; }
import sys, yaml
src, dst, raw, device, runs, reports = sys.argv[1:]
cfg = yaml.safe_load(open(src))
cfg.setdefault("dataset", {})["raw_dir"] = raw
cfg.setdefault("train", {}).update(device=device, workers=2, runs_dir=runs)
cfg["study"]["reports_dir"] = reports
yaml.safe_dump(cfg, open(dst, "w"), sort_keys=False)
PY
      timeout "$left" python3 -m homus.cli run --config "$OUT/$name.yaml" --parallel "$PARALLEL"
      rc=$?
      echo "folds: $study exit $rc"
      [ "$rc" -eq 0 ] || status=$rc
    done
  fi
  echo "exit $status"
  date -u
  exit $status
} 2>&1 | tee "$log"
status=${PIPESTATUS[0]}

# every run's small files (not its checkpoints), finished or not
tar czf "$OUT/runs.tgz" --exclude='*.pt' "$RUNS" 2>/dev/null
ls -la "$OUT"
exit "$status"
