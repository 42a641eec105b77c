"""The `datarax-bench` command line: happy paths and bad input (one line, exit code 2)."""

from __future__ import annotations

import json
import os

import pytest
from support import run_cli


def test_list_shows_scenarios_profiles_adapters_and_support():
    proc = run_cli("list")
    assert proc.returncode == 0, proc.stderr
    for text in (
        "CV-1",
        "Multi-epoch determinism",
        "ci_cpu",
        "gpu_a100",
        "NumPy reference",
        "Support",
    ):
        assert text in proc.stdout


def test_list_json_has_the_support_matrix_and_the_profile_cells():
    proc = run_cli("list", "--profile", "ci_cpu", "--json")
    doc = json.loads(proc.stdout)
    assert doc["support"]["CV-1"]["numpy"] == "yes"
    assert doc["support"]["PR-2"]["numpy"] == "yes"
    cells = {(c["scenario"], c["variant"]) for c in doc["cells"]}
    assert ("PC-1", "d50") in cells and ("IO-1", "tfrecord") in cells
    # IO-1's backends are supported by different adapters: one row per variant.
    backends = ("memory", "npy_mmap", "array_record", "tfrecord", "tfds", "parquet")
    io1 = [f"IO-1/{v}" for v in (*backends, "webdataset", "litdata")]
    assert list(doc["support"]) == ["CV-1", "CV-3", "NLP-1", "TAB-1", "PC-1", *io1, "PR-2"]
    assert doc["support"]["IO-1/webdataset"]["webdataset"] == "yes"
    assert doc["support"]["IO-1/litdata"]["webdataset"].startswith("unsupported: WebDataset")
    assert doc["support"]["IO-1/npy_mmap"]["numpy"] == "yes"
    assert doc["support"]["IO-1/tfrecord"]["tfdata"] == "yes"
    assert doc["support"]["IO-1/tfrecord"]["numpy"].startswith("unsupported: The NumPy reference")
    assert doc["support"]["IO-1/parquet"]["raydata"] == "yes"


@pytest.mark.slow
def test_adapter_accepts_display_names(tmp_path, run_smoke_cell):
    out = tmp_path / "c.json"
    proc = run_smoke_cell("TAB-1", "NumPy Reference", out)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(out.read_text())["cell"]["adapter"] == "numpy"


@pytest.mark.slow
def test_run_requires_a_variant_when_the_profile_measures_several(tmp_path, run_smoke_cell):
    out = tmp_path / "c.json"
    proc = run_smoke_cell("PC-1", "numpy", out)
    assert proc.returncode == 2 and "d1, d5; pass --variant" in proc.stderr
    proc = run_smoke_cell("PC-1", "numpy", out, variant="d5")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(out.read_text())["workload"]["transforms"][0]["depth"] == 5


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["run", "--profile", "gpu_h100", "--scenario", "CV-1", "--adapter", "numpy"],
            "unknown profile 'gpu_h100'; expected one of ci_cpu, first_look, gpu_a100, quick, smoke, tpu_v5e",
        ),
        (
            ["run", "--profile", "smoke", "--scenario", "CV-7", "--adapter", "numpy"],
            "unknown scenario 'CV-7'; expected one of CV-1, CV-2",
        ),
        (
            ["run", "--profile", "smoke", "--scenario", "CV-1", "--adapter", "jaxloader"],
            "unknown adapter 'jaxloader'; expected one of numpy (NumPy reference)",
        ),
        (
            [
                "run",
                "--profile",
                "smoke",
                "--scenario",
                "CV-1",
                "--variant",
                "huge",
                "--adapter",
                "numpy",
            ],
            "unknown variant 'huge' of CV-1; expected one of small, imagenet",
        ),
        (
            ["run", "--profile", "smoke", "--scenario", "CV-1", "--adapter", "numpy", "--bogus"],
            "unrecognized arguments: --bogus",
        ),
        (["list", "--profile", "nope"], "unknown profile 'nope'"),
        (["doctor"], "the following arguments are required: --profile"),
        (["frobnicate"], "invalid choice: 'frobnicate'"),
    ],
)
def test_bad_input_is_one_line_exit_2_and_writes_nothing(tmp_path, args, message):
    out = tmp_path / "out" / "c.json"
    if args[0] == "run":
        args = [*args, "--output", str(out)]
    proc = run_cli(*args)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], proc.stderr
    assert not (tmp_path / "out").exists()


def test_matrix_with_a_bad_adapter_writes_nothing(tmp_path):
    out = tmp_path / "results"
    proc = run_cli(
        "run",
        "--profile",
        "smoke",
        "--scenarios",
        "TAB-1",
        "--adapters",
        "numpy,nope",
        "--output-dir",
        str(out),
    )
    assert proc.returncode == 2 and "unknown adapter 'nope'" in proc.stderr
    assert not out.exists()


def test_run_needs_exactly_one_output_mode(tmp_path):
    proc = run_cli("run", "--profile", "smoke", "--scenario", "CV-1", "--adapter", "numpy")
    assert (
        proc.returncode == 2
        and "exactly one of --output FILE (one cell) or --output-dir DIR" in proc.stderr
    )


@pytest.mark.slow
def test_doctor_passes_on_a_cpu_profile_and_writes_the_report(tmp_path):
    report = tmp_path / "hw.json"
    proc = run_cli("doctor", "--profile", "smoke", "--json", str(report))
    assert proc.returncode == 0, proc.stderr
    assert "jax backend:  cpu" in proc.stdout and "doctor: ok" in proc.stdout
    doc = json.loads(report.read_text())
    assert doc["backend_ok"] and doc["jax"]["backend"] == "cpu" and doc["cpu"]["usable_cores"] >= 1


def _no_platform() -> dict[str, str]:
    """This environment without a JAX_PLATFORMS of its own: the profile's must decide."""
    return {k: v for k, v in os.environ.items() if k != "JAX_PLATFORMS"}


@pytest.mark.slow
def test_doctor_fails_loudly_when_jax_cannot_run_on_the_profile_s_gpu(tmp_path):
    # JAX_PLATFORMS=cuda: no silent CPU fallback. This machine has no GPU and no CUDA plugin.
    report = tmp_path / "hw.json"
    proc = run_cli("doctor", "--profile", "gpu_a100", "--json", str(report), env=_no_platform())
    assert proc.returncode == 1
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("doctor: JAX cannot start platform 'cuda' that profile gpu_a100 needs")
    assert "Traceback" not in proc.stderr
    doc = json.loads(report.read_text())
    assert not doc["backend_ok"] and doc["jax"] is None
    # What the GPU stack loaded, reported even where it is absent.
    stack = doc["gpu_stack"]
    assert stack["nvidia_driver"] is None and stack["torch"]["pin_memory"] is False
    assert "pin_memory off" in proc.stdout and "nvidia driver: none" in proc.stdout


@pytest.mark.slow
def test_a_gpu_profile_s_cell_fails_instead_of_measuring_the_cpu(tmp_path):
    out = tmp_path / "cell.json"
    proc = run_cli(
        "run", "--profile", "gpu_a100", "--scenario", "TAB-1", "--adapter", "numpy",
        "--output", str(out), env=_no_platform(),
    )  # fmt: skip
    result = json.loads(out.read_text())
    assert result["status"] == "failed", proc.stderr[-2000:]
    assert "JAX cannot start platform 'cuda'" in result["reason"]
    assert not result.get("metrics") and not result.get("repetitions")
    assert result["provenance"]["environment"]["JAX_PLATFORMS"] == "cuda"


# /sys refuses new files even to root (a read-only directory does not: root writes anyway).
UNWRITABLE = "/sys"


@pytest.mark.parametrize(
    ("command", "option", "target", "message"),
    [
        ("run", "--output", "{unwritable}/c.json", "cannot write in /sys (Permission denied)"),
        ("run", "--output", "{unwritable}/new/c.json", "cannot write in /sys (Permission denied)"),
        ("run", "--output", "{tmp}/existing", "existing: is a directory; expected the path of a"),
        ("run", "--output", "{tmp}/afile/c.json", "afile is not a directory"),
        ("run", "--output-dir", "{tmp}/afile", "afile: is a file; expected a directory"),
        ("run", "--output-dir", "{unwritable}/results", "cannot write in /sys (Permission denied)"),
        ("doctor", "--json", "{unwritable}/hw.json", "cannot write in /sys (Permission denied)"),
        ("doctor", "--json", "{tmp}/existing", "existing: is a directory"),
    ],
)
def test_output_paths_are_checked_before_anything_runs(tmp_path, command, option, target, message):
    (tmp_path / "existing").mkdir()
    (tmp_path / "afile").write_text("x")
    before = sorted(tmp_path.rglob("*"))
    target = target.format(unwritable=UNWRITABLE, tmp=tmp_path)
    args = [command, "--profile", "smoke", option, target]
    if command == "run" and option == "--output":
        args += ["--scenario", "TAB-1", "--adapter", "numpy"]
    elif command == "run":
        args += ["--scenarios", "TAB-1", "--adapters", "numpy"]
    proc = run_cli(*args, timeout=60)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and f"{option} {target}: " in lines[0] and message in lines[0], lines
    assert proc.stdout == "", "nothing was measured or reported"
    assert sorted(tmp_path.rglob("*")) == before, "nothing was left behind"


@pytest.mark.slow
def test_results_are_written_with_the_users_umask(tmp_path):
    """A result, manifest and summary as readable as any file the user makes (not 0600)."""
    import os
    import stat

    old = os.umask(0o022)
    try:
        proc = run_cli("run", "--profile", "smoke", "--scenarios", "TAB-1", "--adapters", "numpy", "--output-dir", str(tmp_path / "run"))  # fmt: skip
    finally:
        os.umask(old)
    assert proc.returncode == 0, proc.stderr
    written = [tmp_path / "run" / n for n in ("manifest.json", "summary.json")]
    written += list((tmp_path / "run" / "raw").rglob("*.json"))
    assert len(written) == 3
    assert {stat.S_IMODE(p.stat().st_mode) for p in written} == {0o644}
