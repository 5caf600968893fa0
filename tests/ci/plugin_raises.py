"""A plugin that imports and raises: `moecheck run --plugin` must say so in one line, exit 2."""
raise RuntimeError("this plugin is broken on purpose")
