"""Results store, dashboard and bisect support: what happened in each run, kept for trends and diffs.

Import the submodules directly (moecheck.ci.results.store etc.); nothing here imports torch.
"""
