"""Pages for a person in a browser: install routes, the settings page, sessions and templates."""
