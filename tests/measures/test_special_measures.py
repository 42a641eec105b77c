"""The special measurements the harness performs for every adapter: PR-2, DIST-1, PC-2."""

from __future__ import annotations

import copy
import json
import subprocess

import pytest

from datarax_bench.errors import UserError
from datarax_bench.measures import support
from datarax_bench.results import load_result


def _cell(cli_path, tmp_path, scenario, variant=None, adapter="numpy", env=None):
    out = tmp_path / f"{scenario}-{variant}.json"
    args = [
        cli_path,
        "run",
        "--profile",
        "smoke",
        "--scenario",
        scenario,
        "--adapter",
        adapter,
        "--output",
        str(out),
    ]
    if variant:
        args[6:6] = ["--variant", variant]
    proc = subprocess.run(args, capture_output=True, text=True, timeout=180, env=env)
    assert proc.returncode == 0, proc.stderr
    return load_result(out), out


@pytest.mark.slow
def test_determinism_digests_every_batch_of_every_epoch(cli_path, tmp_path):
    result, _ = _cell(cli_path, tmp_path, "PR-2")
    assert result["status"] == "ok"
    special = result["special"]
    epochs = special["epochs"]
    per_epoch = result["workload"]["num_elements"] // result["workload"]["batch_size"]
    assert epochs == 2 and special["batches_per_run"] == epochs * per_epoch
    assert len(special["batch_sha256"]) == special["batches_per_run"]
    assert special["deterministic"] is True and special["first_mismatch"] is None
    assert special["seeds_differ"] is True
    assert special["batch_sha256"] != special["other_seed_batch_sha256"]
    assert len(set(special["sequence_sha256"])) == 1 and special["runs_same_seed"] == 2
    # every batch of every epoch differs: the random flips/brightness are per epoch and element
    assert len(set(special["batch_sha256"])) == len(special["batch_sha256"])


def test_a_nondeterministic_loader_is_a_finding_not_an_error(tmp_path):
    """A loader whose randomness ignores the seed is recorded as non-deterministic."""
    import numpy as np

    from datarax_bench.adapters.base import Adapter, Loader
    from datarax_bench.measures import measure_cell
    from datarax_bench.workload.catalog import load_catalog, load_profile
    from datarax_bench.workload.data import materialize

    class Unseeded(Loader):
        parallelism = {}

        def __init__(self, ctx):
            self.ctx = ctx

        def epoch(self, epoch):
            w = self.ctx.workload
            for b in range(w.num_batches):
                image = np.asarray(
                    self.ctx.dataset.dense["image"][b * w.batch_size : (b + 1) * w.batch_size],
                    np.float32,
                )
                yield {
                    "image": image
                    + np.random.uniform(-16, 16, size=(len(image), 1, 1, 1)).astype(np.float32)
                }

    class UnseededAdapter(Adapter):
        id = "unseeded"
        display_name = "Unseeded"
        ops = frozenset({"random_horizontal_flip", "random_brightness"})

        def open(self, ctx):
            return Unseeded(ctx)

    w = load_catalog().get("PR-2").resolve("small", "tiny")
    body = measure_cell(UnseededAdapter(), w, materialize(w, 0), load_profile("smoke"))
    assert body["special"]["deterministic"] is False
    assert body["special"]["first_mismatch"] == {"run": 1, "batch": 0}


@pytest.mark.parametrize(("variant", "devices"), [("dev1", 1), ("dev4", 4), ("dev8", 8)])
@pytest.mark.slow
def test_sharding_delivers_one_global_array_over_n_devices(cli_path, tmp_path, variant, devices):
    result, _ = _cell(cli_path, tmp_path, "DIST-1", variant)
    assert result["status"] == "ok", result["reason"]
    special = result["special"]
    assert special["sharded"] is True and special["devices"] == devices
    assert special["mesh_shape"] == {"data": devices}
    batch = result["workload"]["batch_size"]
    image = special["fields"]["image"]
    assert image["global_shape"][0] == batch and image["devices"] == devices
    assert image["shard_shapes"] == [[batch // devices, *image["global_shape"][1:]]]
    assert result["provenance"]["jax"]["device_count"] == devices
    assert (
        f"--xla_force_host_platform_device_count={devices}"
        in result["provenance"]["environment"]["XLA_FLAGS"]
    )


def test_sharding_needs_the_devices_it_names(tmp_path):
    from datarax_bench.adapters import get_adapter
    from datarax_bench.measures.harness import UnsupportedHere
    from datarax_bench.measures.sharding import sharding_target as _sharding_target
    from datarax_bench.workload.catalog import load_catalog

    w = load_catalog().get("DIST-1").resolve("dev8", "tiny")
    assert support(get_adapter("numpy"), w) is None
    with pytest.raises(
        UnsupportedHere, match="shards over 8 devices; this machine's JAX backend has 1"
    ):
        _sharding_target(w)  # this test process has one CPU device


@pytest.mark.slow
def test_dag_records_its_branches(cli_path, tmp_path):
    result, _ = _cell(cli_path, tmp_path, "PC-2")
    assert result["status"] == "ok"
    assert result["special"] == {
        "branches": [2],
        "merge": ["mean"],
        "ops": ["random_brightness", "gaussian_noise", "branch_merge"],
    }


@pytest.mark.parametrize(
    ("scenario", "variant"), [("PR-2", None), ("DIST-1", "dev2"), ("PC-2", None)]
)
@pytest.mark.slow
def test_an_ok_special_result_without_its_metrics_is_rejected(
    cli_path, tmp_path, scenario, variant
):
    result, path = _cell(cli_path, tmp_path, scenario, variant)
    broken = copy.deepcopy(result)
    del broken["special"]
    path.write_text(json.dumps(broken))
    with pytest.raises(UserError, match="'special' is a required property"):
        load_result(path)
    if scenario == "PR-2":
        broken = copy.deepcopy(result)
        del broken["special"]["deterministic"]
        path.write_text(json.dumps(broken))
        with pytest.raises(UserError, match="'deterministic' is a required property"):
            load_result(path)
