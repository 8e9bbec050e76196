#!/usr/bin/env bash
# `make demo`: the whole hpcvision workflow on Fashion-MNIST shaped as a 10-synset ImageNet.
#   data sample -> data extract (2 processes) -> data build -> launch (2 all-reduce workers)
#   -> evaluate -> export -> predict
# Everything goes under $DEMO_DIR (default demo/). A rerun resumes: finished stages are skipped
# (extract/build skip what exists, train resumes from its newest checkpoint); DEMO_CLEAN=1 starts over.
# Settings: DEMO_WORKERS (2), DEMO_CONFIG (configs/demo.yaml), FASHION_MNIST (IDX folder).
# Measured figures (command, top-1, minutes, machine): docs/demo.md.
set -euo pipefail

DEMO_DIR=${DEMO_DIR:-demo}
DEMO_WORKERS=${DEMO_WORKERS:-2}
DEMO_CONFIG=${DEMO_CONFIG:-configs/demo.yaml}
FASHION_MNIST=${FASHION_MNIST:-/usr/share/datasets/fashion-mnist}
export TF_CPP_MIN_LOG_LEVEL=${TF_CPP_MIN_LOG_LEVEL:-2}
export PYTHONUNBUFFERED=1

sample=$DEMO_DIR/sample
extracted=$DEMO_DIR/extracted
records=$DEMO_DIR/records
run=$DEMO_DIR/run
exported=$DEMO_DIR/export
started=$SECONDS

# TensorFlow's start-up notes (oneDNN, CPU features) repeat for every process; keep the demo's output
# to what each stage says. The command's own exit status still ends the demo (pipefail).
quiet() {
    "$@" 2>&1 | { grep --line-buffered -v -E "$TF_NOISE" || true; }
}
TF_NOISE='All log messages before absl::InitializeLog|oneDNN custom operations|cpu_feature_guard|To enable the following instructions'

stage() {
    local elapsed=$((SECONDS - started))
    printf '\n== [%d:%02d] %s\n' $((elapsed / 60)) $((elapsed % 60)) "$*"
}

if [ "${DEMO_CLEAN:-0}" = 1 ]; then
    echo "DEMO_CLEAN=1: removing $DEMO_DIR"
    rm -rf -- "$DEMO_DIR"
fi
mkdir -p -- "$DEMO_DIR"

stage "1/7 data sample: Fashion-MNIST (70,000 images) as a 10-synset ImageNet in $sample"
if [ -f "$sample/.complete" ]; then
    echo "already written (remove $sample to redo)"
else
    source_args=(--fashion-mnist "$FASHION_MNIST")
    if [ ! -f "$FASHION_MNIST/train-images-idx3-ubyte.gz" ]; then
        echo "warning: no Fashion-MNIST in $FASHION_MNIST (Debian: apt-get install dataset-fashion-mnist);" \
            "using synthetic shapes, so the accuracy below says nothing about the recipe" >&2
        source_args=(--source synthetic)
    fi
    rm -rf -- "$sample"
    quiet hpcvision data sample "${source_args[@]}" "$sample"
    touch "$sample/.complete"
fi

stage "2/7 data extract: the listed images and boxes, 2 processes, to $extracted"
# One list for both splits: the archive is indexed and read once.
cat "$sample/train_files.txt" "$sample/validation_files.txt" > "$DEMO_DIR/all_files.txt"
quiet hpcvision data extract --images "$sample/Images.tar" --annotations "$sample/Annotation.tar.gz" \
    --list "$DEMO_DIR/all_files.txt" --synsets "$sample/synsets.txt" --out "$extracted" --workers 2

stage "3/7 data build: TFRecord shards to $records"
for split in train validation; do
    shards=8
    [ "$split" = validation ] && shards=2
    quiet hpcvision data build --images "$extracted/images" --annotations "$extracted/annotations" \
        --list "$sample/${split}_files.txt" --synsets "$sample/synsets.txt" --metadata "$sample/metadata.txt" \
        --out "$records" --name "$split" --shards "$shards" --workers 2
done

stage "4/7 train: $DEMO_WORKERS all-reduce workers on 127.0.0.1, recipe $DEMO_CONFIG, checkpoints in $run"
quiet hpcvision launch --workers "$DEMO_WORKERS" -- --config "$DEMO_CONFIG" --data "$records" --checkpoint-dir "$run"

stage "5/7 evaluate on the 10,000 validation images"
quiet hpcvision evaluate --checkpoint-dir "$run" --data "$records" --name validation --out "$DEMO_DIR" --batch-size 500

stage "6/7 export to $exported"
quiet hpcvision export --checkpoint-dir "$run" --out "$exported"

stage "7/7 predict: the first validation image of five classes, with the exported model"
mapfile -t images < <(awk -v dir="$extracted/images" 'NR % 2000 == 1 { print dir "/" $1 "/" $2 ".JPEG" }' \
    "$sample/validation_files.txt")
quiet hpcvision predict --model-path "$exported" --top 3 "${images[@]}"

stage "done"
python - "$DEMO_DIR/metrics.json" <<'EOF'
import json
import sys

metrics = json.load(open(sys.argv[1]))
print(f"validation top-1 {metrics['top1']:.2%}  top-5 {metrics['top5']:.2%}  ({sys.argv[1]})")
EOF
elapsed=$((SECONDS - started))
echo "demo took $((elapsed / 60)) min $((elapsed % 60)) s"
echo "checkpoints:      $run (run.yaml, labels.json, ckpt-*)"
echo "TensorBoard logs: $run/logs (train, eval)"
echo "confusion matrix: $DEMO_DIR/confusion_matrix.png"
echo "exported model:   $exported"
echo "open TensorBoard: hpcvision tensorboard $run   (then http://127.0.0.1:6006)"
