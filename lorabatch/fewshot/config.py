"""Config of the few-shot stage: `select` and `refine`, training-free settings that read only the
target task's own training examples (never its test split)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from lorabatch.strict import RuntimeField, StrictModel, no_duplicates, torch_device


class SelectConfig(StrictModel):
    """`select`: the candidate that does best on the few-shot criterion. Candidates are every mixture setting
    of the sweep (paper settings and controls) plus, per metric, normalized coefficients on this
    grid of temperature × top-k (z-scores are scale-free, so one grid serves every metric)."""

    temperatures: list[float] = Field(
        default_factory=lambda: [1.0, 0.3, 0.1], description="Softmin temperatures of the grid (each > 0)."
    )
    top_k: list[int | None] = Field(
        default_factory=lambda: [None, 3], description="Top-k sparsifications of the grid (None: all tasks)."
    )

    @field_validator("temperatures")
    @classmethod
    def _positive(cls, value):
        bad = [t for t in value if not t > 0]
        if bad:
            raise ValueError(f"temperatures must be > 0, got {bad}")
        return value

    @field_validator("top_k")
    @classmethod
    def _k_positive(cls, value):
        bad = [k for k in value if k is not None and k < 1]
        if bad:
            raise ValueError(f"top_k entries must be ≥ 1 or null, got {bad}")
        return value


class RefineConfig(StrictModel):
    """`refine`: LoraHub's recipe on K bank tasks — CMA-ES over the K weights w ∈ [−bound, bound]^K
    minimising  f(w) = q(Σ_j w_j B_j A_j) + l1 · Σ_j |w_j|,  where q is the few-shot criterion
    (criterion 'rouge': 1 − the mean Rouge-L of greedy answers; 'loss': the teacher-forced loss),
    started from the starting point's weights on the K tasks, at most `budget` evaluations. The
    result is mixed exactly (ΔW = Σ w_j B_j A_j) and is never worse on the criterion than its
    start (the start is the first point evaluated and the fallback)."""

    start: str = Field(
        "select",
        description="Where the search starts: 'select' — select's choice for the task (its top-K tasks "
        "first, the few-shot pool's best own adapters after them; select is then run even when it is "
        "not one of the methods, and its cost counts in refine's); or a paper setting of the sweep "
        "(<metric>-<model>, e.g. JS-normalized, the paper's best) whose coefficients give the weights.",
    )
    top_k: int = Field(5, ge=1, description="K: bank tasks whose weights are optimised.")
    budget: int = Field(40, ge=2, description="Evaluations at most, the start included (LoraHub uses 40).")
    l1: float = Field(0.05, ge=0, description="L1 penalty on the weights (LoraHub uses 0.05).")
    bound: float = Field(1.5, gt=0, description="Each weight stays in [−bound, bound] (LoraHub uses 1.5).")
    sigma: float = Field(0.3, gt=0, description="Initial CMA-ES step size.")
    sources: Literal["pool", "cover", "start"] = Field(
        "pool",
        description="Which K bank tasks are weighted: 'pool' — (from select) the chosen candidate's own top "
        "tasks, then the few-shot pool's tasks whose own adapters score best on the criterion; 'cover' — "
        "the same start, then pool tasks chosen greedily for the reference words of the few-shot examples "
        "their answers add to those already covered (criterion 'rouge'; complementary adapters, e.g. one "
        "with the content and one with the answer form); 'start' — the K largest coefficients of the "
        "starting point only.",
    )

    @field_validator("sources", mode="before")
    @classmethod
    def _old_name(cls, value):
        return "pool" if value == "loss" else value  # the name of 'pool' before the criterion could be Rouge-L


class FewShotConfig(StrictModel):
    methods: list[Literal["select", "refine"]] = Field(
        default_factory=lambda: ["select", "refine"],
        description="Few-shot settings of the sweep ([] turns the stage off).",
    )
    controls: list[Literal["icl"]] = Field(
        default_factory=lambda: ["icl"],
        description="In-context controls of the sweep: 'icl' — the base model with the k few-shot examples in "
        "its prompt (the first ones dropped where the model's context is too short), no adapter: what a "
        "few-shot adapter must beat ([] leaves it out).",
    )
    split: Literal["train", "valid"] = Field(
        "train", description="Split the few-shot examples come from (never the test split)."
    )
    examples: int = Field(16, ge=1, description="k: examples per task the loss is computed on (a seeded sample).")
    batch_size: int = Field(16, ge=1, description="Examples per forward pass (of each adapter scored).")
    candidates_per_pass: int = RuntimeField(
        8,
        ge=1,
        description="Adapters scored together: their examples share forward passes (PEFT routes each row through "
        "its own adapter); the same losses to float rounding and the same greedy answers as one at a time.",
    )
    pool: int = Field(
        20,
        ge=0,
        description="M: the few-shot pool — M distinct bank tasks taken round-robin from each metric's nearest "
        "list (every metric's nearest, then every metric's second, …; LoraHub draws 20 candidate adapters). "
        "Each pool task's own adapter is a `select` candidate, and `refine` (sources 'pool') takes its K "
        "tasks from the pool. 0: no pool.",
    )
    criterion: Literal["rouge", "loss"] = Field(
        "rouge",
        description="What select ranks its candidates by and refine searches on: 'rouge' — the mean Rouge-L "
        "of greedy generations against output[0] on the few-shot examples (the evaluation's metric, on "
        "training examples), the loss breaking ties; 'loss' — the teacher-forced loss of output[0] "
        "(forward passes only, LoraHub's objective; on the demo bank it ranked candidates poorly: "
        "adapters with a lower loss generated worse answers).",
    )
    max_new_tokens: int | None = Field(
        None, ge=1, description="Greedy tokens per example for the 'rouge' criterion (None: generation.max_new_tokens)."
    )
    select: SelectConfig = Field(default_factory=SelectConfig, description="The `select` candidates.")
    refine: RefineConfig = Field(default_factory=RefineConfig, description="The `refine` optimisation.")
    seed: int | None = Field(None, description="Seed of the example sample and of CMA-ES (None: the run's seed).")
    device: str = Field("auto", description="torch device of the loss workers ('auto': cuda when present).")
    dtype: Literal["float32", "bfloat16", "float16"] = Field("float32", description="Base model dtype for the loss.")
    concurrency: int | Literal["auto"] = RuntimeField(
        1,
        description="Loss workers (Ray actors, each holding the base model in memory). 'auto': as many as "
        "the cluster's CPUs (GPUs, when the workers take GPUs) hold at `num_cpus` (`num_gpus`) each, at "
        "most one per task — for small base models; with a large one mind the memory of that many copies.",
    )
    num_cpus: float = RuntimeField(1.0, gt=0, description="CPUs per loss worker.")
    num_gpus: float | None = RuntimeField(
        None, ge=0, description="GPUs per loss worker (None: 1 if the cluster has GPUs)."
    )

    @field_validator("methods")
    @classmethod
    def _unique(cls, value):
        return no_duplicates(value, "methods")

    @field_validator("controls")
    @classmethod
    def _unique_controls(cls, value):
        return no_duplicates(value, "controls")

    @field_validator("concurrency")
    @classmethod
    def _positive(cls, value):
        if value != "auto" and value < 1:
            raise ValueError(f"must be at least 1 or 'auto', got {value}")
        return value

    @field_validator("device")
    @classmethod
    def _device_known(cls, value):
        return torch_device(value, auto=True)
