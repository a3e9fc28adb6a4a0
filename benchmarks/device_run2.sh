#!/usr/bin/env bash
# Device session 2: TTGIR/PTX summary on the device's Triton, sweep 2 (fp16, 3 shapes; bf16 on one shape),
# ncu of the best configs on 4096x14336. Usage: bash benchmarks/device_run2.sh OUT_DIR
set -o pipefail
out=$1
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,clocks.sm,clocks.mem --format=csv,noheader
python3 -m benchmarks.stripe_ir --dump /tmp/ir 2>&1 | grep -v -i warn | tee $out/ir2.log
tar czf $out/ir2.tgz -C /tmp ir
python3 -m benchmarks.stripe_sweep --ms 1,16,64,256,1024 --json $out/sweep2.json 2>&1 | tee $out/sweep2.log
python3 -m benchmarks.stripe_sweep --ms 1,16,64 --dtypes bfloat16 --shapes 4096x14336 --stress 5 --tol 1e-2 \
  --json $out/sweep2_bf16.json 2>&1 | tail -8 | tee $out/sweep2_bf16.log
timeout 150 ncu --clock-control none -k regex:_stripe_kernel --section SpeedOfLight --section Occupancy \
  --section WarpStateStats --section LaunchStats --section MemoryWorkloadAnalysis \
  python3 -m benchmarks.stripe_profile --sweep $out/sweep2.json --ms 1,16,64,256 > $out/ncu2.log 2>&1
grep -E "M=|Duration|DRAM Throughput|Memory Throughput|Compute \(SM\)|Registers Per|Achieved Occupancy|Theoretical Occ|Stall|Waves Per SM|Block Size|Grid Size|Warp Cycles Per Issued" $out/ncu2.log | head -120
