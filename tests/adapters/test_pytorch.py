"""PyTorch DataLoader adapter: configured as documented, reference-exact, and tidy."""

from __future__ import annotations

import dataclasses
import subprocess
import sys

import numpy as np
import psutil
import pytest
from support import adapters as support

from datarax_bench.adapters import CellContext, get_adapter
from datarax_bench.adapters import pytorch as pytorch_adapter
from datarax_bench.measures.harness import batch_digest
from datarax_bench.workload import reference
from datarax_bench.workload.catalog import load_catalog, load_profile
from datarax_bench.workload.data import materialize

ADAPTER = get_adapter("pytorch")
# Gaussian noise comes from a torch generator (checked statistically by the conformance suite);
# every other random parameter is the reference's own draw.
TORCH_CELLS = [
    (s, v)
    for a, s, v in support.claimed_cells()
    if a == "pytorch" and "gaussian_noise" not in support.workload(s, v).ops()
]


def _profile(**parallelism):
    prof = support.profile()
    return dataclasses.replace(prof, parallelism={**prof.parallelism, **parallelism})


def test_importing_the_adapter_does_not_import_torch():
    code = "import sys, datarax_bench.adapters.pytorch; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


@pytest.mark.parametrize("cell", TORCH_CELLS, ids=["-".join(c) for c in TORCH_CELLS])
def test_random_draws_follow_the_reference_exactly(cell):
    """Per-element parameters come from the reference's generator: same batches as NumPy's,
    bit for bit except reductions and log1p (a few ulp)."""
    w = support.workload(*cell)
    dataset = materialize(w, 0)
    got = support.run_loader(ADAPTER, w, dataset, seed=3, epochs=(2,))[0]
    for b, batch in enumerate(got):
        want = reference.reference_batch(dataset, w.transforms, 3, 2, b, w.batch_size)
        support.assert_same_structure(batch, want)
        for name in want:
            if want[name].dtype.kind == "f" and not np.array_equal(batch[name], want[name]):
                np.testing.assert_array_max_ulp(batch[name], want[name], maxulp=4)
            else:
                np.testing.assert_array_equal(batch[name], want[name], err_msg=name)


def test_dataloader_uses_the_profile_parallelism_and_spawned_persistent_workers():
    w = support.workload("CV-1", "small")
    ctx = CellContext(w, materialize(w, 0), _profile(workers=2, prefetch=3), seed=0)
    loader = ADAPTER.open(ctx)
    try:
        dl = loader.loader
        assert dl.num_workers == 2 and dl.prefetch_factor == 3 and dl.persistent_workers
        assert dl.drop_last and dl.batch_size == w.batch_size
        assert dl.multiprocessing_context.get_start_method() == "spawn"
        assert dl.pin_memory is False  # a CPU profile
        assert dl.collate_fn is not None and "pad" not in repr(dl.collate_fn)  # default collate
        assert loader.parallelism == {
            "workers": 2,
            "prefetch_factor": 3,
            "persistent_workers": True,
            "multiprocessing_context": "spawn",
            "pin_memory": False,
            "main_process_torch_threads": loader.parallelism["main_process_torch_threads"],
        }
        next(iter(loader.epoch(0)))
        # The spawned DataLoader workers (not multiprocessing's resource tracker, which lives
        # as long as this process).
        workers = [
            p
            for p in psutil.Process().children(recursive=True)
            if "spawn_main" in " ".join(p.cmdline())
        ]
        assert len(workers) == 2
    finally:
        loader.close()
    gone, alive = psutil.wait_procs(workers, timeout=10)
    assert not alive, f"DataLoader workers outlived close(): {[p.pid for p in alive]}"


def test_only_nlp2_gets_a_collate_fn_and_it_pads_like_the_reference():
    w = support.workload("NLP-2", "small")
    ctx = CellContext(w, materialize(w, 0), _profile(workers=0), seed=0)
    loader = ADAPTER.open(ctx)
    try:
        assert "pad_collate" in repr(loader.loader.collate_fn)
        batch = next(iter(loader.epoch(0)))
    finally:
        loader.close()
    want = reference.reference_batch(ctx.dataset, w.transforms, 0, 0, 0, w.batch_size)
    assert {k: ADAPTER.to_host(v).tolist() for k, v in batch.items()} == {
        k: v.tolist() for k, v in want.items()
    }


def test_batches_do_not_depend_on_the_worker_count():
    w = support.workload("CV-1", "small")
    dataset = materialize(w, 0)
    in_process = support.run_loader(ADAPTER, w, dataset, 0, (1,), prof=_profile(workers=0))
    two_workers = support.run_loader(ADAPTER, w, dataset, 0, (1,), prof=_profile(workers=2))
    assert [batch_digest(b) for b in in_process[0]] == [batch_digest(b) for b in two_workers[0]]


def test_tuned_workers_exit_cleanly_with_full_size_batches():
    """A worker aborted in C++ as it exited (SIGABRT) when finalization cut off its queue's
    feeder thread while it freed a batch; the tuned collate_fn's tensors of the worker's heap
    made it one loader in three to five on CV-1's full-size batches with two workers, the
    shared-memory batches about one in two hundred, the exit hook none seen."""
    prof = load_profile("ci_cpu")
    w = load_catalog().get("CV-1").resolve("small", prof.size)
    dataset = materialize(w, 0)
    tuned = ADAPTER.styled("tuned")
    for _ in range(8):
        parallelism = {**prof.parallelism, "workers": 2, "prefetch": 2}
        loader = tuned.open(
            CellContext(w, dataset, dataclasses.replace(prof, parallelism=parallelism), seed=0)
        )
        try:
            batches = loader.epoch(0)
            for _ in range(6):
                batch = next(batches)
        finally:
            loader.close()
        assert {len(v) for v in batch.values()} == {w.batch_size}


FEEDER_EXIT_SCRIPT = """
import multiprocessing, pathlib, sys, time

from datarax_bench.adapters.pytorch import join_feeders_at_exit


class SlowToSend:
    # Pickled by the queue's feeder thread: still sending when the process starts to exit.
    def __reduce__(self):
        time.sleep(0.5)
        pathlib.Path(sys.argv[1]).write_text("sent")
        return (str, ("batch",))


if sys.argv[2] == "hook":
    join_feeders_at_exit(0)
queue = multiprocessing.Queue()
queue.put(SlowToSend())
time.sleep(0.05)
# What a DataLoader worker does once told to stop, before it returns and the interpreter exits.
queue.cancel_join_thread()
queue.close()
"""


@pytest.mark.parametrize("hook", ["hook", "none"])
def test_a_worker_exits_only_after_its_feeder_thread_has_sent(tmp_path, hook):
    """The workers' `worker_init_fn` makes the exit wait for the result queue's feeder thread,
    which otherwise is cut off by finalization mid-batch (where a tensor's deallocation has
    released the GIL, that aborts the worker). Without the hook the feeder never finishes."""
    marker = tmp_path / "sent"
    done = subprocess.run(
        [sys.executable, "-c", FEEDER_EXIT_SCRIPT, str(marker), hook],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert marker.exists() == (hook == "hook")


def test_dataloader_workers_get_the_exit_hook():
    w = support.workload("TAB-1", "small")
    loader = ADAPTER.open(CellContext(w, materialize(w, 0), _profile(workers=1), seed=0))
    try:
        assert loader.loader.worker_init_fn is pytorch_adapter.join_feeders_at_exit
    finally:
        loader.close()


def test_workers_zero_records_no_worker_options():
    w = support.workload("TAB-1", "small")
    loader = ADAPTER.open(CellContext(w, materialize(w, 0), _profile(workers=0), seed=0))
    loader.close()
    assert loader.parallelism["workers"] == 0
    assert loader.parallelism["prefetch_factor"] is None
    assert loader.parallelism["persistent_workers"] is False


def test_to_host_gives_numpy():
    import torch

    value = ADAPTER.to_host(torch.arange(4, dtype=torch.int32))
    assert isinstance(value, np.ndarray) and value.dtype == np.int32


def test_a_memory_mapped_dataset_travels_to_workers_by_file_name():
    import pickle

    from datarax_bench.adapters.pytorch import ElementDataset

    w = support.workload("CV-1", "small")
    dataset = materialize(w, 0)
    ctx = CellContext(w, dataset, support.profile(), seed=0)
    payload = pickle.dumps(ElementDataset(ctx, dataset))
    assert len(payload) < dataset.dense["image"].nbytes / 4  # names, not the pixels
    clone = pickle.loads(payload)
    assert np.array_equal(clone.records.dense["image"][5], dataset.dense["image"][5])
    assert np.array_equal(
        clone[(0, 5)]["label"].numpy(), ElementDataset(ctx, dataset)[(0, 5)]["label"].numpy()
    )
