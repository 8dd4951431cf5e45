"""Storage: the schema, the engine and its transactions, links, meetings, secrets, the vault, migrations."""
