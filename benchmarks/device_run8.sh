#!/usr/bin/env bash
# Probe 8 (2026-12-03 evening): ACC_SCALE (the group scale applied to each K tile's fp32 partial instead of the
# decoded weight) next to every shipped register-operand entry it could replace, and 64-token x 128-column tiles with
# 8 warps (two warp groups sharing one x tile) at M = 64. Raw files in /tmp/p8; $OUT/probe8.tgz after every step.
set -o pipefail
out=$1; w=/tmp/p8; mkdir -p $w
export PYTHONUNBUFFERED=1
pack() { tar czf $out/probe8.tgz -C $w . ; }
echo "commit $(cat COMMIT 2>/dev/null) start $(date -u +%H:%M:%S)" | tee $w/meta.log
nvidia-smi --query-gpu=name,clocks.max.sm --format=csv,noheader | tee -a $w/meta.log
python3 -m pytest -q -n 8 tests/kernels/test_gemm_rs.py > $w/tests.log 2>&1; echo "tests rc $? t=$SECONDS"; tail -2 $w/tests.log; pack
S="--layout kplanes --stress 3"
python3 -m benchmarks.wide_sweep $S --ms 64 --dtypes float16,bfloat16 --configs \
64x64:4:4+64x64:4:4:a+64x64:4:3:a+64x64:4:4:d2:a+64x64:4:4:sk2+64x64:4:4:sk2:a+64x64:4:4:sk4+64x64:4:4:sk4:a+64x128:8:4+64x128:8:4:a+64x128:8:4:sk2+64x128:8:4:sk2:a \
  --json $w/m64.json > $w/m64.log 2>&1; echo "m64 t=$SECONDS"; grep "best" $w/m64.log; pack
python3 -m benchmarks.wide_sweep $S --ms 4,16,32 --configs \
8x128:4:3:ps3+8x128:4:3:ps3:a+16x128:4:3:ps3+16x128:4:3:ps3:a+32x128:4:3:ps2:u+32x128:4:3:ps2:a+32x64:4:4:ps3:u+32x64:4:4:ps3:a \
  --json $w/s.json > $w/s.log 2>&1; echo "small t=$SECONDS"; grep "best" $w/s.log; pack
python3 -m benchmarks.wide_sweep $S --ms 128,256 --configs \
128x128:8:4:u+128x128:8:4:a+128x128:8:4:sk2:u+128x128:8:4:sk2:a+256x128:8:3:u+256x128:8:3:a+64x64:4:4:sk2+64x64:4:4:sk2:a \
  --json $w/l.json > $w/l.log 2>&1; echo "large t=$SECONDS"; grep "best" $w/l.log; pack
if [ $SECONDS -lt 420 ]; then python3 -m benchmarks.wide_sweep $S --ms 64,128 --shapes 4096x6144,4096x4096,4096x11008,11008x4096,4096x1024 --configs \
64x64:4:4+64x64:4:4:a+64x64:4:4:sk2+64x64:4:4:sk2:a+64x64:4:4:sk4+64x64:4:4:sk4:a+64x128:8:4+64x128:8:4:a+128x128:8:4:u+128x128:8:4:a \
  --json $w/c.json > $w/c.log 2>&1; echo "classes t=$SECONDS"; grep "best" $w/c.log; pack; fi
if [ $SECONDS -lt 480 ]; then
  M='--metrics regex:smsp__average_warps_issue_stalled_.*_per_issue_active\.ratio,smsp__inst_executed.sum,sm__cycles_active.avg,launch__registers_per_thread'
  timeout 90 ncu --clock-control none -k regex:_gemm_rs --section SpeedOfLight --section SchedulerStats --section WarpStateStats $M \
    python3 -m benchmarks.wide_profile --shape 4096x14336 --ms 64 --configs 64x64:4:4,64x64:4:4:a,64x128:8:4:a > $w/ncu-m64.txt 2>&1
  echo "ncu rc $? t=$SECONDS"; grep -E "Duration|inst_executed.sum|cycles_active.avg|stalled_(long_scoreboard|wait|gmma|dispatch|not_selected|barrier)|Issued Warp|L2 Cache Thr" $w/ncu-m64.txt; pack
fi
