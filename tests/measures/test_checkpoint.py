"""PR-1: checkpoint save/restore through each framework's own state API."""

from __future__ import annotations

import copy
import json
import subprocess

import pytest

from datarax_bench.adapters import all_adapters
from datarax_bench.adapters.base import Adapter
from datarax_bench.adapters.numpy_ref import NumpyLoader
from datarax_bench.errors import UserError
from datarax_bench.measures import measure_cell
from datarax_bench.measures.checkpoint import checkpoint_after
from datarax_bench.measures.harness import batch_digest
from datarax_bench.results import load_result
from datarax_bench.workload import reference
from datarax_bench.workload.catalog import load_catalog, load_profile
from datarax_bench.workload.data import materialize

CHECKPOINTING = sorted(a.id for a in all_adapters() if "checkpoint" in a.measures)


def _run_pr1(cli_path, tmp_path, adapter_id):
    out = tmp_path / f"PR-1-{adapter_id}.json"
    args = [cli_path, "run", "--profile", "smoke", "--scenario", "PR-1"]
    args += ["--adapter", adapter_id, "--output", str(out)]
    proc = subprocess.run(args, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr
    return load_result(out), out


def _workload():
    profile = load_profile("smoke")
    return load_catalog().get("PR-1").resolve("small", profile.size), profile


def test_the_framework_adapters_with_a_state_api_claim_checkpoint():
    assert {"numpy", "grain", "tfdata", "datarax"} <= set(CHECKPOINTING)
    assert not {"pytorch", "spdl", "raydata"} & set(CHECKPOINTING)  # no state API


@pytest.mark.parametrize("adapter_id", CHECKPOINTING)
@pytest.mark.slow
def test_restored_pipeline_delivers_the_uninterrupted_next_batch(adapter_id, cli_path, tmp_path):
    result, _ = _run_pr1(cli_path, tmp_path, adapter_id)
    assert result["status"] == "ok", result.get("error") or result.get("reason")
    special = result["special"]
    assert special["checkpoint_after"] == 3 and special["resume_exact"] is True
    assert special["state_bytes"] > 0 and special["state_files"]
    assert special["save_s_median"] > 0 and special["restore_s_median"] > 0
    trips = special["repetitions"]
    assert len(trips) == len(result["repetitions"]) == 2
    for trip in trips:
        assert trip["resume_exact"] and trip["expected_sha256"] == trip["resumed_sha256"]
        assert trip["save_s"] > 0 and trip["restore_s"] > 0 and trip["state_bytes"] > 0
    # the usual throughput repetitions are there too
    assert result["statistics"]["elements_per_s"]["median"] > 0


@pytest.mark.slow
def test_the_compared_batch_is_the_one_after_the_checkpoint(cli_path, tmp_path):
    """The uninterrupted run's next batch is batch k of epoch 0, not the first or the k-th."""
    result, _ = _run_pr1(cli_path, tmp_path, "numpy")
    w, profile = _workload()
    dataset = materialize(w, profile.seed)
    k = result["special"]["checkpoint_after"]

    def digest(b):
        return batch_digest(
            reference.reference_batch(dataset, w.transforms, profile.seed, 0, b, w.batch_size)
        )

    assert result["special"]["repetitions"][0]["expected_sha256"] == digest(k)
    assert digest(k) not in (digest(0), digest(k - 1))


class IgnoresState(NumpyLoader):
    """Saves its position but restores nothing: resumes from the epoch's first batch."""

    def restore_state(self, directory) -> None:
        (directory / "position.json").read_text()


class IgnoresStateAdapter(Adapter):
    id = "test-ignores-state"
    display_name = "Restore ignores the state"
    ops = reference.ALL_OPS
    measures = frozenset({"throughput", "checkpoint"})

    def open(self, ctx):
        return IgnoresState(ctx)


def test_a_restore_that_ignores_the_state_is_recorded_as_inexact():
    w, profile = _workload()
    body = measure_cell(IgnoresStateAdapter(), w, materialize(w, profile.seed), profile)
    special = body["special"]
    assert special["resume_exact"] is False
    assert all(not t["resume_exact"] for t in special["repetitions"])
    assert all(t["expected_sha256"] != t["resumed_sha256"] for t in special["repetitions"])
    assert len(body["repetitions"]) == profile.measurement["repetitions"]


@pytest.mark.slow
def test_pytorch_has_no_state_api_so_its_cell_is_unsupported(cli_path, tmp_path):
    out = tmp_path / "pytorch.json"
    args = [cli_path, "run", "--profile", "smoke", "--scenario", "PR-1"]
    proc = subprocess.run(
        [*args, "--adapter", "pytorch", "--output", str(out)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    result = load_result(out)
    assert result["status"] == "unsupported"
    assert "PyTorch DataLoader has no iterator-state API" in result["reason"]
    assert "repetitions" not in result


@pytest.mark.slow
def test_an_ok_result_without_the_checkpoint_metrics_is_rejected(cli_path, tmp_path):
    good, _ = _run_pr1(cli_path, tmp_path, "numpy")
    for remove in ("special", "resume_exact", "state_bytes", "save_s_median", "restore_s_median"):
        result = copy.deepcopy(good)
        if remove == "special":
            del result["special"]
        else:
            del result["special"][remove]
        out = tmp_path / f"without-{remove}.json"
        out.write_text(json.dumps(result))
        with pytest.raises(UserError, match=out.name):
            load_result(out)


def test_checkpoint_at_an_epoch_boundary_is_refused_with_the_reason():
    w, _ = _workload()
    assert checkpoint_after(w) == 3
    for bad in (w.num_batches, 0):
        w.options["checkpoint_after"] = bad
        with pytest.raises(ValueError, match=f"checkpoint_after={bad}"):
            checkpoint_after(w)
