"""Split-K stress check on the GPU: 20 repeated launches per case must all match float64 (python -m benchmarks.splitk_stress)."""
import torch, awq_compile.kernels.op
from awq_compile.kernels import triton_w4a16 as tw
from benchmarks.common import random_awq, dequant64, rel_err, AWQ
bad = 0
for K,N in ((4096,14336),(14336,4096),(4096,1024)):
    q,z,s = random_awq(K,N,128); st = AWQ.to_standard(q,z,s); w = dequant64(q,z,s)
    for M,cfg in ((5,dict(BLOCK_M=16,BLOCK_N=128,BLOCK_K=64,SPLIT_K=16,num_warps=4,num_stages=3)),
                  (16,dict(BLOCK_M=16,BLOCK_N=128,BLOCK_K=128,SPLIT_K=8,SCALE_AFTER=1,num_warps=4,num_stages=3)),
                  (64,dict(BLOCK_M=64,BLOCK_N=64,BLOCK_K=128,SPLIT_K=4,num_warps=4,num_stages=3)),
                  (1,dict(BLOCK_M=1,BLOCK_N=512,BLOCK_K=32,SPLIT_K=32,num_warps=4,num_stages=3))):
        kid = "triton_gemv" if M == 1 else "triton_gemm"
        x = torch.randn(M,K,dtype=torch.float16,device="cuda"); ref = x.double()@w
        out = torch.empty(M,N,dtype=torch.float16,device="cuda")
        for _ in range(20):
            tw.launch(kid,x,st.qweight,st.qzeros,st.scales,None,out,128,cfg)
            e = rel_err(out, ref)
            if e > 2e-3: bad += 1; print("BAD",K,N,M,e)
print("split-K stress done, bad:", bad)
