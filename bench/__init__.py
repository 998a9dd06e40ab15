"""batchrun's benchmark suite (issue 7): `python -m bench` or `make bench`; figures in docs/benchmarks.md."""
