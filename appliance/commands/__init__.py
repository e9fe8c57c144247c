"""Command groups of the `appliance` CLI: one module per group, each with `register()`."""
