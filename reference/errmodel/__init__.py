"""Error model: how far a correct kernel may be from the reference, element by element."""
from moecheck.reference.errmodel.budget import ErrorBudget
from moecheck.reference.errmodel.compare import Comparison, compare
from moecheck.reference.errmodel.table import budget_for

__all__ = ["ErrorBudget", "Comparison", "compare", "budget_for"]
