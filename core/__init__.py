"""The bottom layer: errors, the configuration schema and loading, atomic writes, JSONL helpers.

Nothing here imports from data, train, evaluation or stages.
"""
