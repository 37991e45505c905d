"""Grouped LoRA kernels for vLLM's CPU build, installed through vLLM's plugin entry point.

vLLM on CPU applies adapters with `vllm.lora.ops.torch_ops`. For the T tokens of a step, each
with an adapter slot l_t, it gathers every token's matrices and contracts them token by token:

    shrink   y_t  = s · A[l_t] x_t        A: [L, r, h] gathered to [T, r, h]
    expand   o_t (+)= B[l_t] y_t          B: [L, o, r] gathered to [T, o, r]

That copies T·r·(h + o) weights per layer and module and runs T tiny products: on the demo
bank's model it was ~75 % of an engine step. The same sums grouped by slot are one matrix
product per slot present in the step:

    Y[S_l] = s · X[S_l] A[l]ᵀ,   O[S_l] (+)= Y[S_l] B[l]ᵀ,   S_l = {t : l_t = l}

Slot −1 means "no adapter" (vLLM's GPU kernels skip such tokens) and contributes nothing here.
The stock CPU ops index with it like any slot, so such a token gets the *last* slot's adapter:
the reason a base row batched with LoRA rows came out as another adapter's output.

vLLM loads `register` in every process it starts (entry point group `vllm.general_plugins`);
it only installs the kernels when the environment says `LORABATCH_VLLM_CPU_LORA=grouped`, which
the vLLM backend sets for its engine on CPU (`generation.vllm.cpu_lora_kernels`). Any other use
of vLLM in the same environment keeps the stock ops.
"""

from __future__ import annotations

import logging
import os

ENV_VAR = "LORABATCH_VLLM_CPU_LORA"
GROUPED = "grouped"

# A child of vLLM's logger, so the line shows in the engine process's own log stream.
log = logging.getLogger("vllm.lorabatch_cpu_lora")
_stock: dict[str, object] = {}


def grouped_products(inputs, weights, slots, out_dtype):
    """Row t of the result is weights[slots[t]] @ inputs[t], or 0 where slots[t] < 0.

    inputs [T, k], weights [L, n, k] (or [L, 1, n, k]), slots [T] -> [T, n] in `out_dtype`.
    """
    import torch

    if weights.dim() == 4:
        weights = weights.squeeze(1)
    inputs = inputs.to(out_dtype)
    rows, n = inputs.shape[0], weights.shape[1]
    present, counts = torch.unique(slots, sorted=True, return_counts=True)
    if present.numel() == 1:
        slot = int(present[0])
        if slot < 0:
            return inputs.new_zeros(rows, n)
        return inputs @ weights[slot].to(out_dtype).t()
    out = inputs.new_zeros(rows, n) if int(present[0]) < 0 else inputs.new_empty(rows, n)
    order = torch.argsort(slots, stable=True)
    start = 0
    for slot, count in zip(present.tolist(), counts.tolist()):
        members = order[start : start + count]
        start += count
        if slot >= 0:
            out.index_copy_(0, members, inputs.index_select(0, members) @ weights[slot].to(out_dtype).t())
    return out


def bgmv_shrink(inputs, lora_a_weights, output_tensor, lora_indices_tensor, scaling: float = 1.0):
    if inputs.shape[0] != lora_indices_tensor.shape[0]:
        return _stock["bgmv_shrink"](inputs, lora_a_weights, output_tensor, lora_indices_tensor, scaling)
    y = grouped_products(inputs, lora_a_weights, lora_indices_tensor, output_tensor.dtype)
    output_tensor[:, : y.shape[1]] = scaling * y


def bgmv_expand(inputs, lora_b_weights, output_tensor, lora_indices_tensor, add_inputs: bool = True):
    if inputs.shape[0] != lora_indices_tensor.shape[0] or inputs.shape[0] != output_tensor.shape[0]:
        return _stock["bgmv_expand"](inputs, lora_b_weights, output_tensor, lora_indices_tensor, add_inputs)
    o = grouped_products(inputs, lora_b_weights, lora_indices_tensor, output_tensor.dtype)
    # Adapter and model may pad their widths differently (as in the stock op).
    width = min(o.shape[1], output_tensor.shape[1])
    if add_inputs:
        output_tensor[:, :width] += o[:, :width]
    else:
        output_tensor[:, :width] = o[:, :width]


def bgmv_expand_slice(
    inputs,
    lora_b_weights,
    output_tensor,
    lora_indices_tensor,
    slice_offset: int,
    slice_size: int,
    add_inputs: bool = True,
):
    if inputs.shape[0] != lora_indices_tensor.shape[0]:
        return _stock["bgmv_expand_slice"](
            inputs, lora_b_weights, output_tensor, lora_indices_tensor, slice_offset, slice_size, add_inputs
        )
    o = grouped_products(inputs, lora_b_weights, lora_indices_tensor, output_tensor.dtype)
    if add_inputs:
        output_tensor[:, slice_offset : slice_offset + slice_size] += o
    else:
        output_tensor[:, slice_offset : slice_offset + slice_size] = o


KERNELS = {"bgmv_shrink": bgmv_shrink, "bgmv_expand": bgmv_expand, "bgmv_expand_slice": bgmv_expand_slice}


def _modules():
    # punica_cpu imported the ops by name; the sgmv_* ops look the bgmv_* ones up in lora_ops.
    from vllm.lora.ops.torch_ops import lora_ops
    from vllm.lora.punica_wrapper import punica_cpu

    return lora_ops, punica_cpu


def install() -> None:
    """Replace vLLM's CPU bgmv ops with the grouped ones in this process (idempotent)."""
    lora_ops, punica_cpu = _modules()
    for name, kernel in KERNELS.items():
        _stock.setdefault(name, getattr(lora_ops, name))
        setattr(lora_ops, name, kernel)
        setattr(punica_cpu, name, kernel)


def uninstall() -> None:
    """Put vLLM's own ops back."""
    lora_ops, punica_cpu = _modules()
    for name, stock in _stock.items():
        setattr(lora_ops, name, stock)
        setattr(punica_cpu, name, stock)


def register() -> None:
    """vLLM general-plugin hook: install the grouped kernels when the environment asks for them."""
    if os.environ.get(ENV_VAR) == GROUPED:
        install()
        log.info("lorabatch: grouped CPU LoRA kernels installed in vLLM (pid %d)", os.getpid())
