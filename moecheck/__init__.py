"""moecheck: numerical-correctness and regression suite for Mixture-of-Experts GPU kernels."""

__version__ = "0.1.0"
