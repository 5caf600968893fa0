"""Adapters to real MoE kernels, each with a capability record kept as data."""
from moecheck.backends.base import Availability, Backend, Capability, Limitation
from moecheck.backends.problem import MoEProblem
from moecheck.backends.registry import get, load_all, register

__all__ = ["Availability", "Backend", "Capability", "Limitation", "MoEProblem", "get", "load_all", "register"]
