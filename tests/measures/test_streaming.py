"""IO-2: eager (load first, timed on its own) against streaming (lazy reads from the cache files)."""

from __future__ import annotations

import copy
import json
import subprocess

import numpy as np
import pytest

from datarax_bench.adapters import all_adapters, get_adapter
from datarax_bench.errors import UserError
from datarax_bench.measures import support
from datarax_bench.measures.harness import drop_page_cache
from datarax_bench.measures.streaming import dataset_bytes
from datarax_bench.results import load_result
from datarax_bench.workload.catalog import load_catalog


def _run(cli_path, tmp_path, variant, adapter="numpy"):
    out = tmp_path / f"{variant}-{adapter}.json"
    cmd = [cli_path, "run", "--profile", "smoke", "--scenario", "IO-2", "--variant", variant]
    proc = subprocess.run(
        [*cmd, "--adapter", adapter, "--output", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    return load_result(out), out


@pytest.mark.parametrize("variant", ["eager", "streaming"])
@pytest.mark.slow
def test_numpy_reference_measures_both_loadings(cli_path, tmp_path, variant):
    result, _ = _run(cli_path, tmp_path, variant)
    assert result["status"] == "ok"
    special = result["special"]
    assert special["loading"] == variant
    reps = result["repetitions"]
    assert special["time_to_first_batch_s"] == [r["time_to_first_batch_s"] for r in reps]
    w = result["workload"]
    element_bytes = sum(
        int(np.prod(f["shape"])) * np.dtype(f["dtype"]).itemsize for f in w["fields"].values()
    )
    assert special["dataset_bytes"] == w["num_elements"] * element_bytes
    if variant == "eager":
        assert len(special["load_s"]) == len(reps) and all(t > 0 for t in special["load_s"])
        assert special["time_to_first_batch_including_load_s_median"] >= min(
            special["time_to_first_batch_s"]
        )
    else:
        assert special["load_s"] is None and special["load_s_median"] is None
    # This machine runs the tests as root, where the cache can be dropped; elsewhere it says so.
    dropped, _ = drop_page_cache()
    assert special["page_cache"] == ("cold" if dropped else "warm")
    assert special["page_cache_note"]


def test_a_machine_that_forbids_dropping_the_cache_is_measured_warm_and_says_why(tmp_path):
    forbidden = tmp_path / "no-such-dir" / "drop_caches"
    dropped, note = drop_page_cache(str(forbidden))
    assert dropped is False and "could not be dropped" in note and "warm" in note


def test_only_loaders_that_read_lazily_claim_streaming():
    workload = load_catalog().get("IO-2").resolve("streaming", "tiny")
    claims = {a.id: support(a, workload) is None for a in all_adapters()}
    assert claims == {
        "numpy": True,
        "datarax": False,
        "grain": True,
        "pytorch": True,
        "spdl": True,  # its load function reads each element from the memory map
        "tfdata": False,
        "webdataset": False,  # no eager source to set against its streamed shards
        "litdata": False,  # no eager source to set against its streamed chunks
        "raydata": True,  # its map tasks read each element from the memory map
    }
    assert "from_tensor_slices" in support(get_adapter("tfdata"), workload)
    assert "stages the whole dataset" in support(get_adapter("datarax"), workload)


@pytest.mark.slow
@pytest.mark.parametrize("adapter", ["grain", "pytorch", "spdl", "raydata"])
def test_framework_loaders_stream_from_the_memory_map(cli_path, tmp_path, adapter):
    result, _ = _run(cli_path, tmp_path, "streaming", adapter)
    assert result["status"] == "ok", result["reason"]
    assert result["special"]["loading"] == "streaming"


def test_dataset_bytes_counts_every_array():
    from datarax_bench.workload.data import materialize

    workload = load_catalog().get("NLP-2").resolve("small", "tiny")
    ds = materialize(workload, 0)
    values, offsets = ds.ragged["tokens"]
    assert dataset_bytes(ds) == values.nbytes + offsets.nbytes


@pytest.mark.slow
def test_an_ok_streaming_result_without_its_metrics_is_rejected(cli_path, tmp_path):
    result, path = _run(cli_path, tmp_path, "eager")
    broken = copy.deepcopy(result)
    del broken["special"]["page_cache"]
    path.write_text(json.dumps(broken))
    with pytest.raises(UserError, match="'page_cache' is a required property"):
        load_result(path)
