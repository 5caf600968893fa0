"""The pure-PyTorch reference MoE and its error model (the suite's oracle)."""
import os as _os

# One CPU result on every x86 host: MKL's AVX-512 sgemm sums K in an order that depends on K (a
# zero-padded K changed the last fp32 bit on an AVX-512 host, not on AVX2 ones), so a case found on one
# host could replay differently on another. MKL reads this at its first call; a user's setting wins.
_os.environ.setdefault("MKL_CBWR", "AVX2")
