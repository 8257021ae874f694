"""Evaluation: generation, sandboxed execution, benchmarks, reports."""
