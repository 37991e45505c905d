"""The run directory's layout: every path under RUN is named here, and only here.

    RUN/config.yaml                               the validated, fully resolved config
    RUN/run.lock                                  the lock of the command using the run (`runlock`)
    RUN/faults.json                               nodes lost while a sweep ran (stage, time)
    RUN/bank/manifest.parquet                     the bank stage's manifest
    RUN/features/{features.json,index.parquet}    the bank's features; entries in features/datasets/<key>/
    RUN/distances/<metric>.parquet                target, source, d
    RUN/coefficients/<metric>/<model>.parquet     a paper setting's coefficients (nearest.parquet: the
                                                  control nearest-<metric>); uniform.parquet; gram.npy;
                                                  <metric>/neural/ the trained coefficient model
    RUN/adapters/<setting>/<task>/                PEFT dir + provenance.json
    RUN/fewshot/<method>.parquet                  the few-shot methods' per-task records
    RUN/generations/part-*.parquet, plan.json     generation rows; the sweep's plan (plan.parquet: its rows)
    RUN/scores/{examples,tasks,summary}.parquet   scores
    RUN/report/index.html                         the report
    RUN/stages/<stage>.json                       stage markers (`sweep.stages`)
    RUN/training/                                 adapters trained against the bank (`lorabatch train`,
                                                  `bank extend`): checkpoints, inputs, progress

Each stage's module documents the schema of what it writes; this module only says where.
"""

from __future__ import annotations

from pathlib import Path

from lorabatch.settings import NEAREST, UNIFORM, Setting

# Where the vLLM backend writes the all-zero adapter that base rows of a LoRA engine use.
ZERO_ADAPTER_DIR = ".zero-adapter"


class RunLayout:
    """The paths of one run directory (nothing is created or read here)."""

    __slots__ = ("root",)

    def __init__(self, run_dir: str | Path):
        self.root = Path(run_dir)

    def __repr__(self) -> str:
        return f"RunLayout({str(self.root)!r})"

    def __eq__(self, other) -> bool:
        return isinstance(other, RunLayout) and other.root == self.root

    def __hash__(self) -> int:
        return hash(self.root)

    # run-wide files
    @property
    def config(self) -> Path:
        return self.root / "config.yaml"

    @property
    def lock(self) -> Path:
        return self.root / "run.lock"

    # bank
    @property
    def bank(self) -> Path:
        return self.root / "bank"

    @property
    def manifest(self) -> Path:
        return self.bank / "manifest.parquet"

    # features
    @property
    def features(self) -> Path:
        return self.root / "features"

    @property
    def features_meta(self) -> Path:
        return self.features / "features.json"

    @property
    def features_index(self) -> Path:
        return self.features / "index.parquet"

    @property
    def feature_entries(self) -> Path:
        return self.features / "datasets"

    def feature_entry(self, key: str) -> Path:
        return self.feature_entries / key

    # distances
    @property
    def distances_dir(self) -> Path:
        return self.root / "distances"

    def distances(self, metric: str) -> Path:
        return self.distances_dir / f"{metric}.parquet"

    def distance_metrics(self) -> list[str]:
        """The metrics whose distance file exists, sorted."""
        return sorted(p.stem for p in self.distances_dir.glob("*.parquet"))

    # coefficients
    @property
    def coefficients_dir(self) -> Path:
        return self.root / "coefficients"

    def coefficients_file(self, metric: str, model: str) -> Path:
        """RUN/coefficients/<metric>/<model>.parquet (`model` may be `nearest`)."""
        return self.coefficients_dir / metric / f"{model}.parquet"

    def coefficients(self, setting: Setting | str) -> Path | None:
        """The coefficient file of a paper setting or a control; None for a setting without one."""
        setting = Setting.parse(setting) if isinstance(setting, str) else setting
        if setting.kind == "paper":
            return self.coefficients_file(setting.metric, setting.model)
        if setting.kind == NEAREST:
            return self.coefficients_file(setting.metric, NEAREST)
        if setting.kind == UNIFORM:
            return self.coefficients_dir / f"{UNIFORM}.parquet"
        return None

    def neural_model(self, metric: str) -> Path:
        return self.coefficients_dir / metric / "neural"

    @property
    def gram(self) -> Path:
        return self.coefficients_dir / "gram.npy"

    # adapters
    @property
    def adapters(self) -> Path:
        return self.root / "adapters"

    def adapter(self, setting: Setting | str, task_id: str) -> Path:
        return self.adapters / str(setting) / task_id

    # few-shot methods
    @property
    def fewshot_dir(self) -> Path:
        return self.root / "fewshot"

    def fewshot(self, method: str) -> Path:
        return self.fewshot_dir / f"{method}.parquet"

    # generations
    @property
    def generations(self) -> Path:
        return self.root / "generations"

    @property
    def generation_plan(self) -> Path:
        return self.generations / "plan.json"

    @property
    def faults(self) -> Path:
        """Nodes of the cluster lost while the run's commands ran (`sweep.run.record_faults`)."""
        return self.root / "faults.json"

    @property
    def generation_plan_rows(self) -> Path:
        """The planned rows' keys and fingerprints, beside plan.json (what `lorabatch status` counts)."""
        return self.generations / "plan.parquet"

    @property
    def zero_adapter(self) -> Path:
        return self.generations / ZERO_ADAPTER_DIR

    # scores and report
    @property
    def scores(self) -> Path:
        return self.root / "scores"

    def score_table(self, name: str) -> Path:
        """RUN/scores/<name>.parquet: `examples`, `tasks` or `summary`."""
        return self.scores / f"{name}.parquet"

    @property
    def report(self) -> Path:
        return self.root / "report"

    @property
    def report_index(self) -> Path:
        return self.report / "index.html"

    # training
    @property
    def training(self) -> Path:
        """Ray Train storage of the adapters trained against this bank (`lorabatch.training.trainer`)."""
        return self.root / "training"

    # stage markers
    @property
    def stages(self) -> Path:
        return self.root / "stages"

    def stage_marker(self, stage: str) -> Path:
        return self.stages / f"{stage}.json"
