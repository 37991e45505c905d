"""Mixing bank adapters with one row of coefficients c [N] into a new adapter (the modes are named
after PEFT's `add_weighted_adapter(combination_type=...)`).

linear (alias paper):  θ = Σ_j c_j θ_j over the flat vector of every tensor — lora_A and lora_B
        averaged separately (what the paper does; the product B·A of the result is *not*
        Σ_j c_j B_j A_j).
The others mix the products: per target module, ΔW = Σ_j c_j B_j A_j  ([out, in]; the bank's
shared scaling α/r stays outside), factored at rank r:
        - `cat`: A = [A_j ...] stacked, B = [c_j B_j ...] over the K non-zero coefficients,
          zero-padded to a vLLM rank ≥ K·r_bank — exact (error 0).
        - `svd`: with B_cat = [c_j B_j] [out, Kr] and A_cat = [A_j] [Kr, in], when
          Kr < min(out, in) the SVD comes from QR factors (B_cat = Q_B R_B, A_catᵀ = Q_A R_A,
          ΔW = Q_B (R_B R_Aᵀ) Q_Aᵀ) and only [Kr, Kr] matrices are decomposed; otherwise the one
          module's dense ΔW is formed and decomposed. B = U_r √S_r, A = √S_r V_rᵀ.
        - `exact`: `cat` when K·r_bank ≤ r, or when K·r_bank rounded up to a vLLM rank is at most
          `cat_max_rank`; `svd` otherwise.
        The relative Frobenius error ‖ΔW − B A‖ / ‖ΔW‖ of every module is returned.
Only one module is materialised at a time.
"""

from __future__ import annotations

import numpy as np

from lorabatch.adapter_format import VLLM_LORA_RANKS
from lorabatch.synthesis.tensors import BankLayout

_A, _B = ".lora_A.weight", ".lora_B.weight"
# Full SVD of a dense module up to this smaller side; beyond it a randomized SVD (error still exact).
DENSE_FULL_SVD_MAX = 2048


def mix_linear(layout: BankLayout, coefficients: np.ndarray, progress: bool = False) -> dict[str, np.ndarray]:
    """θ = Σ_j c_j θ_j, returned as tensors (float32); reads only adapters with c_j ≠ 0, one at a time."""
    from tqdm.auto import tqdm

    c = _check_row(layout, coefficients)
    acc = np.zeros(layout.n_params, dtype=np.float64)
    for j in tqdm(np.flatnonzero(c), desc="mix adapters", unit="adapter", disable=not progress or None):
        acc += c[j] * layout.read_flat(int(j))
    flat = acc.astype(np.float32)
    return {t.name: flat[t.offset : t.offset + t.size].reshape(t.shape) for t in layout.tensors}


mix_paper = mix_linear  # the paper's name for it


def lora_modules(layout: BankLayout) -> list[str]:
    """Module prefixes (name without `.lora_A.weight`); every tensor must be a lora_A/lora_B pair."""
    names = {t.name for t in layout.tensors}
    others = sorted(n for n in names if not (n.endswith(_A) or n.endswith(_B)))
    if others:
        raise ValueError(f"exact mixing handles lora_A/lora_B tensors only; the bank also holds {others[:3]}")
    prefixes = sorted({n[: -len(_A)] for n in names if n.endswith(_A)})
    unpaired = sorted(n for n in names if n.endswith(_B) and n[: -len(_B)] not in prefixes)
    if unpaired:
        raise ValueError(f"lora_B tensors without a lora_A: {unpaired[:3]}")
    return prefixes


def round_up_rank(rank: int) -> int | None:
    """The smallest vLLM rank ≥ rank (None if above the largest)."""
    return next((r for r in VLLM_LORA_RANKS if r >= rank), None)


def choose_exact_strategy(
    n_nonzero: int, bank_rank: int, rank: int, cat_max_rank: int, mode: str = "exact"
) -> tuple[str, int]:
    """('cat' | 'svd', output rank) for K = n_nonzero coefficients under `mode` (exact, cat, svd)."""
    needed = n_nonzero * bank_rank
    padded = round_up_rank(needed)
    if mode == "svd":
        return "svd", rank
    if mode == "cat":
        if padded is None:
            raise ValueError(
                f"cat mixing needs rank {needed} (K={n_nonzero} × {bank_rank}), above vLLM's largest {VLLM_LORA_RANKS[-1]}"
            )
        return "cat", max(rank, padded)
    if needed <= rank:
        return "cat", rank
    if cat_max_rank and padded is not None and padded <= cat_max_rank:
        return "cat", padded
    return "svd", rank


def mix_exact(
    layout: BankLayout,
    coefficients: np.ndarray,
    rank: int | None = None,
    cat_max_rank: int = 64,
    seed: int = 0,
    mode: str = "exact",
) -> tuple[dict[str, np.ndarray], dict]:
    """Tensors of the rank-r adapter whose B·A approximates Σ c_j B_j A_j (`mode` cat, svd or exact:
    the choice between them), and a report dict."""
    c = _check_row(layout, coefficients)
    bank_rank = int(layout.adapter_config["r"])
    rank = bank_rank if rank is None else int(rank)
    if rank not in VLLM_LORA_RANKS:
        raise ValueError(f"exact rank {rank} is not one of vLLM's LoRA ranks {list(VLLM_LORA_RANKS)}")
    nz = np.flatnonzero(c)
    strategy, out_rank = choose_exact_strategy(len(nz), bank_rank, rank, cat_max_rank, mode)
    rng = np.random.default_rng(seed)
    tensors: dict[str, np.ndarray] = {}
    errors: dict[str, float] = {}
    sq_err = sq_norm = 0.0
    for prefix in lora_modules(layout):
        a_cat = np.concatenate([layout.read_tensor(int(j), prefix + _A) for j in nz], axis=0).astype(np.float64)
        b_cat = np.concatenate([c[j] * layout.read_tensor(int(j), prefix + _B) for j in nz], axis=1).astype(np.float64)
        if strategy == "cat":
            b_new, a_new = _pad_rank(b_cat, a_cat, out_rank)
            err, norm = 0.0, _factored_norm(b_cat, a_cat)
        else:
            b_new, a_new, err, norm = _truncated_svd(b_cat, a_cat, out_rank, rng)
        tensors[prefix + _A] = a_new.astype(np.float32)
        tensors[prefix + _B] = b_new.astype(np.float32)
        errors[prefix] = err / norm if norm > 0 else 0.0
        sq_err += err**2
        sq_norm += norm**2
    report = {
        "strategy": strategy,
        "rank": out_rank,
        "relative_frobenius_error": float(np.sqrt(sq_err / sq_norm)) if sq_norm > 0 else 0.0,
        "max_module_relative_error": max(errors.values(), default=0.0),
        "module_relative_errors": errors,
    }
    return tensors, report


def _check_row(layout: BankLayout, coefficients: np.ndarray) -> np.ndarray:
    c = np.asarray(coefficients, dtype=np.float64).reshape(-1)
    if c.shape[0] != layout.n_tasks:
        raise ValueError(f"{c.shape[0]} coefficients for a bank of {layout.n_tasks} adapters")
    if not np.isfinite(c).all() or not c.any():
        raise ValueError("coefficients must be finite with at least one non-zero")
    return c


def _pad_rank(b: np.ndarray, a: np.ndarray, rank: int) -> tuple[np.ndarray, np.ndarray]:
    k = a.shape[0]
    b_new = np.zeros((b.shape[0], rank))
    a_new = np.zeros((rank, a.shape[1]))
    b_new[:, :k], a_new[:k] = b, a
    return b_new, a_new


def _factored_norm(b: np.ndarray, a: np.ndarray) -> float:
    """‖B A‖_F from the factors: ⟨BA, BA⟩ = Σ (BᵀB) ∘ (A Aᵀ)."""
    return float(np.sqrt(max(np.sum((b.T @ b) * (a @ a.T)), 0.0)))


def _truncated_svd(b_cat: np.ndarray, a_cat: np.ndarray, rank: int, rng) -> tuple[np.ndarray, np.ndarray, float, float]:
    """Rank-`rank` factors of ΔW = b_cat @ a_cat, the absolute error and ‖ΔW‖_F."""
    out_dim, k = b_cat.shape
    in_dim = a_cat.shape[1]
    if k < min(out_dim, in_dim):
        q_b, r_b = np.linalg.qr(b_cat)
        q_a, r_a = np.linalg.qr(a_cat.T)
        u, s, vt = np.linalg.svd(r_b @ r_a.T)
        root = np.sqrt(s[:rank])
        b_new = (q_b @ u[:, :rank]) * root
        a_new = root[:, None] * (vt[:rank] @ q_a.T)
        norm = float(np.sqrt(np.sum(s**2)))
        err = float(np.sqrt(np.sum(s[rank:] ** 2)))
    else:
        dense = b_cat @ a_cat
        if min(out_dim, in_dim) <= DENSE_FULL_SVD_MAX:
            u, s, vt = np.linalg.svd(dense, full_matrices=False)
        else:
            u, s, vt = _randomized_svd(dense, rank, rng)
        root = np.sqrt(s[:rank])
        b_new = u[:, :rank] * root
        a_new = root[:, None] * vt[:rank]
        norm = float(np.linalg.norm(dense))
        err = float(np.linalg.norm(dense - b_new @ a_new))
    if b_new.shape[1] < rank:  # ΔW of lower rank than asked: pad with zeros
        b_new, a_new = _pad_rank(b_new, a_new, rank)
    return b_new, a_new, err, norm


def _randomized_svd(m: np.ndarray, rank: int, rng, oversample: int = 16, power_iters: int = 4):
    """Halko–Martinsson–Tropp range finder with power iterations; returns thin U, S, Vᵀ."""
    q = np.linalg.qr(m @ rng.standard_normal((m.shape[1], rank + oversample)))[0]
    for _ in range(power_iters):
        q = np.linalg.qr(m.T @ q)[0]
        q = np.linalg.qr(m @ q)[0]
    u_small, s, vt = np.linalg.svd(q.T @ m, full_matrices=False)
    return q @ u_small, s, vt
