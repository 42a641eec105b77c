"""The scenario catalog (config/scenarios.yaml) and hardware profiles (config/profiles/)."""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

from datarax_bench import paths, stats
from datarax_bench.errors import UserError
from datarax_bench.workload.randomness import SCHEME as RANDOMNESS_SCHEME
from datarax_bench.workload.reference import OP_PARAMS, RANDOM_OPS, chain_steps
from datarax_bench.workload.schemas import read_yaml, validate

# Parameters whose string values are names (of fields, ops, dtypes), never dimensions.
NAME_KEYS = frozenset(
    {"op", "field", "output", "inputs", "targets", "mask", "merge", "dtype", "kind"}
)
# Variant keys that configure a special measurement; a `tiny` block may override some of them.
OPTION_KEYS = ("backend", "loading", "devices", "checkpoint_after", "epochs")
#: The measure whose cells a profile's `feed` can add the feed measurement to.
FEED_MEASURE = "throughput"
#: A profile's `threads_env` when it names none: what SkyPilot sets for every job.
DEFAULT_THREADS_ENV = {"OMP_NUM_THREADS": 1}
# The option every variant of a scenario with this measure must set.
REQUIRED_OPTION = {
    "source_backends": "backend",
    "streaming": "loading",
    "sharding": "devices",
    "checkpoint": "checkpoint_after",
}


@dataclass(frozen=True)
class FieldSpec:
    name: str
    shape: tuple[int | None, ...]
    dtype: str
    generator: dict[str, Any]

    @property
    def ragged(self) -> bool:
        return None in self.shape

    def to_dict(self) -> dict[str, Any]:
        return {"shape": list(self.shape), "dtype": self.dtype, "generator": self.generator}


@dataclass(frozen=True)
class Workload:
    """One scenario variant with every dimension resolved: what a loader must do."""

    scenario: str
    scenario_name: str
    category: str
    measure: str
    variant: str
    size: str
    num_elements: int
    batch_size: int
    fields: dict[str, FieldSpec]
    transforms: tuple[dict[str, Any], ...]
    options: dict[str, Any]

    @property
    def num_batches(self) -> int:
        """Batches per epoch; the last partial batch is dropped by every adapter."""
        return self.num_elements // self.batch_size

    def ops(self) -> list[str]:
        """Every op the pipeline applies, nested chains and branches included, in order."""
        return list(_iter_ops(self.transforms))

    def to_dict(self) -> dict[str, Any]:
        """The workload as results, reruns, the tuning cache and `compare` identify it: a random
        workload names its randomness scheme, whose draws are part of its bytes."""
        randomness = {"randomness": RANDOMNESS_SCHEME} if RANDOM_OPS & set(self.ops()) else {}
        return {
            **randomness,
            "num_elements": self.num_elements,
            "batch_size": self.batch_size,
            "fields": {name: spec.to_dict() for name, spec in self.fields.items()},
            "transforms": list(self.transforms),
            "options": self.options,
        }


def _iter_ops(transforms):
    for step in transforms:
        if step["op"] == "chain":
            yield from _iter_ops(chain_steps(step))
        elif step["op"] == "branch_merge":
            for branch in step["branches"]:
                yield from _iter_ops(branch)
            yield "branch_merge"
        else:
            yield step["op"]


def _substitute(value: Any, dims: dict[str, int], key: str | None = None) -> Any:
    if isinstance(value, dict):
        return {k: _substitute(v, dims, k) for k, v in value.items()}
    if isinstance(value, list):
        return [_substitute(v, dims, key) for v in value]
    if isinstance(value, str) and key not in NAME_KEYS:
        return dims[value]
    return value


def _referenced_dims(value: Any, key: str | None = None) -> set[str]:
    if isinstance(value, dict):
        return set().union(*(_referenced_dims(v, k) for k, v in value.items()))
    if isinstance(value, list):
        return set().union(*(_referenced_dims(v, key) for v in value))
    if isinstance(value, str) and key not in NAME_KEYS:
        return {value}
    return set()


@dataclass(frozen=True)
class Scenario:
    id: str
    name: str
    category: str
    measure: str
    description: str
    raw: dict[str, Any] = field(repr=False)

    @property
    def variants(self) -> list[str]:
        return list(self.raw["variants"])

    @property
    def default_variants(self) -> list[str]:
        return list(self.raw["default_variants"])

    def resolve(self, variant: str, size: str = "full") -> Workload:
        if variant not in self.raw["variants"]:
            raise UserError(
                f"unknown variant {variant!r} of {self.id}; expected one of {', '.join(self.variants)}"
            )
        spec = self.raw["variants"][variant]
        merged = {k: v for k, v in spec.items() if k != "tiny"}
        if size == "tiny":
            tiny = spec["tiny"]
            merged.update({k: v for k, v in tiny.items() if k != "dims"})
            merged["dims"] = {**spec["dims"], **tiny.get("dims", {})}
        dims = merged["dims"]
        fields = {
            name: FieldSpec(
                name=name,
                shape=tuple(_substitute(f["shape"], dims)),
                dtype=f["dtype"],
                generator=_substitute(f["generator"], dims),
            )
            for name, f in self.raw["fields"].items()
        }
        return Workload(
            scenario=self.id,
            scenario_name=self.name,
            category=self.category,
            measure=self.measure,
            variant=variant,
            size=size,
            num_elements=merged["num_elements"],
            batch_size=merged["batch_size"],
            fields=fields,
            transforms=tuple(_substitute(copy.deepcopy(self.raw["transforms"]), dims)),
            options={k: merged[k] for k in OPTION_KEYS if k in merged},
        )


@dataclass(frozen=True)
class Catalog:
    path: Path
    scenarios: dict[str, Scenario]

    def get(self, scenario_id: str) -> Scenario:
        try:
            return self.scenarios[scenario_id]
        except KeyError:
            raise UserError(
                f"unknown scenario {scenario_id!r}; expected one of {', '.join(self.scenarios)}"
            ) from None


def _check_catalog(doc: dict[str, Any], path: Path) -> None:
    """What a JSON Schema cannot say: names that must refer to each other."""
    for sid, s in doc["scenarios"].items():
        where = f"{path}: scenarios.{sid}"
        for name in s["default_variants"]:
            if name not in s["variants"]:
                raise UserError(
                    f"{where}.default_variants: unknown variant {name!r}; "
                    f"expected one of {', '.join(s['variants'])}"
                )
        needed = _referenced_dims([f["shape"] for f in s["fields"].values()])
        needed |= _referenced_dims([f["generator"] for f in s["fields"].values()])
        needed |= _referenced_dims(s["transforms"])
        for vname, v in s["variants"].items():
            option = REQUIRED_OPTION.get(s["measure"])
            if option and option not in v:
                raise UserError(
                    f"{where}.variants.{vname}: missing {option!r}; every variant of a "
                    f"{s['measure']!r} scenario must say its {option}"
                )
            missing = sorted(needed - set(v["dims"]))
            if missing:
                raise UserError(
                    f"{where}.variants.{vname}.dims: missing {', '.join(missing)}; "
                    "expected a value for every dimension the scenario names"
                )
        for name, f in s["fields"].items():
            _check_jpeg_field(f, f"{where}.fields.{name}")
        _check_steps(s["transforms"], f"{where}.transforms", dims_resolved=False)
        _check_variant_forms(s, where)
        known = set(s["fields"])
        for i, step in enumerate(s["transforms"]):
            if step.get("field") not in known:
                raise UserError(
                    f"{where}.transforms.{i}.field: got {step.get('field')!r}, "
                    f"expected one of {', '.join(sorted(known))}"
                )
            known |= {step[k] for k in ("output", "inputs", "targets", "mask") if k in step}


#: What a `jpeg` generator needs: the range of the images' sides and the encoder's quality.
JPEG_KEYS = ("min_side", "max_side", "quality")


def _check_jpeg_field(f: dict[str, Any], where: str) -> None:
    """A `jpeg` field holds each element's file: a ragged uint8 field with the generator's keys."""
    if f["generator"]["kind"] != "jpeg":
        return
    if f["shape"] != [None] or f["dtype"] != "uint8":
        raise UserError(
            f"{where}: a jpeg field holds each element's file as bytes; expected shape [null] "
            f"and dtype uint8, got shape {f['shape']} and dtype {f['dtype']}"
        )
    missing = [k for k in JPEG_KEYS if k not in f["generator"]]
    if missing:
        raise UserError(f"{where}.generator: missing {', '.join(missing)} for kind 'jpeg'")


def _check_steps(steps: list[Any], where: str, dims_resolved: bool) -> None:
    """Every step's op is known and its parameters are exactly the op's declared ones, each of
    the declared kind and in range (reference.OP_PARAMS)."""

    for i, step in enumerate(steps):
        at = f"{where}.{i}"
        if not isinstance(step, dict) or step.get("op") not in OP_PARAMS:
            got = step.get("op") if isinstance(step, dict) else step
            raise UserError(f"{at}.op: got {got!r}, expected one of {', '.join(OP_PARAMS)}")
        op = step["op"]
        declared = OP_PARAMS[op]
        given = set(step) - {"op", "field"}
        for name in sorted(set(declared) - given):
            raise UserError(
                f"{at} ({op}): missing parameter {name!r}; expected {declared[name].describe()}"
            )
        for name in sorted(given - set(declared)):
            expected = ", ".join(map(repr, declared)) or "none"
            raise UserError(f"{at} ({op}): unknown parameter {name!r}; expected {expected}")
        for name, param in declared.items():
            value = step[name]
            if not param.accepts(value, dims_resolved):
                raise UserError(f"{at} ({op}).{name}: got {value!r}, expected {param.describe()}")
            if param.kind == "steps":
                _check_steps(value, f"{at}.{name}", dims_resolved)
            elif param.kind == "branches":
                for b, branch in enumerate(value):
                    if not isinstance(branch, list) or not branch:
                        raise UserError(
                            f"{at} ({op}).{name}.{b}: got {branch!r}, expected a list of ops"
                        )
                    _check_steps(branch, f"{at}.{name}.{b}", dims_resolved)


def _forms(variant: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """A variant's full form and its tiny form, with the tiny overrides applied."""
    tiny = {
        **variant,
        **variant["tiny"],
        "dims": {**variant["dims"], **variant["tiny"].get("dims", {})},
    }
    return {"": variant, ".tiny": tiny}


def _check_variant_forms(s: dict[str, Any], where: str) -> None:
    """Each form of each variant: batches fit in the elements, parameters in range once the
    dimensions are known."""
    for vname, v in s["variants"].items():
        for suffix, form in _forms(v).items():
            at = f"{where}.variants.{vname}{suffix}"
            if form["batch_size"] > form["num_elements"]:
                raise UserError(
                    f"{at}.batch_size: got {form['batch_size']}, expected at most num_elements "
                    f"({form['num_elements']}): not one whole batch"
                )
            resolved = _substitute(copy.deepcopy(s["transforms"]), form["dims"])
            try:
                _check_steps(resolved, "transforms", dims_resolved=True)
            except UserError as exc:
                raise UserError(f"{at}: {exc}") from None


@cache
def _load_catalog(path: Path) -> Catalog:
    doc = read_yaml(path)
    validate(doc, "catalog", path)
    _check_catalog(doc, path)
    scenarios = {
        sid: Scenario(
            id=sid,
            name=s["name"],
            category=s["category"],
            measure=s["measure"],
            description=" ".join(s["description"].split()),
            raw=s,
        )
        for sid, s in doc["scenarios"].items()
    }
    return Catalog(path=path, scenarios=scenarios)


def load_catalog(path: Path | None = None) -> Catalog:
    return _load_catalog(Path(path or paths.catalog_path()).resolve())


#: Pipeline styles. `plain`: every transform per element, the pipeline a user writes first.
#: `tuned`: the pipeline the framework's own performance guide recommends, delivering the same
#: bytes as the plain one (value-wise steps after batching, where the framework can).
STYLES = ("plain", "tuned")


@dataclass(frozen=True)
class Profile:
    name: str
    description: str
    backend: str
    size: str
    seed: int
    measurement: dict[str, Any]
    parallelism: dict[str, int]
    scenarios: list[str]
    variants: dict[str, list[str]]
    cloud: dict[str, Any]
    # Not a measured setting: a retried cell's number is the same number.
    retries: int = 1
    #: The feed measurement of the throughput cells (`feed.FeedSettings`), or None.
    feed: dict[str, Any] | None = None
    #: Pipeline styles measured per cell (`adapters.base.STYLES`); which cells, not how.
    styles: tuple[str, ...] = STYLES
    #: Adapter ids measured per cell; empty: every registered adapter. Which cells, not how.
    adapters: tuple[str, ...] = ()
    #: How the tuned style's parallelism sweep measures each point (`tuning.TuningSettings`).
    tuning: dict[str, Any] | None = None
    #: The thread variables every worker process starts with (None: unset); the others of
    #: `provenance.THREAD_VARIABLES` are removed. SkyPilot sets OMP_NUM_THREADS=1 for every
    #: job, so the default makes a local run measure what a remote one does.
    threads_env: dict[str, int | None] = field(default_factory=lambda: dict(DEFAULT_THREADS_ENV))
    #: Not from the profile's file: for a cell's later worker processes, the first process's
    #: tuned choice, measured again without a sweep (`processes.worker_profile`).
    tuned_choice: dict[str, Any] | None = None

    def variants_for(self, scenario: Scenario) -> list[str]:
        return list(self.variants.get(scenario.id, scenario.default_variants))

    def cells(self, catalog: Catalog, scenarios: list[str] | None = None) -> list[tuple[str, str]]:
        """(scenario, variant) pairs the profile measures, optionally narrowed to `scenarios`."""
        chosen = scenarios or self.scenarios
        return [(sid, v) for sid in chosen for v in self.variants_for(catalog.get(sid))]

    def feeds(self, scenario: str, measure: str) -> bool:
        """Whether this profile measures the feed (`feed.py`) of a cell of `scenario`."""
        if self.feed is None or measure != FEED_MEASURE:
            return False
        return "scenarios" not in self.feed or scenario in self.feed["scenarios"]

    def settings(self, workload: Workload | None = None) -> dict[str, Any]:
        """The measurement settings; with `workload`, those of that one cell (the feed only where
        the profile measures it). A cell's settings are the one definition of "measured with
        other settings": results record them, and the workflow's rerun trigger, `--resume-dir`
        and managed shards compare them."""
        settings = {
            "backend": self.backend,
            "size": self.size,
            "seed": self.seed,
            "measurement": self.measurement,
            "parallelism": self.parallelism,
            "threads_env": self.threads_env,
        }
        fed = self.feed is not None
        if workload is not None:
            fed = self.feeds(workload.scenario, workload.measure)
        if fed:  # absent, not null: a profile without it re-runs nothing
            settings["feed"] = self.feed
        if self.tuning is not None:
            settings["tuning"] = self.tuning
        return settings


def profile_names() -> list[str]:
    return sorted(p.stem for p in paths.profiles_dir().glob("*.yaml"))


def load_profile(name: str, catalog: Catalog | None = None) -> Profile:
    path = paths.profiles_dir() / f"{name}.yaml"
    if not path.is_file():
        raise UserError(f"unknown profile {name!r}; expected one of {', '.join(profile_names())}")
    doc = read_yaml(path)
    validate(doc, "profile", path)
    _, least, most = stats.repetition_bounds(doc["measurement"])
    if least > most:
        raise UserError(
            f"{path}: measurement.max_repetitions: {most} is fewer than the {least} repetitions "
            "it must at least measure; expected max_repetitions >= min_repetitions (or repetitions)"
        )
    catalog = catalog or load_catalog()
    for sid in doc["scenarios"]:
        if sid not in catalog.scenarios:
            raise UserError(
                f"{path}: scenarios: unknown scenario {sid!r}; "
                f"expected one of {', '.join(catalog.scenarios)}"
            )
    for sid, names in doc.get("variants", {}).items():
        scenario = catalog.scenarios.get(sid)
        if scenario is None:
            raise UserError(
                f"{path}: variants.{sid}: unknown scenario; "
                f"expected one of {', '.join(catalog.scenarios)}"
            )
        for v in names:
            if v not in scenario.variants:
                raise UserError(
                    f"{path}: variants.{sid}: unknown variant {v!r}; "
                    f"expected one of {', '.join(scenario.variants)}"
                )
    throughput = [s for s in doc["scenarios"] if catalog.scenarios[s].measure == FEED_MEASURE]
    for sid in doc.get("feed", {}).get("scenarios", []):
        if sid not in throughput:
            raise UserError(
                f"{path}: feed.scenarios: got {sid!r}, expected a throughput scenario of the "
                f"profile ({', '.join(throughput) or 'it has none'})"
            )
    return Profile(
        name=name,
        description=doc["description"],
        backend=doc["backend"],
        size=doc["size"],
        seed=doc["seed"],
        measurement=doc["measurement"],
        parallelism=doc["parallelism"],
        scenarios=list(doc["scenarios"]),
        variants={k: list(v) for k, v in doc.get("variants", {}).items()},
        cloud=doc["cloud"],
        retries=doc.get("retries", 1),
        feed=doc.get("feed"),
        styles=tuple(doc.get("styles", STYLES)),
        adapters=tuple(doc.get("adapters", ())),
        tuning=doc.get("tuning"),
        threads_env=dict(doc.get("threads_env", DEFAULT_THREADS_ENV)),
    )
