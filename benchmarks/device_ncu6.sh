#!/usr/bin/env bash
# ncu of the rolled vs unrolled ring: M=64 64x64 w4 (no gain) and M=256 256x128 w8 (gain), 4096x14336 fp16.
set -o pipefail
out=$1
export PYTHONUNBUFFERED=1
M='--metrics regex:smsp__average_warps_issue_stalled_.*_per_issue_active\.ratio,smsp__inst_executed.sum,sm__cycles_active.avg,smsp__inst_executed_op_barrier.sum,launch__registers_per_thread'
cases=("64 64x64:4:4,64x64:4:4:u" "256 256x128:8:3,256x128:8:3:u")
[ "$2" = 64 ] && cases=("64 64x64:4:4,64x64:4:4:u")
for case in "${cases[@]}"; do
  set -- $case
  timeout 90 ncu --clock-control none -k regex:_gemm_rs --section SpeedOfLight --section SchedulerStats \
    --section WarpStateStats --section Occupancy $M \
    python3 -m benchmarks.wide_profile --shape 4096x14336 --ms $1 --configs $2 > $out/ncu-m$1.txt 2>&1
  echo "M=$1 rc $?"; grep -E "_gemm_rs_kernel|Duration|Registers Per|Warp Cycles Per Issued|inst_executed.sum|cycles_active.avg|stalled_(barrier|long_scoreboard|wait|short_scoreboard|math_pipe|mio|not_selected|dispatch|lg_throttle|no_instruction|branch|selected|sleeping|membar)" $out/ncu-m$1.txt | head -80
done
