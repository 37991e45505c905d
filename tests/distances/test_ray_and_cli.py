"""The default path: features as Ray Data map_batches on CPU actors, blocks as Ray Data tasks;
both equal the in-process path. Then the `lorabatch distances` command end to end."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from lorabatch.bank.datasets import dataset_content_hash, write_split
from lorabatch.distances import DistancesConfig, compute_distance_matrix, pairwise_distances
from lorabatch.features import FeaturesConfig, compute_bank_features
from lorabatch.features.store import save_features
from lorabatch.layout import RunLayout

ROWS = {
    "task1": ["red cat run", "blue dog jump", "red red bird"],
    "task2": ["one two three", "apple pear", "hot cold up"],
    "task3": ["big small", "left right up", "cat dog fish"],
}


@pytest.fixture(scope="module")
def ray_cluster():
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def tiny_bank(tmp_path_factory):
    """Tokenizer + tiny Mistral (for embeddings) + three datasets + a manifest."""
    from tests.helpers.synthetic_bank import build_base_model, build_tokenizer

    root = tmp_path_factory.mktemp("bank")
    tok = build_tokenizer(root / "base")
    build_base_model(root / "base", vocab_size=len(tok))
    dirs = {}
    for task, inputs in ROWS.items():
        rows = [{"input": x, "output": ["yes"], "id": str(k)} for k, x in enumerate(inputs)]
        write_split(root / task, "train", rows)
        dirs[task] = root / task
    manifest = pa.table(
        {
            "task_id": list(dirs),
            "dataset_path": [str(d) for d in dirs.values()],
            "dataset_sha256": [dataset_content_hash(d) for d in dirs.values()],
            "base_model_path": [str(root / "base")] * len(dirs),
        }
    )
    return root, manifest


def test_ray_features_and_embeddings_equal_local(ray_cluster, tiny_bank, tmp_path):
    _, manifest = tiny_bank
    emb = {"enabled": True, "max_examples": 2, "batch_size": 2}
    local = compute_bank_features(
        manifest, tmp_path / "a", FeaturesConfig(executor="local", embedding=emb), progress=False
    )
    remote = compute_bank_features(
        manifest, tmp_path / "b", FeaturesConfig(executor="ray", embedding=emb), progress=False
    )
    np.testing.assert_array_equal(local.counts, remote.counts)
    np.testing.assert_array_equal(local.samples, remote.samples)
    for a, b in zip(local.embeddings, remote.embeddings):
        assert a.shape == (2, 64) and a.dtype == np.float32
        np.testing.assert_allclose(np.linalg.norm(a, axis=1), 1.0, rtol=1e-5)
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    d = pairwise_distances(local, "MMD_RBF", DistancesConfig(executor="local"))
    assert np.all(np.diag(d) == 0) and np.all(d[~np.eye(3, dtype=bool)] > 0)


@pytest.mark.parametrize("metric", ["KL", "JS", "WD", "MMD"])
def test_ray_blocks_equal_in_process_blocks(ray_cluster, tmp_path, make_features, metric):
    features = make_features(n=10, seed=9)
    save_features(tmp_path, features)
    tasks, d = compute_distance_matrix(tmp_path, metric, DistancesConfig(executor="ray", block_size=4), progress=False)
    np.testing.assert_allclose(
        d, pairwise_distances(features, metric, DistancesConfig(executor="local", block_size=4)), rtol=1e-12, atol=1e-15
    )


def test_cli_distances(ray_cluster, tiny_bank, tmp_path):
    import yaml
    from typer.testing import CliRunner

    from lorabatch.atomic import write_parquet
    from lorabatch.cli import app
    from lorabatch.distances import load_distance_matrix

    root, manifest = tiny_bank
    run = tmp_path / "run"
    write_parquet(RunLayout(run).manifest, manifest)
    config = tmp_path / "config.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "run_dir": str(run),
                "bank": {"source": "local", "root": str(root), "base_model": str(root / "base")},
                "features": {"mmd_sample_size": 30},
            }
        )
    )
    result = CliRunner().invoke(app, ["distances", str(config), "--metrics", "JS", "--metrics", "KL"])
    assert result.exit_code == 0, result.output
    tasks, d = load_distance_matrix(run, "KL")
    assert tasks == ["task1", "task2", "task3"] and np.all(np.diag(d) == 0) and np.all(d[~np.eye(3, dtype=bool)] > 0)
    assert RunLayout(run).distances("JS").is_file() and not RunLayout(run).distances("WD").exists()

    bad = CliRunner().invoke(app, ["distances", str(config), "--metrics", "Hellinger"])
    assert bad.exit_code != 0
    assert "Hellinger" in str(bad.exception) and "'KL'" in str(bad.exception)
