"""Every adapter does the reference's work: same fields, shapes and dtypes, every transform per
element with the catalog's parameters, deterministic per seed, and a support matrix that says
what really happens.

Parametrized over `all_adapters()` × the smoke profile's throughput cells each adapter claims, so
an adapter is checked the moment it registers. Loaders run in-process here (one framework import
per test session); a few end-to-end `datarax-bench run` cells show the same through the CLI.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
from support import ROOT, run_cli
from support import adapters as support
from support.process import pid_alive

from datarax_bench.adapters import get_adapter
from datarax_bench.cli import support_matrix, support_status
from datarax_bench.measures.harness import batch_digest
from datarax_bench.results import load_result
from datarax_bench.workload.data import materialize

CELLS = support.claimed_cells()
RANDOM_CELLS = [c for c in CELLS if support.is_random(support.workload(c[1], c[2]))]
FIXED_CELLS = [c for c in CELLS if c not in RANDOM_CELLS]


def _ids(cells):
    return ["-".join(c) for c in cells]


_RUNS: dict = {}


@pytest.fixture(scope="module", autouse=True)
def _forget_runs():
    """The memoised batches go with the module: some are views of a loader's shared memory
    (Grain's workers), which must be released while the loader's modules are still loaded."""
    yield
    _RUNS.clear()


def _run(
    adapter_id: str,
    scenario: str,
    variant: str,
    seed: int,
    epochs: tuple[int, ...],
    style: str = "plain",
):
    """Batches of one adapter on one cell (probe data), memoised for the session."""
    key = (adapter_id, scenario, variant, seed, epochs, style)
    if key not in _RUNS:
        w = support.workload(scenario, variant)
        dataset = support.probe_dataset(w)
        adapter = get_adapter(adapter_id).styled(style)
        _RUNS[key] = support.run_loader(adapter, w, dataset, seed, epochs)
    return _RUNS[key]


def _reference(scenario: str, variant: str, seed: int, epochs: tuple[int, ...]):
    w = support.workload(scenario, variant)
    dataset = support.probe_dataset(w)
    return [support.reference_epoch(w, dataset, seed, e) for e in epochs]


ALL_EPOCHS = tuple(range(support.EPOCHS))


def test_every_framework_adapter_claims_some_cells():
    claimed = {c[0] for c in CELLS}
    assert {"numpy", "pytorch", "tfdata"} <= claimed


@pytest.mark.parametrize("cell", CELLS, ids=_ids(CELLS))
def test_batches_have_the_reference_fields_shapes_and_dtypes(cell):
    adapter_id, scenario, variant = cell
    w = support.workload(scenario, variant)
    got = _run(adapter_id, scenario, variant, 0, ALL_EPOCHS)
    want = _reference(scenario, variant, 0, ALL_EPOCHS)
    # An integer field (labels, token ids, masks) holds only values the reference delivers in it.
    bounds = {
        name: (
            min(r[name].min() for e in want for r in e),
            max(r[name].max() for e in want for r in e),
        )
        for name in want[0][0]
    }
    for e, (g_epoch, r_epoch) in enumerate(zip(got, want, strict=True)):
        assert len(g_epoch) == w.num_batches, f"epoch {e}: {len(g_epoch)} batches"
        for g, r in zip(g_epoch, r_epoch, strict=True):
            support.assert_same_structure(g, r)
            for name, value in g.items():
                if value.dtype.kind == "f":
                    assert np.isfinite(value).all(), name
                else:
                    lo, hi = bounds[name]
                    assert lo <= value.min() and value.max() <= hi, (name, value.min(), value.max())


@pytest.mark.parametrize("cell", FIXED_CELLS, ids=_ids(FIXED_CELLS))
def test_deterministic_pipeline_delivers_exactly_the_reference_batches(cell):
    adapter_id, scenario, variant = cell
    w = support.workload(scenario, variant)
    got = _run(adapter_id, scenario, variant, 0, ALL_EPOCHS)
    want = _reference(scenario, variant, 0, ALL_EPOCHS)
    if support.is_bit_exact(w):
        assert batch_digest(got[0][0]) == batch_digest(want[0][0])
    for g_epoch, r_epoch in zip(got, want, strict=True):
        for g, r in zip(g_epoch, r_epoch, strict=True):
            support.assert_batches_equal(w, g, r)


@pytest.mark.parametrize("cell", RANDOM_CELLS, ids=_ids(RANDOM_CELLS))
def test_random_pipeline_delivers_exactly_the_reference_batches(cell):
    """The counter-based draws make random ops exact too: the same crop boxes, flips, windows,
    offsets and noise as the reference, so the same bytes (float ops within `assert_batches_equal`'s
    named ulp bounds)."""
    adapter_id, scenario, variant = cell
    w = support.workload(scenario, variant)
    got = _run(adapter_id, scenario, variant, 0, ALL_EPOCHS)
    want = _reference(scenario, variant, 0, ALL_EPOCHS)
    for e, (g_epoch, r_epoch) in enumerate(zip(got, want, strict=True)):
        for b, (g, r) in enumerate(zip(g_epoch, r_epoch, strict=True)):
            support.assert_batches_equal(w, g, r, where=f"epoch {e} batch {b}")


@pytest.mark.parametrize("cell", RANDOM_CELLS, ids=_ids(RANDOM_CELLS))
def test_same_seed_same_batches_other_seed_or_epoch_differs(cell):
    adapter_id, scenario, variant = cell
    first = _run(adapter_id, scenario, variant, 0, ALL_EPOCHS)
    again = _run(adapter_id, scenario, variant, 0, (0,))
    other = _run(adapter_id, scenario, variant, 1, (0,))
    digests = [batch_digest(b) for b in first[0]]
    assert [batch_digest(b) for b in again[0]] == digests, "same seed, different batches"
    assert [batch_digest(b) for b in other[0]] != digests, "another seed gave the same batches"
    assert [batch_digest(b) for b in first[1]] != digests, "epoch 1 repeated epoch 0's draws"


@pytest.mark.parametrize("cell", RANDOM_CELLS, ids=_ids(RANDOM_CELLS))
def test_random_transforms_have_the_reference_effect_per_element(cell):
    adapter_id, scenario, variant = cell
    w = support.workload(scenario, variant)
    support.check_effects(
        w,
        support.probe_dataset(w),
        _run(adapter_id, scenario, variant, 0, ALL_EPOCHS),
        _reference(scenario, variant, 0, ALL_EPOCHS),
    )


# --- the tuned style: the framework's recommended pipeline, the plain pipeline's bytes -------

TUNED_CELLS = [c for c in CELLS if "tuned" in get_adapter(c[0]).styles]


def test_every_shipped_adapter_has_a_tuned_style():
    assert {c[0] for c in TUNED_CELLS} >= {"numpy", "grain", "pytorch", "tfdata", "datarax"}


@pytest.mark.parametrize("cell", TUNED_CELLS, ids=_ids(TUNED_CELLS))
def test_the_tuned_pipeline_delivers_exactly_the_plain_pipelines_bytes(cell):
    adapter_id, scenario, variant = cell
    plain = _run(adapter_id, scenario, variant, 0, ALL_EPOCHS)
    tuned = _run(adapter_id, scenario, variant, 0, ALL_EPOCHS, style="tuned")
    for e, (p_epoch, t_epoch) in enumerate(zip(plain, tuned, strict=True)):
        assert len(t_epoch) == len(p_epoch)
        for b, (p, t) in enumerate(zip(p_epoch, t_epoch, strict=True)):
            assert batch_digest(t) == batch_digest(p), f"epoch {e} batch {b} differs"


# Per-element draws: the same element gets the same draws however it is batched or whichever
# worker reads it. The tuned styles draw a batch's random steps for all its rows at once.
SPLIT_CELLS = [c for c in TUNED_CELLS if c[1] in ("CV-1", "NLP-1", "PR-2")]


@pytest.mark.parametrize("cell", SPLIT_CELLS, ids=_ids(SPLIT_CELLS))
def test_draws_follow_the_element_whatever_the_batch_size_or_worker_count(cell):
    adapter_id, scenario, variant = cell
    w = support.workload(scenario, variant)
    dataset = support.probe_dataset(w)
    want = support.concatenated(support.reference_epoch(w, dataset, 3, 1))
    adapter = get_adapter(adapter_id).styled("tuned")
    half = dataclasses.replace(w, batch_size=w.batch_size // 2)
    for workload, workers in ((w, 0), (half, 2)):
        assert workload.num_batches * workload.batch_size == w.num_batches * w.batch_size
        (epoch,) = support.run_loader(
            adapter, workload, dataset, 3, (1,), parallelism={"workers": workers}
        )
        support.assert_batches_equal(
            w,
            support.concatenated(epoch),
            want,
            where=f"batch {workload.batch_size}, {workers} workers",
        )


# --- the checks catch adapters that do less ------------------------------------------------


BROKEN = [
    ("CV-1", "small", support.DroppingAdapter("random_horizontal_flip")),
    ("CV-1", "small", support.DroppingAdapter("normalize")),
    ("CV-1", "small", support.PerBatchRandomAdapter()),
    ("CV-1", "small", support.WeakenedAdapter()),
    ("CV-3", "small", support.DroppingAdapter("random_horizontal_flip")),
    ("CV-3", "small", support.PerBatchRandomAdapter()),
    ("CV-3", "small", support.WeakenedAdapter()),
    ("CV-3", "imagenet", support.DraftDecodeAdapter()),
    ("CV-2", "small", support.DroppingAdapter("zscore")),
    ("CV-2", "small", support.PerBatchRandomAdapter()),
    ("NLP-1", "small", support.PerBatchRandomAdapter()),
    ("NLP-2", "small", support.DroppingAdapter("truncate")),
    ("TAB-1", "small", support.DroppingAdapter("standardize")),
    ("TAB-2", "small", support.DroppingAdapter("log1p")),
    ("PC-1", "d5", support.DroppingAdapter("random_brightness")),
    ("PC-1", "d5", support.DroppingAdapter("random_horizontal_flip")),
    ("PC-1", "d5", support.PerBatchRandomAdapter()),
    ("PC-1", "d5", support.WeakenedAdapter()),
]


@pytest.mark.parametrize(
    "scenario,variant,adapter",
    BROKEN,
    ids=[f"{s}-{v}-{a.id}-{getattr(a, 'dropped', '')}" for s, v, a in BROKEN],
)
def test_an_adapter_doing_less_work_fails_the_checks(scenario, variant, adapter):
    w = support.workload(scenario, variant)
    dataset = support.probe_dataset(w)
    got = support.run_loader(adapter, w, dataset, 0, ALL_EPOCHS)
    want = _reference(scenario, variant, 0, ALL_EPOCHS)
    with pytest.raises(AssertionError):
        support.check_effects(w, dataset, got, want)


MISKEYED = [
    (scenario, variant, adapter)
    for scenario, variant in (("CV-1", "small"), ("NLP-1", "small"), ("PC-1", "d5"))
    for adapter in (
        support.PerBatchRandomAdapter(),
        support.PositionKeyedAdapter(),
        support.WorkerKeyedAdapter(),
    )
]


@pytest.mark.parametrize(
    "scenario,variant,adapter", MISKEYED, ids=[f"{s}-{v}-{a.id}" for s, v, a in MISKEYED]
)
def test_draws_keyed_by_anything_but_the_element_fail_the_exact_check(scenario, variant, adapter):
    w = support.workload(scenario, variant)
    dataset = support.probe_dataset(w)
    (got,) = support.run_loader(adapter, w, dataset, 0, (1,))
    (want,) = _reference(scenario, variant, 0, (1,))
    with pytest.raises(AssertionError):
        support.assert_batches_equal(w, support.concatenated(got), support.concatenated(want))


def test_the_unbroken_reference_passes_the_same_checks():
    for scenario, variant in {(s, v) for s, v, _ in BROKEN}:
        w = support.workload(scenario, variant)
        dataset = support.probe_dataset(w)
        got = support.run_loader(get_adapter("numpy"), w, dataset, 0, ALL_EPOCHS)
        support.check_effects(w, dataset, got, _reference(scenario, variant, 0, ALL_EPOCHS))


# --- end to end through the CLI ------------------------------------------------------------


@pytest.mark.slow
# One adapter through the CLI (a framework import per cell, a minute or more on two cores):
# tf.data's scenarios with unsupported cells, yes cells among them (source backends too), and
# one plain throughput scenario. Every adapter's 'yes' cells run in-process above, and its
# special measures in their own tests.
@pytest.mark.parametrize("adapter_id", ["tfdata"])
def test_support_matrix_agrees_with_what_runs(adapter_id, tmp_path):
    """Each 'yes' of `datarax-bench list` it runs ends ok; every other cell ends as the matrix says."""
    matrix = support_matrix(support.profile())
    listed = json.loads(run_cli("list", "--profile", "smoke", "--json", timeout=600).stdout)
    assert listed["support"] == matrix
    mixed = {key.split("/")[0] for key, row in matrix.items() if row[adapter_id] != "yes"}
    scenarios = sorted(mixed | {"TAB-1"})
    assert len(mixed) >= 2, "no scenario with an unsupported cell left to check"
    out = tmp_path / "run"
    proc = run_cli("run", "--profile", "smoke", "--adapters", adapter_id, "--scenarios", *scenarios, "--output-dir", str(out), timeout=600)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    seen = set()
    for row in summary["cells"]:
        status = support_status(matrix, row["scenario"], row["variant"], adapter_id)
        seen.add(
            row["scenario"] if row["scenario"] in matrix else f"{row['scenario']}/{row['variant']}"
        )
        if status == "yes":
            assert row["status"] == "ok", row
            result = load_result(out / row["path"])
            assert result["statistics"]["first_batch_consistent"], row
            assert result["parallelism"], "the adapter reported no parallelism"
        elif status == "not implemented":
            assert row["status"] == "not_implemented", row
        else:
            assert row["status"] == "unsupported" and row["reason"] in status, row
    assert seen == {key for key in matrix if key.split("/")[0] in scenarios}


def _project_copy(tmp_path, edit) -> Path:
    copy = tmp_path / "project"
    shutil.copytree(ROOT / "config", copy / "config")
    shutil.copytree(ROOT / "workflow" / "schemas", copy / "workflow" / "schemas")
    edit(copy)
    return copy


LIMITED_PLUGIN = """
from datarax_bench.adapters import register
from datarax_bench.adapters.pytorch import PyTorchDataLoader
from datarax_bench.adapters.tfdata import TfData


def limited(base):
    class Limited(base):
        id = "test-limited-" + base.id
        display_name = "Limited " + base.display_name
        ops = base.ops - {"random_horizontal_flip"}

        def open(self, ctx):
            raise AssertionError("a loader was built for an unsupported cell")

    return register(Limited)


limited(PyTorchDataLoader)
limited(TfData)
"""


@pytest.mark.parametrize("adapter_id", ["pytorch", "tfdata"])
def test_a_transform_the_framework_cannot_express_is_unsupported_without_a_loader(
    adapter_id, tmp_path
):
    """An adapter that lacks one op: the matrix says so, and the cell ends `unsupported`
    naming the op, without a worker or loader."""
    plugins = tmp_path / "plugins"
    plugins.mkdir()
    (plugins / "limited_adapters.py").write_text(LIMITED_PLUGIN)
    env = {
        **os.environ,
        "DATARAX_BENCH_PLUGINS": "limited_adapters",
        "PYTHONPATH": os.pathsep.join(filter(None, [str(plugins), os.environ.get("PYTHONPATH")])),
    }
    limited = f"test-limited-{adapter_id}"
    listed = json.loads(
        run_cli("list", "--profile", "smoke", "--json", env=env, timeout=600).stdout
    )
    status = listed["support"]["CV-1"][limited]
    assert status.startswith("unsupported:") and "random_horizontal_flip" in status
    assert listed["support"]["TAB-1"][limited] == "yes"
    out = tmp_path / "cell.json"
    started = time.monotonic()
    proc = run_cli(
        "run",
        "--profile",
        "smoke",
        "--scenario",
        "CV-1",
        "--adapter",
        limited,
        "--output",
        str(out),
        env=env,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr
    result = load_result(out)
    assert result["status"] == "unsupported"
    assert result["reason"] == status.removeprefix("unsupported: ")
    assert "[worker]" not in proc.stderr, "a worker (and loader) was started"
    assert time.monotonic() - started < 30


@pytest.mark.slow
@pytest.mark.parametrize(
    "adapter_id,module,text,error",
    [
        (
            "pytorch",
            "torch.py",
            "raise ImportError('libtorch_cpu.so: cannot open shared object file')",
            "ImportError: libtorch_cpu.so: cannot open shared object file",
        ),
        (
            "tfdata",
            "tensorflow/__init__.py",
            "from tensorflow.python import _pywrap_missing  # noqa",
            "ModuleNotFoundError: No module named 'tensorflow.python'",
        ),
    ],
)
def test_a_framework_that_fails_to_import_makes_its_cells_unsupported(
    adapter_id, module, text, error, tmp_path
):
    """A broken install (shadowed here by a module earlier on PYTHONPATH) ends the cell as
    `unsupported` with the import error as the reason, not as a crash."""
    shadow = tmp_path / "shadow"
    (shadow / module).parent.mkdir(parents=True, exist_ok=True)
    (shadow / module).write_text(text + "\n")
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(shadow), os.environ.get("PYTHONPATH")])),
    }
    out = tmp_path / "cell.json"
    proc = run_cli(
        "run",
        "--profile",
        "smoke",
        "--scenario",
        "TAB-1",
        "--adapter",
        adapter_id,
        "--output",
        str(out),
        env=env,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr
    result = load_result(out)
    assert result["status"] == "unsupported", result["reason"]
    assert (
        result["reason"] == f"{get_adapter(adapter_id).display_name} could not be imported: {error}"
    )


HANGING_PLUGIN = """
import os, time
from datarax_bench.adapters import register
from datarax_bench.adapters import pytorch


class HangingDataset(pytorch.ElementDataset):
    def __getitem__(self, key):
        with open(os.path.join(os.environ["HANG_PID_DIR"], str(os.getpid())), "w"):
            pass
        time.sleep(600)


class HangingLoader(pytorch.TorchLoader):
    def __init__(self, ctx):
        super().__init__(ctx)
        self.loader.dataset.__class__ = HangingDataset


@register
class HangingTorch(pytorch.PyTorchDataLoader):
    id = "test-hanging-torch"
    display_name = "Hanging PyTorch DataLoader"

    def open(self, ctx):
        return HangingLoader(ctx)
"""


@pytest.mark.slow
def test_a_hanging_dataloader_times_out_and_leaves_no_worker_process(tmp_path):
    def edit(root):
        path = root / "config" / "profiles" / "smoke.yaml"
        path.write_text(path.read_text().replace("timeout_s: 120", "timeout_s: 25"))

    plugins, pids = tmp_path / "plugins", tmp_path / "pids"
    plugins.mkdir()
    pids.mkdir()
    (plugins / "hanging_torch.py").write_text(textwrap.dedent(HANGING_PLUGIN))
    env = {
        **os.environ,
        "DATARAX_BENCH_ROOT": str(_project_copy(tmp_path, edit)),
        "DATARAX_BENCH_PLUGINS": "hanging_torch",
        "PYTHONPATH": os.pathsep.join(filter(None, [str(plugins), os.environ.get("PYTHONPATH")])),
        "HANG_PID_DIR": str(pids),
    }
    out = tmp_path / "cell.json"
    proc = run_cli(
        "run",
        "--profile",
        "smoke",
        "--scenario",
        "TAB-1",
        "--adapter",
        "test-hanging-torch",
        "--output",
        str(out),
        env=env,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    result = load_result(out)
    assert result["status"] == "timeout", result["reason"]
    worker_pids = [int(p.name) for p in pids.iterdir()]
    assert worker_pids, "the DataLoader worker never started"
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and any(pid_alive(p) for p in worker_pids):
        time.sleep(0.2)
    assert not [p for p in worker_pids if pid_alive(p)], "a DataLoader worker outlived its cell"


def test_probe_data_is_the_cached_data_outside_cv1():
    w = support.workload("TAB-1", "small")
    assert support.probe_dataset(w).digest == materialize(w, 0).digest


def test_results_of_jpeg_files_name_their_encoder_and_each_adapters_decoder():
    from datarax_bench.adapters import all_adapters
    from datarax_bench.run.cell import result_provenance

    w = support.workload("CV-3", "small")
    decoders = {}
    for adapter in all_adapters():
        jpeg = result_provenance(w, adapter).get("jpeg")
        if "decode_jpeg" in adapter.ops:
            assert jpeg["encoder"]["library"].startswith("Pillow ")
            assert jpeg["encoder"]["subsampling"] == "4:2:0"
            decoders[adapter.id] = jpeg["decoder"]
        else:
            assert jpeg is None, adapter.id
    assert decoders["tfdata"].startswith("tf.io.decode_jpeg, dct_method INTEGER_ACCURATE")
    assert "PIL.Image.open" in decoders["numpy"] and "libjpeg-turbo" in decoders["numpy"]
    assert (
        result_provenance(support.workload("CV-1", "small"), get_adapter("numpy")).get("jpeg")
        is None
    )
