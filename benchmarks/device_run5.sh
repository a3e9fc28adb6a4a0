#!/usr/bin/env bash
# Device session 5: sweep 5 (masked slot rows; table candidates), fp16 three shapes, bf16 one shape.
set -o pipefail
out=$1
export PYTHONUNBUFFERED=1
echo "commit $(cat COMMIT 2>/dev/null)"
python3 -m benchmarks.stripe_sweep --set v5 --ms 1,4,16,32,64 --json $out/sweep5.json 2>&1 | tee $out/sweep5.log
python3 -m benchmarks.stripe_sweep --set v5 --ms 1,16 --dtypes bfloat16 --shapes 4096x14336 --stress 5 --tol 1e-2 \
  --json $out/sweep5_bf16.json 2>&1 | tail -4 | tee $out/sweep5_bf16.log
