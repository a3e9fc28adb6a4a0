#!/usr/bin/env bash
# (kept as run: .devcarry/final.sh on 2026-12-03 12:58 UTC, the ncu step as benchmarks/device_ncu6.sh)
# Final call of record (2026-12-03): goal table with peers, GPU tests, split-K stress, decode, prefill, q/k/v and
# o_proj table, an M=64 stage/split probe, ncu. Raw files in /tmp/fw; $OUT/final.tgz refreshed after every step.
set -o pipefail
out=$1; w=/tmp/fw; mkdir -p $w
export PYTHONUNBUFFERED=1
pack() { tar czf $out/final.tgz -C $w . ; }
echo "commit $(cat COMMIT 2>/dev/null) start $(date -u +%H:%M:%S)" | tee $w/meta.log
nvidia-smi --query-gpu=name,clocks.max.sm --format=csv,noheader | tee -a $w/meta.log
python3 -m benchmarks.gemm --ms 1,16,64,128,256,1024,4096 --columns ours,cublas,samebytes,tinygemm,marlin,machete \
  --peers .peers --dtypes float16,bfloat16 --json $w/gemm.json > $w/gemm.log 2>&1; echo "gemm rc $? t=$SECONDS"; pack
python3 -m pytest -q -n 8 tests/test_gpu.py tests/test_gpu_patterns.py tests/test_gpu_export.py tests/runtime/test_triton_op.py \
  tests/runtime/test_calls.py tests/kernels/test_gpu_device_rule.py tests/kernels/test_stripe.py tests/kernels/test_gemm_wide.py \
  tests/kernels/test_kplanes_kernels.py tests/kernels/test_compiled_launch.py tests/kernels/test_gemm_rs.py \
  tests/kernels/test_target_numerics.py > $w/gpu_tests.log 2>&1; echo "tests rc $? t=$SECONDS"; tail -1 $w/gpu_tests.log; pack
python3 -m benchmarks.splitk_stress > $w/stress.log 2>&1; echo "stress rc $? t=$SECONDS"; tail -1 $w/stress.log; pack
python3 -m benchmarks.decode --layers 4 --batches 1,16 --steps 64 > $w/decode.log 2>&1; echo "decode rc $? t=$SECONDS"; grep "^batch" $w/decode.log; pack
if [ $SECONDS -lt 400 ]; then python3 -m benchmarks.prefill --layers 4 --tokens 2048 > $w/prefill.log 2>&1; echo "prefill rc $? t=$SECONDS"; tail -3 $w/prefill.log; pack; fi
if [ $SECONDS -lt 420 ]; then python3 -m benchmarks.gemm --shapes 4096x6144,4096x4096 --ms 16,64,128,256 --columns ours,cublas,samebytes,marlin,machete \
  --peers .peers --dtypes float16,bfloat16 --json $w/gemm_qkv.json > $w/gemm_qkv.log 2>&1; echo "qkv rc $? t=$SECONDS"; pack; fi
if [ $SECONDS -lt 450 ]; then python3 -m benchmarks.wide_sweep --layout kplanes --stress 2 --ms 64 --shapes 4096x14336,8192x8192 \
  --configs 64x64:4:4+64x64:4:2+64x64:4:2:sk2+64x64:4:3:sk2+64x64:4:3 --json $w/m64.json > $w/m64.log 2>&1; echo "m64 t=$SECONDS"; tail -3 $w/m64.log; pack; fi
if [ $SECONDS -lt 480 ]; then bash benchmarks/device_ncu6.sh $w 64 > $w/ncu.log 2>&1; echo "ncu t=$SECONDS"; head -40 $w/ncu.log; pack; fi
grep -E "^  M=|^# [0-9]" $w/gemm.log | cut -c1-200
