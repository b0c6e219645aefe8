"""Development tools: `make run`'s supervisor, the demo, benchmarks and the example executor.

Production processes never import this package (an import-linter contract keeps it so)."""
