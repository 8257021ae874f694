"""Model, checkpoint interoperability and the training engine.

Importing the package registers the small OmegaConf resolvers the configs use (for example
``${ceil_div:${stage.token_budget},${trainer.batch_tokens}}`` turns a token budget into a step count).
Without omegaconf (e.g. a bare GPU box running bench/gpu_train.py) the model still imports.
"""
try:
    from omegaconf import OmegaConf
except ImportError:  # pragma: no cover - only on machines without the config stack
    OmegaConf = None


def _ceil_div(a, b) -> int:
    a, b = int(float(a)), int(float(b))
    return -(-a // b)


if OmegaConf is not None and not OmegaConf.has_resolver("ceil_div"):
    OmegaConf.register_new_resolver("ceil_div", _ceil_div)
