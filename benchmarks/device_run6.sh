#!/usr/bin/env bash
# (kept as run: .devcarry/probe6.sh on 2026-12-03 11:10 UTC; PEERS = .peers, a carried folder)
# Probe 6 (2026-12-03): UNROLL (the ring unrolled by its depth) against the shipped register-operand entries.
set -o pipefail
out=$1
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,clocks.max.sm --format=csv,noheader
python3 -m pytest -q -n 8 tests/kernels/test_gemm_rs.py 2>&1 | tail -5 | tee $out/tests.log
S="--layout kplanes --stress 3"
python3 -m benchmarks.wide_sweep $S --ms 64,128,256 --configs \
64x64:4:4+64x64:4:4:u+64x64:4:3:u+64x64:4:5:u+64x64:4:4:sk2+64x64:4:4:sk2:u+64x64:4:4:sk4+64x64:4:4:sk4:u+128x128:8:4+128x128:8:4:u+128x128:8:3:u+128x128:8:4:sk2+128x128:8:4:sk2:u+256x128:8:3+256x128:8:3:u \
  --json $out/g.json > $out/g.log 2>&1; tail -12 $out/g.log
python3 -m benchmarks.wide_sweep $S --ms 16,32 --configs \
16x128:4:3:ps3+16x128:4:3:ps3:u+16x128:4:4:ps2:u+32x128:4:3:ps2+32x128:4:3:ps2:u+32x64:4:4:ps3+32x64:4:4:ps3:u \
  --json $out/s.json > $out/s.log 2>&1; tail -8 $out/s.log
python3 -m benchmarks.wide_sweep $S --ms 1024 --configs 256x128:8:3+256x128:8:3:u+128x128:8:4:u+128x128:8:3:u \
  --json $out/l.json > $out/l.log 2>&1; tail -5 $out/l.log
python3 -m benchmarks.wide_sweep $S --ms 64,128,256 --shapes 4096x6144,4096x4096,4096x11008,11008x4096,4096x1024 --configs \
64x64:4:4+64x64:4:4:u+64x64:4:4:sk2+64x64:4:4:sk2:u+64x64:4:4:sk4+64x64:4:4:sk4:u+128x128:8:4+128x128:8:4:u+128x128:8:4:sk2+128x128:8:4:sk2:u \
  --json $out/c.json > $out/c.log 2>&1; tail -16 $out/c.log
python3 -m benchmarks.wide_sweep $S --ms 64,256 --dtypes bfloat16 --shapes 4096x14336 --configs \
64x64:4:4+64x64:4:4:u+128x128:8:4:u+256x128:8:3+256x128:8:3:u --json $out/b.json > $out/b.log 2>&1; tail -3 $out/b.log
cd $out && tar czf probe6.tgz *.log *.json && rm -f *.json
