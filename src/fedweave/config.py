"""Typed, validated configuration (pydantic), from YAML or Python, with overrides.

A config is a tree of sections (``data``, ``model``, ``task``, ``method``, ``client``,
``schedule``, ``system``, ``eval``, ``executor``, ``output``). Unknown keys are rejected
with the list of allowed ones, so a typo never silently does nothing. ``--set key=value``
overrides use dotted keys and parse the value as YAML (``--set client.lr=0.1``,
``--set model.hidden=[64,64]``).

The defaults are the built-in quickstart: digits, 20 clients, Dirichlet 0.5, an MLP,
FedAvg with 10 clients per round for 30 rounds.
"""

from __future__ import annotations

import copy
import types
from pathlib import Path
from typing import Any, Literal, Optional, Union, get_args, get_origin

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .core.errors import ConfigError


def _bool_where_number(annotation: Any, value: Any) -> bool:
    """Whether ``value`` holds a YAML boolean where ``annotation`` wants a number.

    Pydantic's lax mode turns ``true`` into 1 (``schedule.rounds: true`` would run one
    round); a count or a rate written as a boolean is a mistake, so it is refused."""
    if annotation is Any or annotation is bool:
        return False
    origin, args = get_origin(annotation), get_args(annotation)
    if isinstance(value, bool):
        if origin in (Union, types.UnionType):
            return not any(a is bool or a is Any for a in args)
        return annotation in (int, float) or origin is Literal
    if origin in (Union, types.UnionType):
        return value is not None and all(_bool_where_number(a, value) for a in args if a is not type(None))
    if origin in (list, tuple) and isinstance(value, (list, tuple)) and args:
        return any(_bool_where_number(args[0], v) for v in value)
    return False


class _StrictNumbers:
    """Field check shared by every section: no NaN/infinity, no booleans as numbers."""

    @field_validator("*", mode="before")
    @classmethod
    def _no_bool_numbers(cls, value, info):
        field = cls.model_fields.get(info.field_name)
        if field is not None and _bool_where_number(field.annotation, value):
            raise ValueError(f"must be {_allowed_numbers(field)}, not a boolean")
        return value


def _allowed_numbers(field) -> str:
    """'an integer >= 1', 'a number > 0 and <= 1'... from a field's type and bounds."""
    kind = "an integer" if int in (field.annotation, *get_args(field.annotation)) else "a number"
    bounds = []
    for m in field.metadata:
        for attr, op in (("ge", ">="), ("gt", ">"), ("le", "<="), ("lt", "<")):
            if getattr(m, attr, None) is not None:
                bounds.append(f"{op} {getattr(m, attr)}")
    return kind + (" " + " and ".join(bounds) if bounds else "")


class _Section(_StrictNumbers, BaseModel):
    # allow_inf_nan=False: `client.lr: .inf` or `.nan` is refused, not trained with
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)


class PartitionConfig(_Section):
    kind: Literal["iid", "dirichlet", "shards", "classes", "quantity", "natural"] = "dirichlet"
    num_clients: int = Field(20, ge=1, description="number of clients (ignored by `natural`)")
    alpha: float = Field(0.5, gt=0, description="Dirichlet concentration (label skew)")
    min_size: int = Field(10, ge=1, description="minimum examples per client (dirichlet)")
    shards_per_client: int = Field(2, ge=1)
    classes_per_client: int = Field(2, ge=1)
    sigma: float = Field(1.0, gt=0, description="lognormal spread of sizes (quantity)")


class SyntheticConfig(_Section):
    alpha: float = Field(1.0, ge=0, description="Synthetic(α, β): model heterogeneity")
    beta: float = Field(1.0, ge=0, description="Synthetic(α, β): data heterogeneity")
    num_clients: int = Field(30, ge=1, description="devices generated (the natural split)")
    dim: int = Field(60, ge=1)
    num_classes: int = Field(10, ge=2)


class ColumnsConfig(_Section):
    x: Optional[str] = Field(None, description="column of the inputs (default: image, img, pixel_values, x or features)")
    y: Optional[str] = Field(None, description="column of the class labels (default: label, labels or y)")
    client: Optional[str] = Field(None, description="column of a natural client id (for partition.kind natural)")


class DataConfig(_Section):
    dataset: str = "digits"
    root: Optional[str] = Field(None, description="folder or file for file-based sources")
    name: Optional[str] = Field(
        None, description="leaf: femnist | shakespeare | sent140 | synthetic (default: detected); hf: the dataset's Hub name"
    )
    split: Optional[str] = Field(None, description="hf: the training split (default 'train'; a 'test' split is the test set)")
    columns: Optional[ColumnsConfig] = Field(None, description="hf: the columns of inputs (x), labels (y), client ids (client)")
    seed: int = Field(0, description="seed of splits and partition (separate from `seed`)")
    test_fraction: float = Field(0.2, gt=0, lt=1, description="ignored where the source has an official test set")
    server_fraction: float = Field(0.0, ge=0, lt=1, description="class-balanced server-held split")
    client_val_fraction: float = Field(0.1, ge=0, lt=1, description="held-out share of each client's data")
    partition: PartitionConfig = PartitionConfig()
    synthetic: SyntheticConfig = SyntheticConfig()
    # image augmentation, tokenised text and file caches (real models, issue #15)
    augment: Literal["none", "crop_flip"] = Field(
        "none", description="per-client training augmentation of images: crop_flip = random crop with padding 4 "
        "and horizontal flip (CIFAR), seeded per job")
    tokenizer: Optional[str] = Field(
        None, description="hf: a save_pretrained folder whose tokenizer turns a text column into token ids "
        "(default: the model's folder when model.name is hf:<folder>)")
    max_length: int = Field(128, ge=2, le=8192, description="hf text: tokens per example (padded or truncated)")
    cache: Optional[str] = Field(
        None, description="imagefolder: folder for the decoded-array cache (default: a fedweave folder in the "
        "system's temporary directory; never inside data.root)")


class ModelConfig(_Section):
    name: str = Field("mlp", description="registered name, 'package.module:factory', 'torchvision:<name>' or "
                      "'hf:<save_pretrained folder>' (local files only)")
    hidden: Optional[list[int]] = Field(None, description="hidden sizes for mlp (default [200, 200])")
    norm: Literal["group", "batch", "none"] = "group"
    width: Optional[int] = Field(
        None, ge=1, description="channels of the first resnet stage (stages use width, 2·width, 4·width), or the "
        "width of another model (see its description). Unset: 16, except vlm, which takes the width of its "
        "pretrained base (model.kwargs.init_from), else 32")
    roles: dict[str, Literal["trainable", "personal", "buffer", "frozen"]] = Field(
        default_factory=dict, description="name pattern -> role, e.g. {'fc3.*': personal}"
    )
    kwargs: dict[str, Any] = Field(default_factory=dict, description="extra arguments for the factory")

    @field_validator("hidden")
    @classmethod
    def _positive_hidden(cls, v):
        if v is not None and any(h < 1 for h in v):
            raise ValueError("hidden sizes must be positive integers")
        return v


class TaskConfig(_Section):
    kind: str = Field("classification", description="classification, restoration, language_model or regression")


class MethodConfig(_StrictNumbers, BaseModel):
    """The method preset and its stages; a method's own parameters are extra keys."""

    model_config = ConfigDict(extra="allow", validate_assignment=True, allow_inf_nan=False)
    name: str = "fedavg"
    weighting: Optional[str] = Field(None, description="overrides the preset's weighting stage")
    combiner: Optional[str] = Field(None, description="overrides the preset's combiner stage")
    server_opt: Optional[str] = Field(None, description="replace | sgd | adam | yogi | adagrad")
    server_lr: Optional[float] = Field(None, gt=0)
    server_momentum: Optional[float] = Field(None, ge=0, lt=1)
    beta1: Optional[float] = Field(None, ge=0, lt=1)
    beta2: Optional[float] = Field(None, ge=0, lt=1)
    tau: Optional[float] = Field(None, gt=0)

    def extras(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


class ClientConfig(_Section):
    objective: Literal["plain", "prox"] = "plain"
    mu: float = Field(0.01, ge=0, description="FedProx proximal weight")
    epochs: Optional[int] = Field(5, ge=1)
    local_steps: Optional[int] = Field(None, ge=1, description="fixed number of steps (overrides epochs)")
    batch_size: int = Field(32, ge=1)
    lr: float = Field(0.1, gt=0)
    lr_schedule: Literal["constant", "step", "exponential", "cosine"] = "constant"
    lr_decay: float = Field(0.5, gt=0, le=1, description="factor for step / per-round factor for exponential")
    lr_step_rounds: int = Field(10, ge=1, description="rounds between steps (step schedule)")
    lr_min: float = Field(0.0, ge=0, description="floor of the cosine schedule")
    optimizer: Literal["sgd", "adam"] = "sgd"
    momentum: float = Field(0.0, ge=0, lt=1)
    weight_decay: float = Field(0.0, ge=0)
    grad_clip: Optional[float] = Field(None, gt=0, description="max gradient norm per step")
    precision: Literal["fp32", "bf16", "fp16"] = Field(
        "fp32", description="local training: fp32, or autocast to bf16 / fp16 (fp16 with a gradient scaler, CUDA only); aggregation stays fp32"
    )


class ScheduleConfig(_Section):
    mode: Literal["sync", "async", "buffered"] = "sync"
    rounds: int = Field(30, ge=1, description="sync: rounds; async/buffered: default budget of rounds × clients_per_round arrivals")
    clients_per_round: int = Field(10, ge=1)
    sampling: Literal["uniform", "weighted", "poisson"] = "uniform"
    sampling_rate: Optional[float] = Field(None, gt=0, le=1, description="Poisson sampling rate q")
    deadline_s: Optional[float] = Field(None, gt=0, description="sync: arrivals later than this after dispatch are dropped")
    over_select: float = Field(0.0, ge=0, description="sync: dispatch ceil((1+x)·K) clients, keep the first K arrivals")
    concurrency: Optional[int] = Field(None, ge=1, description="async/buffered: clients busy at once (default clients_per_round)")
    buffer_size: Optional[int] = Field(None, ge=1, description="buffered: arrivals merged per aggregation (default clients_per_round)")
    max_staleness: Optional[int] = Field(None, ge=0, description="async/buffered: arrivals staler than this are dropped")
    max_arrivals: Optional[int] = Field(None, ge=1, description="async/buffered budget in arrivals")
    max_time_s: Optional[float] = Field(None, gt=0, description="budget in virtual seconds (any mode)")

    @model_validator(mode="after")
    def _checks(self):
        if self.sampling == "poisson" and self.sampling_rate is None:
            raise ValueError("schedule.sampling=poisson needs schedule.sampling_rate in (0, 1]")
        if self.mode != "sync" and self.sampling != "uniform":
            raise ValueError(
                f"schedule.sampling={self.sampling} applies to sync rounds; async and buffered modes "
                "dispatch uniformly among idle, available clients"
            )
        if self.mode != "sync" and (self.deadline_s is not None or self.over_select):
            raise ValueError("schedule.deadline_s and schedule.over_select apply to sync mode only")
        return self


class UAMConfig(_Section):
    """system.profile uam_wireless: aircraft on corridors uploading to the nearest GBS
    (fedweave.sim.uam; the channel maths in fedweave.wireless.connectivity)."""

    gbs_density: float = Field(1.0, gt=0, le=1000, description="GBSs per km² (a Poisson point process)")
    altitude_km: float = Field(0.3, gt=0, le=10, description="corridor altitude above the GBSs, km")
    path_loss_exponent: float = Field(3.0, gt=2, le=8, description="α in the path loss d^-α; must exceed 2")
    sir_threshold_db: float = Field(0.0, ge=-30, le=40, description="an upload succeeds when SIR > this threshold (dB)")
    activity: float = Field(0.5, gt=0, le=1, description="share of cells with a co-channel upload: interferer density = activity × gbs_density")
    interference_radius_km: float = Field(10.0, gt=0, le=1000, description="interfering aircraft within this distance of the serving GBS")
    area_km: float = Field(10.0, gt=0, le=1000, description="side of the square served area holding the corridors")
    corridors: int = Field(4, ge=1, description="corridors (straight routes between aerodromes); aircraft k flies corridor k mod corridors")
    speed_kmh: float = Field(150.0, gt=0, description="aircraft ground speed along its corridor (back and forth)")
    retry_s: float = Field(1.0, gt=0, description="wait after a failed upload attempt before the next one")
    max_attempts: int = Field(100000, ge=1, description="give up (error) after this many failed attempts of one upload")


class SystemConfig(_Section):
    """Device profiles: compute speed, bandwidths, availability and dropouts (seeded)."""

    profile: Literal["uniform", "lognormal", "tiers", "trace", "uam_wireless"] = "uniform"
    seconds_per_sample: float = Field(
        1e-3, gt=0, description="compute time per training example on a reference device, for a model of reference_params parameters"
    )
    reference_params: float = Field(1e5, gt=0, description="compute time scales with num_params / reference_params")
    uplink_mbps: float = Field(10.0, gt=0)
    downlink_mbps: float = Field(50.0, gt=0)
    latency_s: float = Field(0.05, ge=0, description="per-message latency")
    sigma: float = Field(0.5, ge=0, description="lognormal: spread of the log slowdown factors")
    tiers: list[list[float]] = Field(
        default_factory=lambda: [[0.7, 1.0], [0.3, 10.0]],
        description="tiers: [[fraction, slowdown], ...]; a slowdown divides compute speed and bandwidth",
    )
    trace: Optional[str] = Field(
        None, description="trace: CSV with client_id, seconds_per_sample, uplink_mbps, downlink_mbps[, availability]"
    )
    availability: Literal["always", "periodic"] = "always"
    period_s: float = Field(600.0, gt=0, description="periodic availability: cycle length")
    on_fraction: float = Field(0.5, gt=0, le=1, description="periodic availability: share of each cycle online")
    dropout: float = Field(0.0, ge=0, lt=1, description="probability that a job fails and never uploads")
    uam: UAMConfig = Field(default_factory=UAMConfig, description="uam_wireless: the GBS network, corridors and channel")

    @field_validator("tiers")
    @classmethod
    def _valid_tiers(cls, v):
        if not v or any(len(t) != 2 or t[0] < 0 or t[1] <= 0 for t in v):
            raise ValueError("tiers must be [[fraction >= 0, slowdown > 0], ...]")
        if abs(sum(t[0] for t in v) - 1.0) > 1e-6:
            raise ValueError("tier fractions must sum to 1")
        return v

    @model_validator(mode="after")
    def _trace_path(self):
        if self.profile == "trace" and not self.trace:
            raise ValueError("system.profile=trace needs system.trace (a CSV file)")
        return self


class EvalConfig(_Section):
    every: int = Field(1, ge=1, description="evaluate every k rounds (async/buffered: every k model versions), and at the end")
    every_s: Optional[float] = Field(None, gt=0, description="evaluate on a time grid instead: every k virtual seconds in simulation, wall-clock seconds in a deployment")
    per_client: bool = Field(False, description="evaluate the global model on each client's held-out split")
    personalized: bool = Field(
        False, description="evaluate each client's own model (the method's personalization) on its held-out split"
    )
    target: Optional[float] = Field(None, description="primary-metric value for time_to_target_s")
    final_window: int = Field(1, ge=1, description="final value = mean of the last k evaluations")
    batch_size: int = Field(2048, ge=1)
    reject_threshold: Optional[float] = Field(
        None, ge=0, le=1,
        description="reject predictions whose max softmax probability is below it (any method; FLIP uses method.threshold): "
        "adds accuracy_with_rejection and rejection_rate, and rejected backdoored inputs count as failed attacks",
    )
    robust_accuracy: bool = Field(False, description="also report PGD robust accuracy on the test set (costly)")
    robust_eps: float = Field(0.1, gt=0, description="PGD: L-infinity radius, in input units")
    robust_steps: int = Field(10, ge=1, description="PGD: number of steps k")
    robust_step_size: Optional[float] = Field(None, gt=0, description="PGD: step size (default 2.5·eps/steps)")
    robust_max_examples: Optional[int] = Field(1000, ge=1, description="PGD: first n test examples (None: all)")


class ExecutorConfig(_Section):
    kind: Literal["serial", "ray", "vectorized", "auto"] = "serial"
    threads: int = Field(1, ge=1, description="torch threads per worker; part of the config because results may depend on it")
    address: Optional[str] = Field(None, description="ray: cluster address (e.g. 'auto'); default starts a local runtime")
    num_workers: Optional[int] = Field(None, ge=1, description="ray: long-lived workers (default: one per CPU)")
    max_cohort: int = Field(64, ge=1, description="vectorized: most clients trained at once")
    cohort_memory_mb: Optional[float] = Field(
        None, gt=0, description="vectorized: memory for a cohort's stacked parameters and activations; fewer clients train at once above it (default 1024)"
    )
    vectorized_kernel: Literal["auto", "func", "conv", "conv-loop"] = Field(
        "auto", description="vectorized: auto (bmm kernel for Linear/ReLU/Tanh stacks, the grouped conv kernel for convolutional models, torch.func otherwise), func (always torch.func), conv (clients as groups of grouped convolutions) or conv-loop (clients in turn, channels-last: one client's activations at a time)"
    )
    state_memory_mb: Optional[float] = Field(
        None, gt=0, description="client-state store budget; the rest spills to <run dir>/client_state (default: no limit)"
    )
    device: str = Field("auto", description="where clients train: auto (CUDA when available), cpu, cuda or cuda:N")
    deterministic: bool = Field(
        False, description="PyTorch deterministic algorithms (and CUBLAS_WORKSPACE_CONFIG on CUDA); slower, see howto/gpu.md"
    )
    retain_memory: bool = Field(
        True, description="keep the memory that training and evaluation free for reuse (glibc malloc's mmap and trim thresholds raised) instead of returning it to the OS and faulting it back in: the same numbers, fewer page faults, resident memory stays near its peak; process-wide once set (docs/howto/executors.md)"
    )
    channels_last: bool = Field(
        False, description="serial and Ray: image minibatches in channels-last (NHWC) layout; 0.80-0.87x the step time of the zoo CNNs on the CPU, numbers equal within float tolerance (docs/results/scale.md)"
    )
    data_memory_mb: Optional[float] = Field(
        None, gt=0, description="client data kept on a CUDA device up to this size, else pinned host memory (default: half the free device memory)"
    )
    gpus_per_worker: float = Field(0.0, ge=0, description="ray: GPUs each actor reserves (fractions such as 0.25 share a GPU)")


class OutputConfig(_Section):
    dir: Optional[str] = Field(None, description="run directory (default runs/<name>-<time>)")
    checkpoint_every: int = Field(0, ge=0, description="rounds between checkpoints (0: only on interrupt)")
    tensorboard: bool = Field(False, description="write TensorBoard event files to <run dir>/tensorboard")
    mlflow: bool = Field(False, description="log params and metrics to MLflow")
    mlflow_tracking_uri: Optional[str] = Field(
        None, description="MLflow tracking URI (default: the SQLite store sqlite:///<run dir>/mlflow.db)"
    )
    mlflow_experiment: str = Field("fedweave", description="MLflow experiment name")


# -- threats and privacy (fedweave.threats, fedweave.privacy) ----------------------------


class TriggerConfig(_Section):
    """A backdoor trigger: a checkerboard square near the bottom-right corner of the input."""

    kind: Literal["pixel_pattern", "dba"] = Field(
        "pixel_pattern", description="pixel_pattern: every attacker stamps the whole square; dba: each stamps one piece"
    )
    size: int = Field(3, ge=1, description="side of the square, in pixels (features for 1-D inputs)")
    offset: int = Field(1, ge=0, description="gap between the square and the bottom-right corner")
    value: Optional[float] = Field(None, description="value of the 'on' pixels (default: the data's maximum)")
    parts: int = Field(4, ge=1, description="dba: pieces the square is cut into (row bands)")


class AttackConfig(_Section):
    """The threat model: who is malicious, what they do, and when (the defense never reads it)."""

    kind: Optional[Literal["label_flip", "backdoor", "sign_flip", "gaussian", "scaling", "alie", "minmax", "minsum"]] = None
    fraction: float = Field(0.0, ge=0, lt=1, description="share of clients that are malicious, chosen by seed")
    target: int = Field(0, ge=0, description="backdoor / targeted label_flip: the attacker's target label")
    source: Optional[int] = Field(None, ge=0, description="label_flip: relabel only this class as target (default: y -> C-1-y)")
    poison_fraction: float = Field(0.5, gt=0, le=1, description="backdoor: share of an attacker's examples stamped each round")
    trigger: TriggerConfig = TriggerConfig()
    scale: Optional[float] = Field(
        None, gt=0, description="sign_flip: -s·Δ (1); scaling / backdoor boost: s·Δ (10 / 1); gaussian: std (1); minmax/minsum: largest γ (10)"
    )
    deviation: Literal["std", "unit_vec", "sign"] = Field("std", description="minmax/minsum: perturbation direction")
    z: Optional[float] = Field(None, description="alie: deviations from the mean (default: from the cohort size)")
    minsum_bound: Literal["min", "max"] = Field(
        "min", description="minsum: bound the malicious sum of squared distances by the smallest benign one (official code) or the largest"
    )
    sees_benign: bool = Field(False, description="alie/minmax/minsum: attackers know the round's benign updates")
    start_round: int = Field(1, ge=1, description="first round (1-based) the attackers act")
    end_round: Optional[int] = Field(None, ge=1, description="last round they act (default: to the end)")

    @model_validator(mode="after")
    def _rounds(self):
        if self.end_round is not None and self.end_round < self.start_round:
            raise ValueError(f"attack.end_round={self.end_round} is before attack.start_round={self.start_round}")
        return self


class DPConfig(_Section):
    """Client-level DP-FedAvg (McMahan et al. 2018); on when ``clip`` is set."""

    clip: Optional[float] = Field(None, gt=0, description="C: each client update is clipped to this L2 norm")
    noise_multiplier: Optional[float] = Field(None, ge=0, description="σ: noise std on the sum is σ·C")
    delta: float = Field(1e-5, gt=0, lt=1, description="δ of the (ε, δ) guarantee reported")

    @model_validator(mode="after")
    def _both(self):
        if (self.clip is None) != (self.noise_multiplier is None):
            raise ValueError("privacy.dp needs both clip and noise_multiplier (or neither)")
        return self


class PrivacyConfig(_Section):
    dp: DPConfig = DPConfig()


class EavesdropperConfig(_Section):
    """An observer that intercepts uplink messages and keeps its own model from them."""

    probability: float = Field(0.0, ge=0, le=1, description="chance of intercepting each uplink message (0: off)")
    sees: Literal["models", "deltas"] = Field(
        "models", description="models: uploads are full models; deltas: only updates, applied to its own model"
    )
    init: Literal["own", "server"] = Field(
        "own", description="deltas: the model the updates are applied to: its own random initialisation, or the server's "
        "initial weights (an eavesdropper that knows them, e.g. a public pretrained model)"
    )


class Config(_Section):
    name: str = "quickstart"
    seed: int = Field(0, description="seed of training: sampling, shuffling, initialisation")
    plugins: list[str] = Field(default_factory=list, description="your modules to import first (they register "
                               "methods, stages, models, tasks, data sources); the current folder is importable")
    data: DataConfig = DataConfig()
    model: ModelConfig = ModelConfig()
    task: TaskConfig = TaskConfig()
    method: MethodConfig = MethodConfig()
    client: ClientConfig = ClientConfig()
    schedule: ScheduleConfig = ScheduleConfig()
    system: SystemConfig = SystemConfig()
    eval: EvalConfig = EvalConfig()
    executor: ExecutorConfig = ExecutorConfig()
    output: OutputConfig = OutputConfig()
    attack: AttackConfig = AttackConfig()
    privacy: PrivacyConfig = PrivacyConfig()
    eavesdropper: EavesdropperConfig = EavesdropperConfig()

    @field_validator("name")
    @classmethod
    def _name_stays_in_runs(cls, v: str):
        # the name becomes the directory runs/<name>-<time>: it must not leave runs/
        if not v or v in (".", "..") or any(ch in v for ch in "/\\") or any(ord(ch) < 32 or ord(ch) == 127 for ch in v):
            raise ValueError("the run name becomes the directory runs/<name>-<time>: give a non-empty name without "
                             "'/', '\\' or control characters, other than '.' and '..' (e.g. fedavg-mnist)")
        return v

    @model_validator(mode="after")
    def _name_follows_method(self):
        # the default name is the quickstart's; a run of another method without a name of
        # its own is named after the method (runs/fedprox-..., not runs/quickstart-...)
        if "name" not in self.model_fields_set and self.method.name != MethodConfig().name:
            self.__dict__["name"] = self.method.name
        return self

    @model_validator(mode="after")
    def _tokenizer_follows_hf_model(self):
        # text from the hf source is tokenised with the model's own tokenizer unless told otherwise
        if self.data.dataset == "hf" and self.data.tokenizer is None and self.model.name.startswith("hf:"):
            self.data.__dict__["tokenizer"] = self.model.name[len("hf:"):]
        return self

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)


# -- keys that do not apply ----------------------------------------------------------------

# (section path, key) -> (the setting that makes the key apply, is it on for this config?)
_APPLIES: dict[tuple[str, str], tuple[str, Any]] = {
    ("data.partition", "alpha"): ("partition.kind dirichlet", lambda c: c.data.partition.kind == "dirichlet"),
    ("data.partition", "min_size"): ("partition.kind dirichlet or quantity",
                                     lambda c: c.data.partition.kind in ("dirichlet", "quantity")),
    ("data.partition", "shards_per_client"): ("partition.kind shards", lambda c: c.data.partition.kind == "shards"),
    ("data.partition", "classes_per_client"): ("partition.kind classes", lambda c: c.data.partition.kind == "classes"),
    ("data.partition", "sigma"): ("partition.kind quantity", lambda c: c.data.partition.kind == "quantity"),
    ("schedule", "deadline_s"): ("schedule.mode sync", lambda c: c.schedule.mode == "sync"),
    ("schedule", "over_select"): ("schedule.mode sync", lambda c: c.schedule.mode == "sync"),
    ("schedule", "concurrency"): ("schedule.mode async or buffered", lambda c: c.schedule.mode != "sync"),
    ("schedule", "buffer_size"): ("schedule.mode buffered", lambda c: c.schedule.mode == "buffered"),
    ("schedule", "max_staleness"): ("schedule.mode async or buffered", lambda c: c.schedule.mode != "sync"),
    ("schedule", "max_arrivals"): ("schedule.mode async or buffered", lambda c: c.schedule.mode != "sync"),
    ("schedule", "sampling_rate"): ("schedule.sampling poisson", lambda c: c.schedule.sampling == "poisson"),
    ("system", "sigma"): ("system.profile lognormal", lambda c: c.system.profile == "lognormal"),
    ("system", "tiers"): ("system.profile tiers", lambda c: c.system.profile == "tiers"),
    ("system", "trace"): ("system.profile trace", lambda c: c.system.profile == "trace"),
    ("system", "period_s"): ("system.availability periodic", lambda c: c.system.availability == "periodic"),
    ("system", "on_fraction"): ("system.availability periodic", lambda c: c.system.availability == "periodic"),
    ("client", "lr_decay"): ("client.lr_schedule step or exponential",
                             lambda c: c.client.lr_schedule in ("step", "exponential")),
    ("client", "lr_step_rounds"): ("client.lr_schedule step", lambda c: c.client.lr_schedule == "step"),
    ("client", "lr_min"): ("client.lr_schedule cosine", lambda c: c.client.lr_schedule == "cosine"),
    ("executor", "gpus_per_worker"): ("executor.kind ray", lambda c: c.executor.kind == "ray"),
}


def inapplicable_keys(cfg: "Config") -> list[str]:
    """Keys given a value other than their default that this config's settings ignore, each
    with the setting that would use it (``partition.alpha`` with an ``iid`` partition...)."""
    out = []
    for (path, key), (needs, applies) in _APPLIES.items():
        section = cfg
        for part in path.split("."):
            section = getattr(section, part)
        default = type(section).model_fields[key].get_default(call_default_factory=True)
        if getattr(section, key) != default and not applies(cfg):
            out.append(f"{path}.{key}={getattr(section, key)!r} has no effect: it is used only with {needs}.")
    return out


class ConfigWarning(UserWarning):
    """A config that is valid but probably not what was meant (a key that does not apply)."""


# -- loading ---------------------------------------------------------------------------


def parse_overrides(items: list[str] | None) -> dict[str, Any]:
    """``["a.b=1", "c=[1,2]"]`` → nested dict; values parsed as YAML."""
    out: dict[str, Any] = {}
    for item in items or []:
        if "=" not in item:
            raise ConfigError(f"Override {item!r} must look like key=value (e.g. client.lr=0.1).")
        key, _, raw = item.partition("=")
        key = key.strip()
        if not key or any(not part for part in key.split(".")):
            raise ConfigError(f"Override {item!r} has an empty key part.")
        try:
            value = yaml.safe_load(raw) if raw.strip() else None
        except yaml.YAMLError as exc:
            raise ConfigError(f"Override {item!r}: the value is not valid YAML ({exc}).") from None
        set_dotted(out, key, value)
    return out


def set_dotted(tree: dict[str, Any], key: str, value: Any) -> None:
    node = tree
    parts = key.split(".")
    for part in parts[:-1]:
        nxt = node.get(part)
        if not isinstance(nxt, dict):
            nxt = {}
            node[part] = nxt
        node = nxt
    node[parts[-1]] = value


def deep_merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for k, v in extra.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def read_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"Config file {str(path)!r} does not exist.")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as exc:
        raise ConfigError(f"Config file {str(path)!r} is not a text file: byte {exc.start} is not UTF-8. A config is "
                          "a YAML mapping of sections in UTF-8 text (see examples/quickstart.yaml).") from None
    except OSError as exc:
        raise ConfigError(f"Config file {str(path)!r} cannot be read: {exc.strerror}.") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"Config file {str(path)!r} is not valid YAML: {exc}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"Config file {str(path)!r} must hold a mapping of sections, not {type(data).__name__}.")
    return data


def load_config(
    source: str | Path | dict[str, Any] | Config | None = None, overrides: list[str] | dict[str, Any] | None = None
) -> Config:
    """Build a validated :class:`Config` from a YAML path, a dict or a Config, plus overrides."""
    if isinstance(source, Config):
        raw = source.to_dict()
    elif isinstance(source, dict):
        raw = copy.deepcopy(source)
    elif source is None:
        raw = {}
    else:
        raw = read_yaml(source)
    if overrides:
        extra = overrides if isinstance(overrides, dict) else parse_overrides(overrides)
        raw = deep_merge(raw, extra)
    return validate(raw)


def validate(raw: dict[str, Any]) -> Config:
    try:
        return Config.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc)) from None


def _section_for(loc: tuple) -> type[BaseModel] | None:
    model: type[BaseModel] = Config
    for part in loc[:-1]:
        field = model.model_fields.get(str(part))
        if field is None or not isinstance(field.annotation, type) or not issubclass(field.annotation, BaseModel):
            return None
        model = field.annotation
    return model


def format_validation_error(exc: ValidationError) -> str:
    lines = ["Invalid configuration:"]
    for err in exc.errors():
        loc = tuple(err["loc"])
        key = ".".join(str(p) for p in loc)
        if err["type"] == "extra_forbidden":
            section = _section_for(loc)
            allowed = ", ".join(section.model_fields) if section else ""
            lines.append(f"  - unknown key {key!r}; allowed here: {allowed}.")
        else:
            given = err.get("input")
            shown = "" if isinstance(given, dict) else f" (got {given!r})"
            lines.append(f"  - {key or 'config'}: {err['msg']}{shown}.")
    return "\n".join(lines)
