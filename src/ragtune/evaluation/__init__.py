"""Evaluation: answer and decomposition metrics shared by the benchmarks and `ragtune bench`."""
