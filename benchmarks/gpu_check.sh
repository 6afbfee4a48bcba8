#!/usr/bin/env bash
# The GPU checks and measurements, in parts that each fit a few minutes of a time-limited GPU:
#
#   benchmarks/gpu_check.sh DIR [PART ...]        (default: tests train loss sweep merge)
#
#   tests   the CUDA tests (pytest -m gpu)
#   train   GPT-2 small and Transformer-base training steps, eager and compiled (peers compiled
#           too), with the 50% and 40% MFU targets
#   loss    the output head + cross-entropy alone: eager chunks, the compiled region, full logits
#   sweep   a short sweep section: 8 lm-bible runs of 100 steps, K = 1, 2, 4, 8 runs per GPU,
#           with and without CUDA graphs, and the >= 4x target
#   merge   one report from the bench parts found under DIR, written to MERGE_OUT (default
#           reports/perf/)
#
# Each part writes DIR/<part>/ (its JSON, its report and log.txt); run a part again to replace
# it. PYTHON picks the interpreter (default python3), which must import this project and its
# dependencies. SWEEP_SET replaces the sweep part's settings. QUICK=1 runs the bench parts at
# toy sizes (checks the script itself, on any machine). The exit status is 1 when any part
# failed, 2 for an unknown part.
set -uo pipefail

dir=${1:?usage: benchmarks/gpu_check.sh DIR [tests|train|loss|sweep|merge ...]}
shift
parts=("$@")
[ ${#parts[@]} -eq 0 ] && parts=(tests train loss sweep merge)
py=${PYTHON:-python3}
quick=()
sweep_set=${SWEEP_SET:-sweep_runs=8 sweep_steps=100}
if [ "${QUICK:-0}" = 1 ]; then
    quick=(--quick)
    sweep_set=${SWEEP_SET:-sweep_runs=2 sweep_steps=4 sweep_ks=1,2 sweep_set=model.n_layers=1,data.limit_train=200,data.limit_eval=20,data.batch_size=4}
fi
status=0

for part in "${parts[@]}"; do
    case $part in tests | train | loss | sweep | merge) ;;
        *) echo "gpu_check: unknown part '$part' (tests, train, loss, sweep, merge)" >&2; exit 2 ;;
    esac
done

bench() {  # bench PART ARGS...: one bench part into DIR/PART
    local part=$1
    shift
    mkdir -p "$dir/$part"
    PYTHONUNBUFFERED=1 "$py" -m benchmarks "${quick[@]}" --out "$dir/$part" "$@" 2>&1 \
        | tee "$dir/$part/log.txt" || status=1
}

for part in "${parts[@]}"; do
    echo "== gpu_check $part, $(date -u '+%Y-%m-%d %H:%M:%S') UTC"
    case $part in
        tests)
            mkdir -p "$dir/tests"
            WANDB_MODE=disabled PYTHONUNBUFFERED=1 "$py" -m pytest -q -m gpu -p no:cacheprovider tests 2>&1 \
                | tee "$dir/tests/log.txt" || status=1 ;;
        train) bench train --sections train-lm,train-seq2seq --presets gpt2 --compile ;;
        loss) bench loss --sections loss ;;
        # shellcheck disable=SC2086  # the settings are words
        sweep) bench sweep --sections sweep --set $sweep_set ;;
        merge)
            shopt -s nullglob
            found=("$dir"/train/*.json "$dir"/loss/*.json "$dir"/sweep/*.json)
            shopt -u nullglob
            if [ ${#found[@]} -eq 0 ]; then
                echo "gpu_check merge: no bench part under $dir" >&2
                status=1
            else
                "$py" -m benchmarks --merge "${found[@]}" --out "${MERGE_OUT:-reports/perf}" || status=1
            fi ;;
    esac
done
exit $status
