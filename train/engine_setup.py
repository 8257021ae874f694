"""Process group, model construction and `deepspeed.initialize` from a conf/deepspeed preset.

Without a GPU everything runs on the CPU with the gloo backend (one or several processes, e.g. torchrun);
with GPUs, one process per GPU with NCCL. The optimizer is a client `torch.optim.AdamW` (no JIT-compiled
DeepSpeed op), unless `optim.impl=deepspeed` asks DeepSpeed to build its own (FusedAdam / CPUAdam).
"""
from __future__ import annotations

import copy
import dataclasses
import os
from dataclasses import dataclass, field

import torch
import torch.distributed as dist

from codellama_recipe.core.errors import InputError
from codellama_recipe.core.schema import TrainConfig
from codellama_recipe.train.config_checks import RunPlan
from codellama_recipe.train.model import Llama, ModelConfig
from codellama_recipe.train.optim import build_optimizer, param_groups

# Shape-defining fields: a checkpoint that differs in one of these cannot initialise the configured model.
ARCHITECTURE_KEYS = ("dim", "n_layers", "n_heads", "kv_heads", "hidden_dim")


def device_and_backend() -> tuple[torch.device, str]:
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0"))), "nccl"
    os.environ.setdefault("DS_ACCELERATOR", "cpu")
    return torch.device("cpu"), "gloo"


def init_distributed(backend: str, timeout_s: float) -> tuple[int, int]:
    """(rank, world_size). Reuses a process group that already exists (a pipeline running several stages).
    Every collective of the group times out after `timeout_s` seconds (trainer.collective_timeout_s)."""
    from datetime import timedelta

    import deepspeed

    from codellama_recipe.train.peers import apply_collective_timeout

    for key, default in (("RANK", "0"), ("WORLD_SIZE", "1"), ("LOCAL_RANK", "0"),
                         ("MASTER_ADDR", "127.0.0.1")):
        os.environ.setdefault(key, default)
    if "MASTER_PORT" not in os.environ:
        os.environ["MASTER_PORT"] = str(_free_port())
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
    if not dist.is_initialized():
        if backend == "gloo":
            from codellama_recipe.train.extension_builds import prepare_cpu_comm_op

            prepare_cpu_comm_op(log=lambda msg: print(f"[train] rank {os.environ['RANK']}: {msg}", flush=True))
        deepspeed.init_distributed(dist_backend=backend, verbose=False, timeout=timedelta(seconds=float(timeout_s)))
    apply_collective_timeout(timeout_s)
    return dist.get_rank(), dist.get_world_size()


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def shutdown_distributed() -> None:
    """Destroy the process group (a rank that exits with it alive may abort in gloo's destructor)."""
    from codellama_recipe.train.peers import stop_watch

    stop_watch()
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


# --------------------------------------------------------------------------------------------------------
# Model
# --------------------------------------------------------------------------------------------------------

@dataclass
class ModelSetup:
    config: ModelConfig
    state_dict: dict | None = None          # pretrained weights (init_from), already adapted
    notes: list[str] = field(default_factory=list)


def configured_model(cfg: TrainConfig, vocab_size: int) -> ModelConfig:
    d = dataclasses.asdict(cfg.model)
    if d.get("vocab_size") is None:
        d["vocab_size"] = vocab_size
    d["max_seq_len"] = max(int(d.get("max_seq_len") or 0), int(cfg.data.seq_len))
    return ModelConfig.from_dict(d).validate()


def prepare_model(cfg: TrainConfig, vocab_size: int, load_weights: bool = True) -> ModelSetup:
    """The run's ModelConfig, and the init_from weights adapted to it (vocab grown, RoPE base from config).

    load_weights=False (resuming from a checkpoint) only reads what is needed to build the same model."""
    model_cfg = configured_model(cfg, vocab_size)
    setup = ModelSetup(model_cfg)
    if not cfg.init_from:
        return setup
    from codellama_recipe.train.pretrained import load_pretrained
    from codellama_recipe.train.weight_formats import grow_vocab

    ckpt_cfg, state_dict = load_pretrained(str(cfg.init_from))
    for key in ARCHITECTURE_KEYS:
        ours, theirs = getattr(model_cfg, key), getattr(ckpt_cfg, key)
        if ours != theirs:
            raise InputError(f"model.{key}", ours,
                              f"init_from {cfg.init_from} has {key}={theirs}; choose the model= preset that "
                              f"matches the checkpoint (architecture {ckpt_cfg.to_dict()})")
    if ckpt_cfg.norm_eps != model_cfg.norm_eps:
        setup.notes.append(f"norm_eps: using the checkpoint's {ckpt_cfg.norm_eps} (config says {model_cfg.norm_eps})")
        model_cfg.norm_eps = ckpt_cfg.norm_eps
    if ckpt_cfg.rope_theta != model_cfg.rope_theta:
        setup.notes.append(f"rope_theta: {ckpt_cfg.rope_theta:g} in {cfg.init_from} -> {model_cfg.rope_theta:g} "
                           f"(model.rope_theta from the config)")
    if ckpt_cfg.vocab_size < model_cfg.vocab_size:
        setup.notes.append(f"vocab_size: {ckpt_cfg.vocab_size} in the checkpoint -> {model_cfg.vocab_size} "
                           f"(grow_vocab: new rows = mean embedding)")
        if load_weights:
            state_dict = grow_vocab(state_dict, model_cfg.vocab_size)
    elif ckpt_cfg.vocab_size > model_cfg.vocab_size:
        setup.notes.append(f"vocab_size: keeping the checkpoint's {ckpt_cfg.vocab_size} "
                           f"(> {model_cfg.vocab_size} of the tokenizer/config)")
        model_cfg.vocab_size = ckpt_cfg.vocab_size
    setup.state_dict = state_dict if load_weights else None
    return setup


AUTO_LOSS_CHUNK_TOKENS = 8192
AUTO_LOSS_CHUNK_ABOVE_BYTES = 1 << 30


def loss_chunk_tokens(configured: int | None, micro_batch_tokens: int, vocab_size: int) -> int:
    """trainer.loss_chunk_size as used: as configured, or (null) chunks of 8,192 tokens when one micro-batch's
    fp32 logits would take more than 1 GiB, where never materialising them pays; 0 means the plain loss."""
    if configured is not None:
        return int(configured)
    return AUTO_LOSS_CHUNK_TOKENS if micro_batch_tokens * vocab_size * 4 > AUTO_LOSS_CHUNK_ABOVE_BYTES else 0


def compile_wanted(configured: bool | None, device: torch.device) -> bool:
    return bool(configured) if configured is not None else device.type == "cuda"


def compile_blocks(model: Llama) -> None:
    """torch.compile each transformer block in place (the module DeepSpeed wraps keeps its hooks and parameters).
    The blocks differ only in their int layer_idx: dynamo may treat it as dynamic (one graph for all), and gets a
    recompile per block where that is not honoured (with the default limit of 8, later blocks ran eager)."""
    torch._dynamo.config.allow_unspec_int_on_nn_module = True
    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 2 * len(model.layers))
    for layer in model.layers:
        layer.compile()


def uncompile_blocks(model: Llama) -> None:
    for layer in model.layers:
        layer._compiled_call_impl = None
    torch._dynamo.reset()


def is_compile_failure(error: BaseException) -> bool:
    """An error raised by torch.compile's machinery (dynamo, AOT autograd, inductor, a C++ compiler it ran)."""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        module = type(error).__module__ or ""
        if module.startswith(("torch._dynamo", "torch._inductor", "torch._functorch", "torch.fx")):
            return True
        error = error.__cause__ or error.__context__
    return False


def build_model(setup: ModelSetup, *, seed: int, activation_checkpointing: bool) -> Llama:
    torch.manual_seed(seed)  # the same random init on every rank
    model = Llama(setup.config, activation_checkpointing=activation_checkpointing)
    if setup.state_dict is not None:
        model.load_state_dict(setup.state_dict, strict=True)
        setup.state_dict = None
    return model


# --------------------------------------------------------------------------------------------------------
# DeepSpeed
# --------------------------------------------------------------------------------------------------------

def deepspeed_config(cfg: TrainConfig, plan: RunPlan) -> dict:
    """The preset (conf/deepspeed/<name>.yaml) plus the values derived from trainer/optim."""
    ds = copy.deepcopy(cfg.deepspeed)
    guard = plan.zero_stage == 0 and plan.precision == "fp32"
    ds.update({
        "train_micro_batch_size_per_gpu": plan.micro_batch_size,
        "gradient_accumulation_steps": plan.grad_accum,
        "train_batch_size": plan.micro_batch_size * plan.grad_accum * plan.world_size,
        # ZeRO stage 0 in fp32: the client optimizer clips (see train.optim.GuardedAdamW).
        "gradient_clipping": 0.0 if guard else float(cfg.optim.grad_clip),
        "bf16": {"enabled": plan.precision == "bf16"},
        "steps_per_print": 2 ** 62,
        "wall_clock_breakdown": False,
        "zero_allow_untested_optimizer": True,
    })
    zero = ds.setdefault("zero_optimization", {})
    if zero.get("offload_optimizer") or zero.get("offload_param"):
        ds["zero_force_ds_cpu_optimizer"] = False
    if cfg.optim.impl == "deepspeed":
        # A preset may add DeepSpeed optimizer options (e.g. deepspeed.optimizer.params.torch_adam=true).
        preset = ds.get("optimizer") or {}
        ds["optimizer"] = {"type": preset.get("type", "AdamW"), "params": {
            **(preset.get("params") or {}),
            "lr": float(cfg.optim.lr), "betas": [float(b) for b in cfg.optim.betas], "eps": float(cfg.optim.eps),
            "weight_decay": float(cfg.optim.weight_decay)}}
    else:
        ds.pop("optimizer", None)
    return ds


def build_engine(cfg: TrainConfig, plan: RunPlan, model: Llama, device: torch.device):
    """(engine, optimizer whose param_groups carry the learning rate)."""
    import deepspeed

    ds_config = deepspeed_config(cfg, plan)
    offload = bool(ds_config["zero_optimization"].get("offload_optimizer"))
    if "optimizer" in ds_config:
        engine, optimizer, _, _ = deepspeed.initialize(
            model=model, model_parameters=param_groups(model, float(cfg.optim.weight_decay)), config=ds_config)
        return engine, optimizer
    guard = plan.zero_stage == 0 and plan.precision == "fp32"
    fused = device.type == "cuda" and not offload  # checked at step time, on the (moved) fp32 partitions
    client = build_optimizer(model, cfg.optim, guard=guard, fused=fused)
    engine, _, _, _ = deepspeed.initialize(model=model, optimizer=client, config=ds_config)
    return engine, client
