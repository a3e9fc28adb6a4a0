#!/usr/bin/env bash
# Device session 4 (final): GEMM benchmark with peers (ours = shipped plan), sweep 4 of the stripe kernel in
# the same session (fp16 three shapes; bf16 one shape), IR summary of the chosen configs.
set -o pipefail
peers=$1; out=$2
export PYTHONUNBUFFERED=1
git_rev=$(cat COMMIT 2>/dev/null); echo "commit $git_rev"
nvidia-smi --query-gpu=name,clocks.sm,clocks.mem --format=csv,noheader
python3 -m benchmarks.stripe_ir --variants m1_pairs_n256,dot16_kperm,m64_pairs,m256_pairs_in 2>&1 | grep -v -i warn | tee $out/ir4.log
python3 -m benchmarks.stripe_sweep --set v4 --ms 1,16,32,64,256 --json $out/sweep4.json 2>&1 | tee $out/sweep4.log
python3 -m benchmarks.stripe_sweep --set v4 --ms 1,16,64 --dtypes bfloat16 --shapes 4096x14336 --stress 5 --tol 1e-2 \
  --json $out/sweep4_bf16.json 2>&1 | tail -4 | tee $out/sweep4_bf16.log
python3 -m benchmarks.gemm --ms 1,16,64,256,1024,4096 --columns ours,cublas,samebytes,tinygemm,marlin,machete \
  --peers "$peers" --json $out/gemm_final.json 2>&1 | tee $out/gemm_final.log
