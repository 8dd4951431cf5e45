"""The plugin side of the core: the backend interface, hook specs, the plugin manager, vendor HTTP, tokens."""
