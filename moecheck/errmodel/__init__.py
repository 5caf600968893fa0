"""Error model: how far a correct kernel may be from the reference, element by element."""
from moecheck.errmodel.budget import ErrorBudget
from moecheck.errmodel.compare import Comparison, compare
from moecheck.errmodel.table import budget_for

__all__ = ["ErrorBudget", "Comparison", "compare", "budget_for"]
