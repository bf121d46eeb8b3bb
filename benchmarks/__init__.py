"""One script per kernel or pipeline; each writes JSON and can plot it (benchmarks/results/)."""
