"""The Snakemake HTML report of a real smoke run, opened in headless Chromium as a reader would."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import matplotlib.image
import pytest
from support import BIN, ROOT

SCENARIOS = ("TAB-1", "IO-1")  # IO-1 also has cells the NumPy reference does not support
CONFIG = ["profile=smoke", f"scenarios=[{','.join(SCENARIOS)}]", "adapters=[numpy]"]
CHROMIUM = shutil.which("chromium")

pytestmark = pytest.mark.skipif(
    CHROMIUM is None,
    reason="chromium is not installed (Debian: apt-get install -y chromium, as in the README)",
)


def _snakemake(workdir: Path, *args: str) -> None:
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    env.pop("DATARAX_BENCH_ROOT", None)
    cmd = [str(BIN / "snakemake"), *args, "--config", *CONFIG]
    proc = subprocess.run(cmd, cwd=workdir, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]


def _chromium(*args: str) -> subprocess.CompletedProcess:
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--window-size=1280,900"]
    # The report is a JavaScript app: give it (virtual) time to render before the capture.
    cmd += ["--virtual-time-budget=8000", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=True)


def _visible_text(html: str) -> str:
    body = html[html.find("<body") :]
    body = re.sub(r"<(script|style|noscript)\b.*?</\1>", " ", body, flags=re.S)
    return " ".join(re.sub(r"<[^>]+>", " ", body).split())


@pytest.fixture(scope="module")
def report(tmp_path_factory, data_cache) -> Path:
    workdir = tmp_path_factory.mktemp("report") / "checkout"
    workdir.mkdir()
    shutil.copy(ROOT / "Snakefile", workdir / "Snakefile")
    shutil.copytree(ROOT / "config", workdir / "config")
    shutil.copytree(ROOT / "workflow", workdir / "workflow")
    _snakemake(workdir, "--cores", "2")
    _snakemake(workdir, "--report", "report.html")
    return workdir / "report.html"


@pytest.mark.slow
def test_the_report_loads_in_chromium_and_lists_every_scenario_category(report, tmp_path):
    raw = _visible_text(report.read_text(errors="replace"))
    # Before its scripts run, the page shows no category: what follows is rendered by them.
    assert not any(scenario in raw for scenario in SCENARIOS)
    dom = _chromium("--dump-dom", report.as_uri()).stdout
    text = _visible_text(dom)
    assert "Snakemake Report" in text and "Workflow" in text and "Results" in text
    menu = text[text.index("Results") :]
    for category in (*SCENARIOS, "Summary"):
        assert re.search(rf"\b{re.escape(category)}\b", menu), (category, menu[:400])
    assert "profile smoke" in text  # the workflow description (workflow.rst) rendered

    shot = tmp_path / "report.png"
    _chromium(f"--screenshot={shot}", report.as_uri())
    pixels = matplotlib.image.imread(shot)
    assert pixels.shape[:2] == (900, 1280)
    assert pixels.std() > 0.05, "the screenshot is not a blank page"
