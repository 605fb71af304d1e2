#!/usr/bin/env bash
# Every CUDA path prunebench has, in one run of a few minutes, one PASS/FAIL line each:
#   single              device=cuda: a run on the GPU (ResNet with BatchNorm, digits)
#   single-again        the same run again, compared with `single`: run-to-run nondeterminism
#   nccl-ddp            the same run under torchrun, NCCL, one rank per GPU present (DDP,
#                       SyncBatchNorm, sharded evaluation, mask broadcast; one GPU: a group of
#                       one), compared with `single`
#   deterministic, deterministic-again, nccl-ddp-deterministic
#                       the three again with deterministic=true: the pair must be equal to the
#                       bit, and DDP's difference from one process is then DDP's alone; a
#                       VERDICT line says what the pairs show together
#   amp-bf16, amp-fp16  train.amp: autocast (fp16 with its GradScaler)
#   latency             inference.measure=true on the GPU: CSR (cuSPARSE) against dense
#   semi-structured     export.semi_structured=true on a 2:4-pruned MLP (cuSPARSELt/CUTLASS)
# It goes on past a failed path and exits 1 if any failed.
#
#   cd REPO && PYTHONPATH=$PWD:$PYTHONPATH bash scripts/check_cuda.sh
# Variables: PYTHON (default python3), OUT (run folders under $OUT/cuda_check, default /tmp),
# DEVICE (default cuda; DEVICE=cpu runs the same commands on CPU with gloo and 2 ranks, a dry
# run), NPROC (ranks of nccl-ddp; default: the GPUs present).
set -u
PYTHON=${PYTHON:-python3}
DEVICE=${DEVICE:-cuda}
DIR=${OUT:-/tmp}/cuda_check
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-4}
if [ "$DEVICE" = cuda ]; then
    NPROC=${NPROC:-$("$PYTHON" -c "import torch; print(torch.cuda.device_count())")}
else
    NPROC=${NPROC:-2}
fi
rm -rf "$DIR" && mkdir -p "$DIR"
FAILED=0
COMMON=(dataset=digits cache.enabled=false "device=$DEVICE")
RESNET=(model=resnet model.depth=8 train.epochs=3 finetune.epochs=1 strategy=l1
        strategy.amount=0.8 inference.measure=false)

# run NAME CMD...: output to $DIR/NAME.log; a non-zero exit is a FAIL line with its last line
run() {
    local name=$1 code
    shift
    timeout 240 "$@" >"$DIR/$name.log" 2>&1
    code=$?
    if [ "$code" != 0 ]; then
        echo "FAIL $name: exit $code: $(grep -v '^[[:space:]]*$' "$DIR/$name.log" | tail -n 1)"
        FAILED=1
        return 1
    fi
}

# report NAME: PASS/FAIL from $DIR/NAME/results.json with the key figures (scripts/check_cuda.py)
report() {
    "$PYTHON" "$(dirname "$0")/check_cuda.py" "$DIR" "$1" || FAILED=1
}

echo "prunebench CUDA check: $("$PYTHON" -c "import torch; print(torch.__version__, \
torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'no GPU')"), $NPROC rank(s)"

# one process twice, then DDP; all three again with torch's deterministic kernels
for one in single deterministic; do
    KEYS=() ddp=nccl-ddp
    if [ "$one" = deterministic ]; then KEYS=(deterministic=true) ddp=nccl-ddp-deterministic; fi
    for name in "$one" "$one-again"; do
        run "$name" "$PYTHON" -m prunebench "${COMMON[@]}" "${RESNET[@]}" "${KEYS[@]}" \
            "hydra.run.dir=$DIR/$name" && report "$name"
    done
    run "$ddp" "$PYTHON" -m torch.distributed.run --standalone --nproc-per-node="$NPROC" \
        -m prunebench "${COMMON[@]}" "${RESNET[@]}" "${KEYS[@]}" "hydra.run.dir=$DIR/$ddp" \
        && report "$ddp"
done
"$PYTHON" "$(dirname "$0")/check_cuda.py" "$DIR" --verdict

for amp in bf16 fp16; do
    run "amp-$amp" "$PYTHON" -m prunebench "${COMMON[@]}" "${RESNET[@]}" "train.amp=$amp" \
        "hydra.run.dir=$DIR/amp-$amp" && report "amp-$amp"
done

run latency "$PYTHON" -m prunebench "${COMMON[@]}" model=mlp "model.hidden=[2048,2048]" \
    train.epochs=1 finetune.epochs=1 strategy=l1 strategy.amount=0.95 \
    inference.measure=true "hydra.run.dir=$DIR/latency" && report latency

run semi-structured "$PYTHON" -m prunebench "${COMMON[@]}" model=mlp \
    "model.hidden=[1024,1024]" train.epochs=1 finetune.epochs=1 train.batch_size=256 \
    strategy=l1 strategy.pattern=2:4 strategy.amount=0.5 inference.measure=false \
    export.semi_structured=true "hydra.run.dir=$DIR/semi-structured" \
    && report semi-structured

if [ "$FAILED" = 0 ]; then
    echo "ALL PASS (run folders in $DIR)"
else
    echo "SOME FAILED (logs and run folders in $DIR)"
fi
exit "$FAILED"
