"""The neural coefficient model: Gram-form loss = explicit loss, training, save/load."""

import numpy as np
import pytest
import torch

from lorabatch.synthesis.coefficients import check_coefficients, neural_coefficients, row_zscore
from lorabatch.synthesis.neural import (
    build_mlp,
    explicit_reconstruction_loss,
    gram_reconstruction_loss,
    load_neural_model,
    loo_coefficients,
    mlp_scalar_fn,
    save_neural_model,
    train_neural_model,
    train_split,
)


def problem(n=12, p=3000, seed=0):
    rng = np.random.default_rng(seed)
    d = rng.uniform(0, 3, size=(n, n))
    np.fill_diagonal(d, 0)
    theta = rng.normal(0, 0.1, size=(n, p)) + rng.normal(0, 0.1, size=(1, p))  # shared component
    return d, theta


def test_gram_loss_and_gradient_equal_explicit():
    d, theta = problem()
    mlp = build_mlp(16, seed=1).double()
    z = torch.as_tensor(row_zscore(d))
    t = torch.as_tensor(theta)
    grads = []
    values = []
    for loss_fn in (
        lambda c: explicit_reconstruction_loss(c, t),
        lambda c: gram_reconstruction_loss(c, t @ t.T, t.shape[1]),
    ):
        mlp.zero_grad()
        loss = loss_fn(loo_coefficients(mlp, z))
        loss.backward()
        values.append(loss.item())
        grads.append(torch.cat([p.grad.reshape(-1) for p in mlp.parameters()]).clone())
    assert abs(values[0] - values[1]) <= 1e-5 * abs(values[0])
    assert torch.allclose(grads[0], grads[1], rtol=1e-5, atol=1e-12 * grads[0].abs().max().item())


def test_loss_is_the_leave_one_out_reconstruction_mse():
    d, theta = problem(n=6, p=50)
    c = torch.as_tensor(np.random.default_rng(2).dirichlet(np.ones(6), size=6))
    expected = np.mean((c.numpy() @ theta - theta) ** 2)
    assert explicit_reconstruction_loss(c, torch.as_tensor(theta)).item() == pytest.approx(expected, rel=1e-12)


def test_chunked_checkpointed_mlp_equals_whole():
    z = torch.randn(7, 7, dtype=torch.float64)
    mlp = build_mlp(8, seed=0).double()
    whole = loo_coefficients(mlp, z)
    chunked = loo_coefficients(mlp, z, chunk=10)
    assert torch.allclose(whole, chunked)
    chunked.sum().backward()  # checkpointed pieces still backpropagate


def test_training_gram_and_explicit_follow_the_same_path():
    d, theta = problem(n=10, p=400)
    gram = theta @ theta.T
    common = dict(hidden=16, epochs=15, lr=1e-2, train_fraction=0.8, seed=4)
    mlp_g, info_g = train_neural_model(d, gram=gram, n_params=theta.shape[1], **common)
    mlp_e, info_e = train_neural_model(d, theta=theta, **common)
    assert info_g["train_indices"] == info_e["train_indices"] == train_split(10, 0.8, 4).tolist()
    assert len(info_g["train_indices"]) == 8
    assert np.allclose(info_g["losses"], info_e["losses"], rtol=1e-4)
    assert info_g["losses"][-1] < info_g["losses"][0]


def test_training_uses_only_the_subset():
    d, theta = problem(n=10, p=200)
    idx = train_split(10, 0.8, 0)
    held_out = np.setdiff1d(np.arange(10), idx)
    theta2, d2 = theta.copy(), d.copy()
    theta2[held_out] += 5.0  # held-out tasks' adapters and distances must not matter
    d2[held_out, :] += 1.0
    d2[:, held_out] += 1.0
    common = dict(hidden=8, epochs=3, lr=1e-2, seed=0)
    _, a = train_neural_model(d, gram=theta @ theta.T, n_params=200, **common)
    _, b = train_neural_model(d2, gram=theta2 @ theta2.T, n_params=200, **common)
    assert np.allclose(a["losses"], b["losses"])


def test_save_load_round_trip(tmp_path):
    d, _ = problem()
    mlp = build_mlp(12, seed=3)
    save_neural_model(tmp_path / "neural", mlp, {"metric": "JS"})
    loaded, meta = load_neural_model(tmp_path / "neural")
    assert meta["hidden"] == 12 and meta["metric"] == "JS"
    c1 = neural_coefficients(d, mlp_scalar_fn(mlp))
    c2 = neural_coefficients(d, mlp_scalar_fn(loaded))
    assert np.array_equal(c1, c2)
    check_coefficients(c1)
    assert not list(tmp_path.glob("neural/*.tmp*"))


def test_load_missing_model_names_directory(tmp_path):
    with pytest.raises(FileNotFoundError, match="no trained neural coefficient model"):
        load_neural_model(tmp_path)


def test_exactly_one_loss_input_required():
    d, theta = problem(n=4, p=10)
    with pytest.raises(ValueError, match="exactly one"):
        train_neural_model(d, gram=theta @ theta.T, theta=theta, n_params=10, hidden=4, epochs=1)
