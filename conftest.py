pytest_plugins = ["moecheck.pytest_plugin"]
