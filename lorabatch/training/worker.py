"""The loop each Ray Train worker runs: one LoRA, data-parallel over the workers.

Every worker draws the same global batch (`BatchOrder`) and takes its share; the loss of a worker
is the sum of its answer-token losses divided by the answer tokens of the *global* batch, times
the number of workers (DDP averages gradients), so the gradient is that of the global batch's mean
token loss whatever the number of workers. Rank 0 saves checkpoints (`checkpoint.py`) through
`ray.train.report`; a restarted attempt resumes from `ray.train.get_checkpoint()`.
"""

from __future__ import annotations

import json
import os
import socket
import tempfile
import time
from pathlib import Path

from lorabatch.atomic import write_text
from lorabatch.examples import collate
from lorabatch.training.batches import (
    BatchOrder,
    answer_tokens,
    lr_factor,
    shard,
)
from lorabatch.training.checkpoint import load_checkpoint, save_checkpoint
from lorabatch.training.lora import (
    LoraSpec,
    lora_model,
    lora_parameter_groups,
    reset_lora,
)


def train_loop_per_worker(job: dict) -> None:
    """Ray Train entry point. `job`: base_model_path, examples_path (Parquet: ids, n_prompt),
    pad_id, spec (LoraSpec fields), hyper (TrainingConfig.hyperparameters()), data_seed,
    checkpoint_every, report_every, threads, progress_path, trust_remote_code."""
    import pyarrow.parquet as pq
    import ray.train
    import ray.train.torch
    import torch
    import torch.distributed as dist
    from transformers import AutoModelForCausalLM

    torch.set_num_threads(job["threads"])
    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    hyper = job["hyper"]
    steps = hyper["steps"]
    table = pq.read_table(job["examples_path"])
    items = list(zip(table.column("ids").to_pylist(), table.column("n_prompt").to_pylist()))

    spec = LoraSpec(**{**job["spec"], "targets": tuple(job["spec"]["targets"])})
    base = AutoModelForCausalLM.from_pretrained(
        job["base_model_path"], torch_dtype=torch.float32, trust_remote_code=job.get("trust_remote_code", False)
    )
    peft_model = lora_model(base, spec)
    reset_lora(peft_model, spec.init_seed)
    groups = lora_parameter_groups(peft_model, hyper["lr"], hyper["lora_a_lr_factor"])
    optimizer = torch.optim.AdamW(groups, lr=hyper["lr"], weight_decay=hyper["weight_decay"])
    params = [p for group in optimizer.param_groups for p in group["params"]]

    state = {"step": 0, "steps": steps, "losses": [], "tokens": 0, "seconds": 0.0, "cpu_seconds": 0.0, "starts": []}
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as directory:
            state = load_checkpoint(Path(directory), peft_model, optimizer)
    state["starts"].append(state["step"])
    device = ray.train.torch.get_device()
    model = ray.train.torch.prepare_model(peft_model) if world > 1 else peft_model.to(device)
    model.train()

    order = BatchOrder(len(items), hyper["batch_size"], job["data_seed"])
    order.skip_to(state["step"])
    warmup = max(1, int(steps * hyper["warmup_fraction"] + 1e-9))
    window_tokens, window_start = 0, time.perf_counter()
    saved_at = None
    while state["step"] < steps:
        step = state["step"]
        started, cpu_started = time.perf_counter(), time.process_time()
        picked = order.next()
        mine = [items[i] for i in shard(picked, rank, world)]
        batch = {k: v.to(device) for k, v in collate(mine, job["pad_id"]).items()}
        for group in optimizer.param_groups:
            group["lr"] = group["peak_lr"] * lr_factor(step, steps, warmup, hyper["min_lr_fraction"])
        n_answer = answer_tokens([items[i] for i in picked])
        loss = model(**batch, num_items_in_batch=n_answer).loss  # Σ token losses / global answer tokens
        optimizer.zero_grad(set_to_none=True)
        (loss * world).backward()
        if hyper["max_grad_norm"] is not None:
            torch.nn.utils.clip_grad_norm_(params, hyper["max_grad_norm"])
        optimizer.step()
        global_loss = loss.detach().clone()
        if world > 1:
            dist.all_reduce(global_loss)
        tokens = sum(len(items[i][0]) for i in picked)
        state["losses"].append(float(global_loss))
        state["tokens"] += tokens
        state["seconds"] += time.perf_counter() - started
        state["cpu_seconds"] += time.process_time() - cpu_started  # this worker's threads; rank 0's share
        state["step"] = step + 1
        window_tokens += tokens
        last = state["step"] == steps
        if state["step"] % job["report_every"] == 0 or state["step"] % job["checkpoint_every"] == 0 or last:
            now = time.perf_counter()
            metrics = {
                "step": state["step"],
                "loss": state["losses"][-1],
                "lr": optimizer.param_groups[-1]["lr"],
                "tokens_per_s": window_tokens / max(now - window_start, 1e-9),
            }
            window_tokens, window_start = 0, now
            if state["step"] % job["checkpoint_every"] == 0 or last:
                _report_checkpoint(metrics, peft_model, optimizer, state, rank)
                saved_at = state["step"]
            else:
                ray.train.report(metrics)
        if rank == 0:
            _write_progress(job["progress_path"], state)
    if saved_at is None:  # resumed at the end: hand the final state back once more
        _report_checkpoint(
            {"step": state["step"], "loss": state["losses"][-1] if state["losses"] else float("nan")},
            peft_model,
            optimizer,
            state,
            rank,
        )


def _report_checkpoint(metrics: dict, peft_model, optimizer, state: dict, rank: int) -> None:
    import ray.train

    if rank != 0:
        ray.train.report(metrics)
        return
    with tempfile.TemporaryDirectory(prefix="lorabatch-ckpt-") as tmp:
        save_checkpoint(Path(tmp), peft_model, optimizer, state)
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp))


def _write_progress(path: str, state: dict) -> None:

    write_text(
        path,
        json.dumps(
            {
                "pid": os.getpid(),
                "host": socket.gethostname(),
                "step": state["step"],
                "steps": state["steps"],
                "starts": state["starts"],
            }
        ),
    )
