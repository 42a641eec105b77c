"""The catalog and profiles: the shipped files are valid, and broken ones are named precisely."""

from __future__ import annotations

import pytest
import yaml
from support import ROOT

from datarax_bench.errors import UserError
from datarax_bench.workload.catalog import load_catalog, load_profile, profile_names
from datarax_bench.workload.reference import ALL_OPS

STANDARD = {
    "CV-1": "Image classification (canonical)",
    "CV-2": "High-resolution 3-D medical volumes",
    "CV-3": "Image classification from JPEG",
    "NLP-1": "Token-based LLM pretraining data",
    "NLP-2": "Variable-length text with dynamic padding",
    "TAB-1": "Dense feature table",
    "TAB-2": "Sparse features (DLRM pattern)",
    "PC-1": "Deep transform chain scaling",
    "PC-2": "Branching DAG pipeline",
    "IO-1": "Source backend comparison",
    "IO-2": "Streaming vs eager loading",
    "DIST-1": "Multi-device sharding",
    "PR-1": "Checkpoint save/restore of the pipeline state",
    "PR-2": "Multi-epoch determinism",
}


def test_catalog_has_the_fourteen_standard_scenarios():
    catalog = load_catalog()
    assert {sid: s.name for sid, s in catalog.scenarios.items()} == STANDARD


def test_every_variant_resolves_in_both_sizes_and_tiny_is_small():
    catalog = load_catalog()
    for scenario in catalog.scenarios.values():
        for variant in scenario.variants:
            full = scenario.resolve(variant, "full")
            tiny = scenario.resolve(variant, "tiny")
            assert tiny.num_elements <= 512, (scenario.id, variant)
            assert tiny.num_elements <= full.num_elements
            assert tiny.num_batches >= 4, "tiny forms must give a smoke window a few batches"
            for spec in tiny.fields.values():
                assert all(d is None or isinstance(d, int) for d in spec.shape)
            assert set(tiny.ops()) <= ALL_OPS


def test_pc1_depth_variants_apply_exactly_depth_ops():
    scenario = load_catalog().get("PC-1")
    for variant, depth in {"d1": 1, "d2": 2, "d5": 5, "d10": 10, "d20": 20, "d50": 50}.items():
        assert len(scenario.resolve(variant, "tiny").ops()) == depth


def test_transform_parameters_are_explicit():
    cv1 = load_catalog().get("CV-1").resolve("small")
    crop = cv1.transforms[0]
    assert crop["op"] == "random_resized_crop"
    assert crop["scale"] == [0.08, 1.0] and crop["size"] == [64, 64]
    assert [t["op"] for t in cv1.transforms] == [
        "random_resized_crop",
        "random_horizontal_flip",
        "normalize",
    ]


@pytest.mark.parametrize("name", ["smoke", "quick", "first_look", "ci_cpu", "gpu_a100", "tpu_v5e"])
def test_shipped_profiles_load(name):
    profile = load_profile(name)
    assert profile.cells(load_catalog())
    assert name in profile_names()


def test_profile_contents_match_their_purpose():
    catalog = load_catalog()
    ci_scenarios = ["CV-1", "CV-3", "NLP-1", "TAB-1", "PC-1", "IO-1", "PR-2"]
    assert load_profile("ci_cpu").scenarios == ci_scenarios
    assert set(load_profile("gpu_a100").scenarios) == set(catalog.scenarios)
    assert set(load_profile("smoke").scenarios) == set(catalog.scenarios)
    ci = load_profile("ci_cpu").measurement
    assert ci["min_batches"] >= 20 and ci["warmup_batches"] == 3
    # Three processes (the fewest that give a comparison's interval over processes), at least
    # six windows in all.
    assert ci["processes"] == 3 and ci["processes"] * ci["repetitions"] >= 6
    assert load_profile("smoke").size == "tiny"


def test_the_default_profile_is_a_first_look_in_processes_with_a_precision_target():
    config = yaml.safe_load((ROOT / "config/config.yaml").read_text())
    assert config["profile"] == "first_look"
    first = load_profile("first_look")
    assert first.scenarios == ["CV-1", "NLP-1", "TAB-1"] and first.styles == ("plain", "tuned")
    assert first.size == "full" and first.feed is not None
    m = first.measurement
    # An interval over processes (at least two, in rounds) and a stated precision target.
    assert m["processes"] >= 2 and 0 < m["precision"] <= 0.05


def _break(project_copy, monkeypatch, relpath, mutate):
    path = project_copy / relpath
    doc = yaml.safe_load(path.read_text())
    mutate(doc)
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    monkeypatch.setenv("DATARAX_BENCH_ROOT", str(project_copy))
    return path


@pytest.mark.parametrize(
    ("mutate", "expected"),
    [
        (lambda d: d["scenarios"]["CV-1"].update(measure="speed"), "scenarios.CV-1.measure"),
        (
            lambda d: d["scenarios"]["TAB-1"]["transforms"][0].update(op="standardise"),
            "scenarios.TAB-1.transforms.0.op",
        ),
        (
            lambda d: d["scenarios"]["CV-1"]["variants"]["small"].update(batch_size="64"),
            "scenarios.CV-1.variants.small.batch_size",
        ),
        (lambda d: d["scenarios"]["CV-1"].pop("fields"), "'fields' is a required property"),
        (
            lambda d: d["scenarios"]["CV-1"]["variants"]["small"]["dims"].pop("crop"),
            "scenarios.CV-1.variants.small.dims: missing crop",
        ),
        (
            lambda d: d["scenarios"]["CV-1"].update(default_variants=["huge"]),
            "unknown variant 'huge'",
        ),
        (
            lambda d: d["scenarios"]["IO-1"]["variants"]["tfds"].pop("backend"),
            "scenarios.IO-1.variants.tfds: missing 'backend'; every variant of a "
            "'source_backends' scenario must say its backend",
        ),
        (
            lambda d: d["scenarios"]["IO-1"]["variants"]["tfds"].update(backend="hdf5"),
            "scenarios.IO-1.variants.tfds.backend",
        ),
        # A jpeg field holds each element's file: ragged bytes, with its generator's keys.
        (
            lambda d: d["scenarios"]["CV-3"]["fields"]["image"].update(shape=[96, 96, 3]),
            "scenarios.CV-3.fields.image: a jpeg field holds each element's file as bytes",
        ),
        (
            lambda d: d["scenarios"]["CV-3"]["fields"]["image"]["generator"].pop("quality"),
            "scenarios.CV-3.fields.image.generator: missing quality for kind 'jpeg'",
        ),
        (
            lambda d: d["scenarios"]["CV-3"]["fields"]["image"]["generator"].update(quality=100),
            "scenarios.CV-3.fields.image.generator.quality",
        ),
        # Each op's parameters, as reference.OP_PARAMS declares them.
        (
            lambda d: d["scenarios"]["CV-1"]["transforms"][0].pop("scale"),
            "scenarios.CV-1.transforms.0 (random_resized_crop): missing parameter 'scale'; "
            "expected 2 numbers in (0, 1]",
        ),
        (
            lambda d: d["scenarios"]["CV-1"]["transforms"][1].update(prob=0.5),
            "scenarios.CV-1.transforms.1 (random_horizontal_flip): unknown parameter 'prob'; "
            "expected 'p'",
        ),
        (
            lambda d: d["scenarios"]["CV-1"]["transforms"][1].update(p=1.5),
            "scenarios.CV-1.transforms.1 (random_horizontal_flip).p: got 1.5, "
            "expected a number in [0, 1]",
        ),
        (
            lambda d: d["scenarios"]["TAB-1"]["transforms"][0].update(std=0),
            "scenarios.TAB-1.transforms.0 (standardize).std: got 0, expected a number > 0",
        ),
        (
            lambda d: d["scenarios"]["CV-2"]["transforms"][0].update(size=[8, 8]),
            "scenarios.CV-2.transforms.0 (random_crop_3d).size: got [8, 8], "
            "expected 3 integers ≥ 1",
        ),
        (
            lambda d: d["scenarios"]["PC-1"]["transforms"][0]["cycle"][3].pop("high"),
            "scenarios.PC-1.transforms.0.cycle.3 (clip): missing parameter 'high'",
        ),
        (
            lambda d: d["scenarios"]["PC-2"]["transforms"][0]["branches"][1][0].update(std=-1.0),
            "scenarios.PC-2.transforms.0.branches.1.0 (gaussian_noise).std: got -1.0",
        ),
        (
            lambda d: d["scenarios"]["PR-1"]["transforms"][1].update(dtype="float16"),
            "scenarios.PR-1.transforms.1 (cast).dtype: got 'float16', expected one of 'uint8'",
        ),
        # A dimension's value is checked in every form of every variant, tiny included.
        (
            lambda d: d["scenarios"]["CV-1"]["variants"]["small"]["tiny"]["dims"].update(crop=0),
            "scenarios.CV-1.variants.small.tiny: transforms.0 (random_resized_crop).size: "
            "got [0, 0], expected 2 integers ≥ 1",
        ),
        (
            lambda d: d["scenarios"]["TAB-1"]["variants"]["small"].update(batch_size=70000),
            "scenarios.TAB-1.variants.small.batch_size: got 70000, expected at most "
            "num_elements (65536)",
        ),
        (
            lambda d: d["scenarios"]["TAB-1"]["variants"]["small"]["tiny"].update(batch_size=640),
            "scenarios.TAB-1.variants.small.tiny.batch_size: got 640, expected at most "
            "num_elements (512)",
        ),
    ],
)
def test_malformed_catalog_names_file_and_key(project_copy, monkeypatch, mutate, expected):
    path = _break(project_copy, monkeypatch, "config/scenarios.yaml", mutate)
    with pytest.raises(UserError) as err:
        load_catalog(path)
    message = str(err.value)
    assert str(path) in message and expected in message
    assert "\n" not in message


def test_catalog_that_is_not_yaml(project_copy, monkeypatch):
    path = project_copy / "config/scenarios.yaml"
    path.write_text("scenarios: [unclosed\n")
    with pytest.raises(UserError, match="not valid YAML"):
        load_catalog(path)


@pytest.mark.parametrize(
    ("mutate", "expected"),
    [
        (
            lambda d: d.update(backend="cuda"),
            "backend: got 'cuda', expected one of 'cpu', 'gpu', 'tpu'",
        ),
        (lambda d: d["measurement"].update(repetitions=0), "measurement.repetitions"),
        (lambda d: d.update(scenarios=["CV-9"]), "unknown scenario 'CV-9'"),
        (lambda d: d.update(variants={"PC-1": ["d3"]}), "unknown variant 'd3'"),
        (lambda d: d.update(colour="red"), "'colour' was unexpected"),
    ],
)
def test_malformed_profile_names_file_and_key(project_copy, monkeypatch, mutate, expected):
    path = _break(project_copy, monkeypatch, "config/profiles/smoke.yaml", mutate)
    with pytest.raises(UserError) as err:
        load_profile("smoke")
    assert str(path) in str(err.value) and expected in str(err.value)


def test_unknown_profile_lists_choices():
    with pytest.raises(UserError, match="unknown profile 'gpu_h100'; expected one of ci_cpu"):
        load_profile("gpu_h100")


def test_catalog_backends_are_the_ones_the_code_writes():
    """The catalog schema's list of IO-1 backends and the writers' agree."""
    from datarax_bench.workload import formats
    from datarax_bench.workload.schemas import read_yaml

    schema = read_yaml(ROOT / "workflow" / "schemas" / "catalog.schema.yaml")
    assert schema["$defs"]["variant"]["properties"]["backend"]["enum"] == list(formats.BACKENDS)
    io1 = load_catalog().get("IO-1")
    assert [io1.resolve(v).options["backend"] for v in io1.variants] == list(formats.BACKENDS)


def test_every_op_declares_its_parameters_once():
    """The schema's op names, the reference's implementations and the declarations agree."""
    from datarax_bench.workload.reference import OP_PARAMS
    from datarax_bench.workload.schemas import load_schema

    schema_ops = load_schema("catalog")["$defs"]["transform"]["properties"]["op"]["enum"]
    assert set(OP_PARAMS) == set(schema_ops) == ALL_OPS | {"chain"}


@pytest.mark.parametrize(
    ("relpath", "original", "duplicate", "key"),
    [
        # A second TAB-1 block, after the first: PyYAML alone would silently keep the last.
        ("config/scenarios.yaml", "  TAB-2:\n", "  TAB-1:\n    name: again\n  TAB-2:\n", "TAB-1"),
        (
            "config/scenarios.yaml",
            "    category: cv\n",
            "    category: cv\n    category: io\n",
            "category",
        ),
        ("config/profiles/smoke.yaml", "seed: 0\n", "seed: 0\nseed: 1\n", "seed"),
    ],
)
def test_duplicate_keys_name_the_key_and_both_lines(
    project_copy, monkeypatch, relpath, original, duplicate, key
):
    path = project_copy / relpath
    text = path.read_text()
    assert original in text
    text = text.replace(original, duplicate, 1)
    path.write_text(text)
    lines = text.splitlines()
    first = next(i for i, ln in enumerate(lines, 1) if ln.strip().startswith(f"{key}:"))
    second = next(
        i for i, ln in enumerate(lines, 1) if i > first and ln.strip().startswith(f"{key}:")
    )
    monkeypatch.setenv("DATARAX_BENCH_ROOT", str(project_copy))
    with pytest.raises(UserError) as err:
        load_profile("smoke") if "profiles" in relpath else load_catalog(path)
    assert str(err.value) == (
        f"{path}: line {second}: duplicate key {key!r} (first at line {first}); "
        "expected each key once"
    )


def test_a_catalog_error_stops_the_cli_with_one_line(project_copy, cli_path):
    """Before: the catalog loaded, listed and dry-ran; every cell then failed with KeyError."""
    import os
    import subprocess

    path = project_copy / "config/scenarios.yaml"
    path.write_text(path.read_text().replace("        scale: [0.08, 1.0]\n", "", 1))
    env = {**os.environ, "DATARAX_BENCH_ROOT": str(project_copy)}
    proc = subprocess.run([cli_path, "list"], capture_output=True, text=True, env=env, timeout=60)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        f"error: {path}: scenarios.CV-1.transforms.0 (random_resized_crop): missing parameter "
        "'scale'; expected 2 numbers in (0, 1]"
    ]
