"""The neural coefficient model (paper: mlp_version) and its training.

g: ℝ → ℝ is an MLP  Linear(1,H) → LayerNorm(H) → ReLU → Linear(H,H) → LayerNorm(H) → ReLU →
Linear(H,1), applied to every row-standardised distance z_ij. For a set S of n tasks:

    C = softmin_T(g(Z_SS)) row-wise, diagonal excluded           [n, n]
    loss = ‖C Θ_S − Θ_S‖²_F / (n·P)          (MSE of the leave-one-out reconstruction)
         = tr((C − I) G (C − I)ᵀ) / (n·P),  G = Θ_S Θ_Sᵀ [n, n]   (the Gram form)

Training (decided, matching the paper's description): S is a seeded `train_fraction` subset of the
bank's tasks; Z_SS is the z-score of the distance submatrix D[S, S] *among the subset's tasks* (so
rows are standardised over the sources the coefficients range over, self included as in
`normalized`), and C mixes only subset tasks. Adam, full batch, `epochs` steps. After training, g
is applied to the full bank's rows (leave-one-out) or to a query row; the training tasks are
recorded so evaluation can report held-out tasks separately. Top-k applies only at inference.

The explicit loss costs O(n²·P) per epoch and holds Θ_S [n, P]; the Gram form costs O(n³) per
epoch once G is computed (O(n²·P), one streaming pass over the bank, shared by every metric).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from lorabatch.atomic import atomic_path, write_json
from lorabatch.progress import ProgressLine
from lorabatch.synthesis.coefficients import row_zscore

MODEL_WEIGHTS = "model.safetensors"
MODEL_CONFIG = "model.json"


def build_mlp(hidden: int, seed: int = 0):
    import torch
    from torch import nn

    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Linear(1, hidden),
        nn.LayerNorm(hidden),
        nn.ReLU(),
        nn.Linear(hidden, hidden),
        nn.LayerNorm(hidden),
        nn.ReLU(),
        nn.Linear(hidden, 1),
    )


def apply_scalar_mlp(mlp, z, chunk: int = 0):
    """g applied elementwise to z (any shape); with `chunk` > 0, in pieces with checkpointing."""
    import torch
    from torch.utils.checkpoint import checkpoint

    flat = z.reshape(-1, 1)
    if chunk <= 0 or flat.shape[0] <= chunk:
        return mlp(flat).reshape(z.shape)
    if not torch.is_grad_enabled():
        return torch.cat([mlp(p) for p in flat.split(chunk)]).reshape(z.shape)
    parts = [checkpoint(mlp, p, use_reentrant=False) for p in flat.split(chunk)]
    return torch.cat(parts).reshape(z.shape)


def loo_coefficients(mlp, z, temperature: float = 1.0, chunk: int = 0):
    """C = softmin_T(g(z)) with the diagonal excluded; z [n, n] → C [n, n] (differentiable)."""
    import torch

    scores = apply_scalar_mlp(mlp, z, chunk)
    eye = torch.eye(z.shape[0], dtype=torch.bool, device=z.device)
    return torch.softmax((-scores / temperature).masked_fill(eye, float("-inf")), dim=1)


def explicit_reconstruction_loss(c, theta):
    """‖C Θ − Θ‖²_F / (n·P) with Θ [n, P] in memory: O(n²·P)."""
    return ((c @ theta - theta) ** 2).mean()


def gram_reconstruction_loss(c, gram, n_params: int):
    """tr((C − I) G (C − I)ᵀ) / (n·P) with G = ΘΘᵀ [n, n]: O(n³), same value as the explicit loss.

    Computed in G's dtype (use float64: the trace is a difference of large terms near the optimum).
    """
    import torch

    e = c.to(gram.dtype) - torch.eye(c.shape[0], dtype=gram.dtype, device=gram.device)
    return ((e @ gram) * e).sum() / (c.shape[0] * n_params)


def train_split(n_tasks: int, fraction: float, seed: int) -> np.ndarray:
    """Sorted indices of the seeded training subset (at least 2 tasks)."""
    n_train = max(2, int(round(fraction * n_tasks)))
    if n_train > n_tasks:
        raise ValueError(f"the neural model needs at least 2 bank tasks, got {n_tasks}")
    return np.sort(np.random.default_rng(seed).permutation(n_tasks)[:n_train])


def train_neural_model(
    distances: np.ndarray,
    *,
    gram: np.ndarray | None = None,
    theta: np.ndarray | None = None,
    n_params: int | None = None,
    hidden: int = 4000,
    epochs: int = 40,
    lr: float = 1e-3,
    train_fraction: float = 0.8,
    seed: int = 0,
    temperature: float = 1.0,
    eval_chunk: int = 0,
    device: str = "cpu",
    progress: bool = False,
    desc: str = "train neural coefficients",
):
    """Train g on the seeded subset; returns (mlp, info) with info = split indices and losses.

    Pass `gram` (the bank's [N, N] G = ΘΘᵀ, and `n_params` = P) for the Gram form, or `theta`
    ([N, P], all bank tasks) for the explicit loss. Both index the full bank; the subset is taken here.
    """
    import torch

    d = np.asarray(distances, dtype=np.float64)
    if d.ndim != 2 or d.shape[0] != d.shape[1]:
        raise ValueError(f"the neural model trains on the square bank distance matrix, got shape {d.shape}")
    if (gram is None) == (theta is None):
        raise ValueError("pass exactly one of `gram` (Gram-form loss) or `theta` (explicit loss)")
    idx = train_split(d.shape[0], train_fraction, seed)
    sub = d[np.ix_(idx, idx)]

    z = torch.as_tensor(row_zscore(sub), dtype=torch.float32, device=device)
    if gram is not None:
        if n_params is None:
            raise ValueError("the Gram-form loss needs n_params (P)")
        g_sub = torch.as_tensor(np.asarray(gram)[np.ix_(idx, idx)], dtype=torch.float64, device=device)
        loss_fn = lambda c: gram_reconstruction_loss(c, g_sub, n_params)  # noqa: E731
    else:
        t_sub = torch.as_tensor(np.asarray(theta)[idx], device=device)
        loss_fn = lambda c: explicit_reconstruction_loss(c.to(t_sub.dtype), t_sub)  # noqa: E731
    mlp = build_mlp(hidden, seed).to(device)
    # The multi-tensor update is the same arithmetic as the per-tensor loop (the same losses and
    # weights, bit for bit, on CPU), ~1.5× faster for the paper's 16 M-parameter MLP.
    opt = torch.optim.Adam(mlp.parameters(), lr=lr, foreach=True)
    losses = []
    line = ProgressLine(desc, epochs, "epochs", progress)
    for _ in range(epochs):
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(loo_coefficients(mlp, z, temperature, eval_chunk))
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
        line.update(1, note=f"loss {losses[-1]:.4g}")
    line.close()
    if not np.isfinite(losses).all():
        raise FloatingPointError(f"neural training diverged (losses {losses[-3:]})")
    mlp.eval()
    return mlp.cpu(), {"train_indices": idx.tolist(), "losses": losses}


def mlp_scalar_fn(mlp, chunk: int = 1 << 16):
    """numpy z → g(z) (float64), for `coefficients.neural_coefficients`."""
    import torch

    def fn(z: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            t = torch.as_tensor(np.asarray(z), dtype=torch.float32)
            return apply_scalar_mlp(mlp, t, chunk).double().numpy()

    return fn


def save_neural_model(directory: str | Path, mlp, meta: dict) -> Path:
    """`model.safetensors` (weights) + `model.json` (hidden width and training facts) in `directory`."""
    from safetensors.torch import save_file

    directory = Path(directory)
    hidden = mlp[0].out_features
    state = {k: v.detach().cpu().contiguous() for k, v in mlp.state_dict().items()}
    with atomic_path(directory / MODEL_WEIGHTS, suffix=".safetensors") as tmp:
        save_file(state, str(tmp), metadata={"format": "pt"})
    write_json(directory / MODEL_CONFIG, {"architecture": "scalar-mlp-layernorm-relu", "hidden": hidden, **meta})
    return directory


def load_neural_model(directory: str | Path):
    """(mlp, meta) saved by `save_neural_model`; `FileNotFoundError` naming the directory if absent."""
    from safetensors.torch import load_file

    directory = Path(directory)
    cfg_path, weights = directory / MODEL_CONFIG, directory / MODEL_WEIGHTS
    if not cfg_path.is_file() or not weights.is_file():
        raise FileNotFoundError(
            f"no trained neural coefficient model in {directory} (expected {MODEL_CONFIG} and {MODEL_WEIGHTS})"
        )
    meta = json.loads(cfg_path.read_text())
    mlp = build_mlp(int(meta["hidden"]))
    mlp.load_state_dict(load_file(str(weights)))
    mlp.eval()
    return mlp, meta
