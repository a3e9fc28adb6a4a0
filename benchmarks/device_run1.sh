#!/usr/bin/env bash
# One device session: the GEMM benchmark with peers (the "before" figure), the stripe kernel's TTGIR/PTX
# summary on the device's Triton, and the stripe sweep. Usage: bash benchmarks/device_run1.sh PEERS_DIR OUT_DIR
set -o pipefail
peers=$1; out=$2
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,clocks.sm,clocks.mem,clocks.max.sm,power.draw --format=csv
python3 -c "import torch, triton; print(torch.__version__, triton.__version__)"
python3 -m benchmarks.stripe_ir --dump /tmp/ir 2>&1 | grep -v -i warn | tee $out/ir.log
tar czf $out/ir.tgz -C /tmp ir
python3 -m benchmarks.gemm --ms 1,16,64,256,1024,4096 --columns ours,cublas,samebytes,tinygemm,marlin,machete \
  --peers "$peers" --json $out/gemm_before.json 2>&1 | tee $out/gemm_before.log
python3 -m benchmarks.stripe_sweep --ms 1,16,64,256,1024 --set all --json $out/sweep1.json 2>&1 | tee $out/sweep1.log
