#!/usr/bin/env bash
# Device session 3: IR summary (device Triton) and sweep 3 (kpairs decode), fp16 3 shapes + bf16 one shape.
set -o pipefail
out=$1
export PYTHONUNBUFFERED=1
python3 -m benchmarks.stripe_ir --dump /tmp/ir --variants dot16_pairs,dot16_pairs_nt,dot128_pairs_in 2>&1 | grep -v -i warn | tee $out/ir3.log
tar czf $out/ir3.tgz -C /tmp ir
python3 -m benchmarks.stripe_sweep --set v3 --ms 1,16,64,256 --json $out/sweep3.json 2>&1 | tee $out/sweep3.log
python3 -m benchmarks.stripe_sweep --set v3 --ms 1,16 --dtypes bfloat16 --shapes 4096x14336 --stress 5 --tol 1e-2 \
  --json $out/sweep3_bf16.json 2>&1 | tail -4 | tee $out/sweep3_bf16.log
