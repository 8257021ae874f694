"""codellama_recipe: Meta's Code Llama training recipe as chained, resumable DeepSpeed stages.

The repository's top-level folders are this package's subpackages (setup.cfg maps them), layered so that
imports run one way: core < data < train < evaluation < stages.
"""
__version__ = "0.2.0"
