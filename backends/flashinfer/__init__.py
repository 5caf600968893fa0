"""FlashInfer MoE backends (flashinfer-python 0.7.2.post1), one module per kernel family.

Importing this package never imports flashinfer: every adapter looks FlashInfer up at call time, and
without it (or without CUDA) each backend reports itself unavailable with the reason. fused_topk_deepseek is a
router backend (routing.py). Quantizer comparisons, not backends, live in quant.py (GPU tests:
tests/backends/test_flashinfer_quant.py, test_flashinfer_kernels.py).
"""
from moecheck.backends.flashinfer import cute_dsl, cutlass, lora, mono, routing, trtllm

BACKENDS = [*cutlass.BACKENDS, *trtllm.BACKENDS, *cute_dsl.BACKENDS, *mono.BACKENDS, *lora.BACKENDS, *routing.BACKENDS]
