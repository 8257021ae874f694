"""The configuration schema: one typed dataclass per node, registered in Hydra's ConfigStore.

conf/*.yaml hold values only; the composed configuration is validated against these classes while Hydra
composes it, so a misspelt key, a `+key=` that nothing reads or a value of the wrong type fails at once
(core/cli.py turns that into one line and exit 2). Checks that need several values at once or the file
system (batch divisibility, data paths, the tokenizer) run next, in train/config_checks.py, still before any
process group starts.

Defaults live here and nowhere else in the code; the YAML files repeat the ones a user is expected to read.
"""
import dataclasses
import os
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
    dim: int
    n_layers: int
    n_heads: int
    n_kv_heads: Optional[int]
    vocab_size: Optional[int]
    multiple_of: int = 256
    ffn_dim_multiplier: Optional[float] = None
    norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    max_seq_len: int = 4096

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
    name: str = "custom"


# --------------------------------------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------------------------------------

@dataclass
class FimConfig:
    """`data.fim`: infilling, paper §2.3 (docs/recipe.md#infilling)."""
    enabled: bool = False
    rate: float = 0.9          # share of eligible documents transformed (paper: 0.9)
    spm_rate: float = 0.5      # share of transformed documents in SPM (paper: half)
    bos: bool = True           # OPEN: BOS before <PRE>
    eos: bool = True           # OPEN: EOS after <EOT>
    max_deferred: int = 16     # packer: FIM documents waiting for a row with room (see data/packing.py)
    in_val: bool = False       # validation streams apply FIM too (default: plain next-token loss)


@dataclass
class SourceConfig:
    """`data.sources.<name>`: one named source of documents (local files or a hub dataset)."""
    weight: float = 1.0
    paths: Any = None                       # a glob or a list of globs (local .jsonl/.jsonl.gz/.parquet/text)
    hub: Any = None                         # a datasets id, or {path, name, split, data_files, data_dir, revision}
    val_paths: Any = None
    val_hub: Any = None
    text_field: str = "text"
    format: str = "text"                    # text | chat
    messages_field: str = "messages"        # chat rows: [{role, content}, ...] ...
    prompt_field: Optional[str] = None      # ... or one instruction / answer pair per row
    response_field: Optional[str] = None
    input_field: Optional[str] = None
    system_field: Optional[str] = None
    system_prompt: Optional[str] = None
    filters: Any = None                     # [{field, values | extensions}]
    file_format: str = "auto"               # auto | jsonl | jsonl.gz | parquet | text
    fim: bool = True                        # false: never FIM-transform this source's documents


@dataclass
class DataConfig:
    """`data`: a mixture from conf/data/ plus the stream's settings."""
    sources: Dict[str, SourceConfig] = field(default_factory=dict)
    seq_len: int = 4096
    seed: int = 0
    num_workers: int = 1
    prefetch_factor: int = 2
    max_doc_chars: int = 1_000_000
    strict: bool = False
    max_epochs: Optional[int] = None
    fim: FimConfig = field(default_factory=FimConfig)


@dataclass
class CorpusEntry:
    """`corpus.<name>`: where a named source's documents live (every mixture reads its locations here)."""
    paths: Any = None
    val_paths: Any = None
    hub: Any = None
    val_hub: Any = None
    text_field: str = "text"


# --------------------------------------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------------------------------------

@dataclass
class TrainerConfig:
    max_steps: int = 100
    batch_tokens: int = 16384
    micro_batch_size: int = 4
    checkpoint_every: int = 50
    keep_last: int = 2
    log_every: int = 10
    val_every: int = 50
    val_batches: int = 4
    activation_checkpointing: bool = False
    precision: str = "fp32"                     # fp32 | bf16
    loss_chunk_size: Optional[int] = None      # null = auto (train/engine_setup.py::loss_chunk_tokens)
    compile: Optional[bool] = None             # null = true on CUDA, false on CPU
    intra_document_attention: bool = False
    max_nonfinite_in_row: int = 5
    peak_flops_per_device: Optional[float] = None
    export_dtype: str = "fp32"                  # fp32 | bf16
    allow_config_change: bool = False
    progress_bar: str = "auto"                  # auto | true | false


@dataclass
class OptimConfig:
    impl: str = "torch"                         # torch | deepspeed
    lr: float = 3.0e-4
    betas: List[float] = field(default_factory=lambda: [0.9, 0.95])
    eps: float = 1.0e-5
    weight_decay: float = 0.1
    grad_clip: float = 1.0
    schedule: str = "cosine"                    # cosine | linear | constant
    warmup_steps: int = 10
    final_lr_ratio: float = 1 / 30


@dataclass
class WandbConfig:
    mode: str = "offline"                       # online | offline | disabled
    project: str = "codellama-recipe"
    entity: Optional[str] = None
    group: Optional[str] = None
    job_type: Optional[str] = None
    name: Optional[str] = None


@dataclass
class StageInfo:
    """`stage`: set by conf/stage/<name>.yaml."""
    name: str = "custom"
    token_budget: Optional[int] = None          # tokens the paper trains this stage on (steps derive from it)


@dataclass
class RecipeConfig:
    """`recipe`: the paper's size-dependent numbers (conf/recipe/<model>.yaml), read by the stage files."""
    infilling: bool = False
    code_tokens: int = 500_000_000_000          # token budget of the code stage (70B: 1T)
    code_lr: float = 3.0e-4
    lcft_batch_tokens: int = 2097152
    lcft_steps: int = 10000
    lcft_steps_python: int = 10000
    micro_batch_size: int = 1
    lcft_micro_batch_size: int = 1


@dataclass
class TrainConfig:
    """codellama-train (conf/train.yaml)."""
    seed: int = 0
    run_dir: str = "runs/custom"
    cache_dir: str = "~/.cache/codellama-recipe"
    tokenizer_path: Optional[str] = None
    init_from: Optional[str] = None
    corpus: Dict[str, CorpusEntry] = field(default_factory=dict)
    model: ModelNode = MISSING                  # conf/model/<preset>.yaml
    recipe: RecipeConfig = field(default_factory=RecipeConfig)
    stage: StageInfo = field(default_factory=StageInfo)
    data: DataConfig = field(default_factory=DataConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    wandb: WandbConfig = field(default_factory=WandbConfig)
    deepspeed: Dict[str, Any] = field(default_factory=dict)   # passed to DeepSpeed (its own keys)


# --------------------------------------------------------------------------------------------------------
# Pipeline
# --------------------------------------------------------------------------------------------------------

@dataclass
class PipelineDef:
    """`pipeline`: conf/pipeline/<name>.yaml."""
    name: str = "custom"
    model: str = "tiny"                         # a conf/model preset, for every stage
    init_from: Optional[str] = None             # the first stage's weights (null = random init)
    order: List[str] = field(default_factory=list)


@dataclass
class PipelineWandb:
    mode: str = "offline"
    project: str = "codellama-recipe"
    entity: Optional[str] = None
    group: Optional[str] = None                 # null: "<pipeline.name>-<basename of run_dir>"


@dataclass
class PipelineEval:
    enabled: bool = True
    preset: Optional[str] = "fast"              # conf/eval/<preset>.yaml on top of conf/eval.yaml
    overrides: Dict[str, Any] = field(default_factory=dict)


@dataclass
class PipelineRunConfig:
    """codellama-pipeline (conf/run_pipeline.yaml). `stages.<name>` holds, per stage, `groups` (config
    groups such as {stage: code}) and codellama-train keys; those are checked against TrainConfig when the
    stage's config is composed."""
    run_dir: str = "runs/custom"
    seed: int = 0
    cache_dir: str = "~/.cache/codellama-recipe"
    common: List[str] = field(default_factory=list)
    restart: List[str] = field(default_factory=list)
    wandb: PipelineWandb = field(default_factory=PipelineWandb)
    eval: PipelineEval = field(default_factory=PipelineEval)
    pipeline: PipelineDef = field(default_factory=PipelineDef)
    stages: Dict[str, Any] = field(default_factory=dict)


# --------------------------------------------------------------------------------------------------------
# Evaluation
# --------------------------------------------------------------------------------------------------------

@dataclass
class GenerationConfig:
    n_samples: int = 1
    temperature: float = 0.0
    top_p: float = 0.95
    max_new_tokens: int = 512
    ks: List[int] = field(default_factory=lambda: [1, 10, 100])


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
    network: str = "isolate"         # isolate: own netns when possible | require: fail if impossible | allow
    user: Any = "auto"               # auto: dedicated uids when root | none | an int uid base
    uid_base: int = 64000            # dedicated uids uid_base .. uid_base+workers-1 (root only)
    python: Optional[str] = None     # interpreter for programs; None = auto (must be usable by the uid)
    tmp_root: Optional[str] = None   # where sandbox directories are made (default: system temp dir)

    @property
    def n_workers(self) -> int:
        return self.workers or os.cpu_count() or 1


@dataclass
class HumanEvalConfig:
    path: Optional[str] = None
    limit: Optional[int] = None
    stop: List[str] = field(default_factory=lambda: ["\ndef", "\nclass", "\nif", "\nprint", "\n#"])


@dataclass
class MbppConfig:
    path: Optional[str] = None
    limit: Optional[int] = None
    shot_ids: List[int] = field(default_factory=lambda: [2, 3, 4])
    task_range: Optional[List[int]] = field(default_factory=lambda: [11, 510])


@dataclass
class InfillingConfig:
    dir: Optional[str] = None
    paths: Dict[str, str] = field(default_factory=dict)
    modes: List[str] = field(default_factory=lambda: ["psm", "spm"])
    limit: Optional[int] = None
    max_new_tokens: int = 256


@dataclass
class KeyRetrievalConfig:
    lengths: List[int] = field(default_factory=lambda: [2048, 4096, 8192, 16384])
    positions: List[float] = field(default_factory=lambda: [0.0, 0.25, 0.5, 0.75, 1.0])
    n_examples: int = 64
    max_new_tokens: int = 4
    source: str = "python"
    splits: List[str] = field(default_factory=lambda: ["val", "train"])
    files: Any = None
    max_files: int = 500
    limit: Optional[int] = None


@dataclass
class PerplexityConfig:
    context_lengths: List[int] = field(default_factory=lambda: [256, 512, 1024, 2048, 4096, 8192, 16384])
    min_bytes: int = 50000
    max_files: int = 8
    chunk_size: int = 2048
    source: str = "python"
    splits: List[str] = field(default_factory=lambda: ["val", "train"])
    files: Any = None
    limit: Optional[int] = None


@dataclass
class CorpusInfillingConfig:
    modes: List[str] = field(default_factory=lambda: ["psm", "spm", "ar"])
    source: str = "code"
    splits: List[str] = field(default_factory=lambda: ["val"])
    files: Any = None
    max_files: int = 48
    max_chars: int = 8000
    max_tokens: Optional[int] = None
    spans_per_doc: int = 4
    max_span_lines: int = 8
    lines_per_doc: int = 3
    max_new_tokens: int = 64
    limit: Optional[int] = None


@dataclass
class MultiplEConfig:
    """`multipl_e`: HumanEval translated into other languages (evaluation/multipl_e.py)."""
    languages: List[str] = field(default_factory=lambda: ["cpp", "java", "php", "cs", "ts", "sh"])
    path: Any = None                 # MultiPL-E jsonl rows: a file, a folder or a list of them (null = translate)
    limit: Optional[int] = None      # problems per language
    sampled_n: int = 0               # > 0: also sampled completions per problem for pass@k
    temperature: float = 0.8
    top_p: float = 0.95
    compile_s: Dict[str, Optional[float]] = field(default_factory=dict)   # per language; null = toolchains.py's
    run_s: Dict[str, Optional[float]] = field(default_factory=dict)
    memory_mb: Dict[str, Optional[int]] = field(default_factory=dict)


@dataclass
class EvalWandb:
    mode: str = "disabled"
    project: str = "codellama-recipe"
    entity: Optional[str] = None
    group: Optional[str] = None
    name: Optional[str] = None


@dataclass
class ReportConfig:
    enabled: bool = True
    compare: List[str] = field(default_factory=list)


@dataclass
class EvalConfig:
    """codellama-eval (conf/eval.yaml)."""
    model_path: Optional[str] = None
    tokenizer_path: Optional[str] = None
    label: Optional[str] = None
    out_dir: str = "eval_results"
    cache_dir: str = "~/.cache/codellama-recipe"
    benchmarks: List[str] = field(default_factory=list)
    limit: Optional[int] = None
    skip_missing: bool = True
    seed: int = 0
    device: str = "auto"
    dtype: str = "float32"
    batch_size: int = 8
    samples: Optional[str] = None
    benchmark: Optional[str] = None
    report_from: Optional[List[str]] = None
    generation: GenerationConfig = field(default_factory=GenerationConfig)
    sandbox: SandboxConfig = field(default_factory=SandboxConfig)
    humaneval: HumanEvalConfig = field(default_factory=HumanEvalConfig)
    mbpp: MbppConfig = field(default_factory=MbppConfig)
    infilling: InfillingConfig = field(default_factory=InfillingConfig)
    key_retrieval: KeyRetrievalConfig = field(default_factory=KeyRetrievalConfig)
    perplexity: PerplexityConfig = field(default_factory=PerplexityConfig)
    corpus_infilling: CorpusInfillingConfig = field(default_factory=CorpusInfillingConfig)
    multipl_e: MultiplEConfig = field(default_factory=MultiplEConfig)
    wandb: EvalWandb = field(default_factory=EvalWandb)
    report: ReportConfig = field(default_factory=ReportConfig)


# --------------------------------------------------------------------------------------------------------
# Ablations
# --------------------------------------------------------------------------------------------------------

@dataclass
class AblateArm:
    """`arms.<name>`: one ordinary training stage of an ablation. Its codellama-train keys are the shared
    `settings.<settings>` with `set` (dotted keys: what this arm changes) on top; it starts from the export of
    the arm `parent` (null: the same random init as every other root arm)."""
    parent: Optional[str] = None
    settings: str = MISSING
    set: Dict[str, Any] = field(default_factory=dict)
    measure: List[str] = field(default_factory=list)   # what codellama-ablate measures on its export
    curve: bool = False   # also measure its infill:/exact: entries at eval.curve_fractions of its steps (checkpoints)


@dataclass
class AblateScale:
    """`scale`: the sizes of one ablation preset (conf/ablate/<preset>.yaml); the arms read them."""
    model: Dict[str, Any] = field(default_factory=dict)   # conf/model/tiny keys changed for every arm
    seq_len: int = 512                  # T, the base training length
    long_factor: int = 4                # LCFT trains at long_factor × T
    batch_tokens: int = 8192
    micro_batch_size: int = 8
    long_micro_batch_size: int = 2
    general_steps: int = 100            # the general base model every twin continues from
    general_lr: float = 2.0e-3
    base_steps: int = 100               # each twin
    base_lr: float = 2.0e-3
    base_warmup_steps: int = 10
    base_max_doc_chars: int = 1_000_000
    continue_steps: int = 30
    continue_lr: float = 1.0e-3
    continue_warmup_steps: int = 5
    checkpoint_every: int = 25
    log_every: int = 5


@dataclass
class AblateEval:
    """`eval`: how much held-out data each measurement reads (conf/ablate/<preset>.yaml)."""
    infill_docs: int = 64               # pieces of the held-out infilling set (the corpus's infilling/heldout) that
                                        # fit in T
    curve_fractions: List[float] = field(default_factory=lambda: [0.125, 0.25, 0.5, 1.0])  # learning-curve points
    spans_per_doc: int = 4              # random whole-line middles per file (infilling loss)
    max_span_lines: int = 8
    lines_per_doc: int = 2              # single lines removed per file (exact match)
    max_new_tokens: int = 48
    val_docs_per_source: int = 48       # left-to-right loss: held-out documents per source ...
    val_windows_per_doc: int = 2        # ... read in windows of T tokens, at most this many per document
    ppl_sources: List[str] = field(default_factory=lambda: ["python", "code"])
    ppl_files: int = 16                 # held-out files with at least 16T tokens
    ppl_length_factors: List[float] = field(default_factory=lambda: [0.25, 0.5, 1, 2, 4, 8, 16])
    retrieval_length_factors: List[int] = field(default_factory=lambda: [1, 2, 4, 8])
    retrieval_positions: List[float] = field(default_factory=lambda: [0.0, 0.5, 1.0])
    retrieval_examples: int = 8
    batch_size: int = 16
    bootstrap_samples: int = 1000
    device: str = "cpu"                 # where the measurements run: cpu | cuda | auto (cuda when available)


@dataclass
class AblateConfig:
    """codellama-ablate (conf/ablate.yaml)."""
    run_dir: str = "runs/ablate"
    seed: int = 0
    more_seeds: List[int] = field(default_factory=list)   # training seeds for every arm below the general base
    cache_dir: str = "~/.cache/codellama-recipe"
    common: List[str] = field(default_factory=list)   # codellama-train overrides for every arm
    wandb: PipelineWandb = field(default_factory=PipelineWandb)
    preset: str = "full"
    scale: AblateScale = field(default_factory=AblateScale)
    eval: AblateEval = field(default_factory=AblateEval)
    settings: Dict[str, Any] = field(default_factory=dict)
    code_pieces: Dict[str, Any] = field(default_factory=dict)   # `corpus` keys of the general base and the twins
    # each value is an AblateArm, checked by stages/ablate/arms.py (a typed Dict[str, AblateArm] refuses an arm
    # added on the command line, +arms.<name>={...}, before its keys could be checked)
    arms: Dict[str, Any] = field(default_factory=dict)


# --------------------------------------------------------------------------------------------------------
# Self-instruct
# --------------------------------------------------------------------------------------------------------

@dataclass
class SelfInstructGenerator:
    kind: str = "endpoint"                      # endpoint | local
    url: str = "http://127.0.0.1:8000"
    model: str = "codellama"
    api_key_env: Optional[str] = None
    concurrency: int = 8
    timeout_s: float = 120.0
    retries: int = 4
    model_path: Optional[str] = None
    device: str = "auto"
    dtype: str = "float32"
    batch_size: int = 8


@dataclass
class SelfInstructStep:
    prompt: str = MISSING
    max_new_tokens: int = 512
    temperature: float = 0.0
    top_p: float = 1.0
    batches: int = 1                            # questions only: prompts sent
    path: Optional[str] = None                  # questions only: a file of questions instead (one per line)
    n: int = 1                                  # solutions only: per question


@dataclass
class SelfInstructDecontamination:
    enabled: bool = True
    ngram: int = 6
    threshold: float = 0.5
    humaneval_path: Optional[str] = None
    mbpp_path: Optional[str] = None


@dataclass
class SelfInstructOutput:
    user_template: str = "{question}"
    answer_template: str = "[PYTHON]\n{solution}\n[/PYTHON]"
    with_tests: bool = False
    tests_template: str = "\n[TESTS]\n{tests}\n[/TESTS]"


@dataclass
class SelfInstructConfig:
    """codellama-selfinstruct (conf/selfinstruct.yaml)."""
    out_dir: str = "runs/selfinstruct"
    seed: int = 0
    chunk: int = 16
    generator: SelfInstructGenerator = field(default_factory=SelfInstructGenerator)
    questions: SelfInstructStep = field(default_factory=SelfInstructStep)
    tests: SelfInstructStep = field(default_factory=SelfInstructStep)
    solutions: SelfInstructStep = field(default_factory=SelfInstructStep)
    decontamination: SelfInstructDecontamination = field(default_factory=SelfInstructDecontamination)
    sandbox: SandboxConfig = field(default_factory=SandboxConfig)
    output: SelfInstructOutput = field(default_factory=SelfInstructOutput)


@dataclass
class PrepareInput:
    paths: list = field(default_factory=list)       # local .jsonl / .jsonl.gz / .parquet files or globs
    hub: Optional[str] = None                       # a hub dataset id read streamed (bigcode/the-stack-dedup)
    hub_split: str = "train"
    hub_limit: Optional[int] = None
    text_key: str = "content"                       # the-stack: content; plain corpora: text
    lang_key: str = "lang"
    path_key: str = "max_stars_repo_path"


@dataclass
class PrepareFilters:
    max_avg_line_length: float = 100.0              # StarCoder / The Stack: out above
    max_line_length: int = 1000                     # out above
    min_alnum_fraction: float = 0.25                # out below
    autogenerated: bool = True                      # "auto-generated" / "do not edit" in the first 5 lines
    data_file_max_chars: int = 100000               # json / yaml (StarCoder: 50-5000 chars for YAML/JSON)
    data_file_min_chars: int = 50
    csv_max_chars: int = 100000
    nl_min_words: int = 20                          # the light NL quality filter
    nl_min_alpha_word_fraction: float = 0.7


@dataclass
class PrepareDedup:
    exact: bool = True
    near: bool = True
    ngram: int = 5                                  # word 5-grams (StarCoder / BigCode near-dedup)
    num_buckets: int = 14                           # 14 x 8 = 112 hashes: threshold ~0.72 (bands formula)
    hashes_per_bucket: int = 8


@dataclass
class PrepareDecontamination:
    enabled: bool = True
    ngram: int = 10
    paths: list = field(default_factory=list)       # jsonl files with prompt / canonical_solution / code / text


@dataclass
class PrepareExecutor:
    kind: str = "local"                             # local | slurm
    tasks: int = 1
    workers: int = 1
    partition: str = "cpu"
    time: str = "12:00:00"
    cpus_per_task: int = 1
    mem_per_cpu_gb: int = 2


@dataclass
class PrepareConfig:
    """codellama-prepare (conf/prepare.yaml; docs/prepare.md)."""
    out_dir: str = "runs/prepare"
    input: PrepareInput = field(default_factory=PrepareInput)
    routes: dict = field(default_factory=dict)      # source -> {langs: [...], extensions: [...]}
    default_source: Optional[str] = "code"
    heldout_share: float = 0.01
    shard_docs: int = 10000
    filters: PrepareFilters = field(default_factory=PrepareFilters)
    dedup: PrepareDedup = field(default_factory=PrepareDedup)
    decontamination: PrepareDecontamination = field(default_factory=PrepareDecontamination)
    executor: PrepareExecutor = field(default_factory=PrepareExecutor)
    tokenizer: Optional[str] = None
    examples_per_reason: int = 3


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
