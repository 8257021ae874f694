"""The demo's own data: a corpus built from files already on the machine (corpus.py, with instruction pairs mined
from docstrings by instruct_mining.py) and a tokenizer trained on it, both built once under the cache directory
on first use (cache.py). Nothing here is needed to train on a user's data."""
