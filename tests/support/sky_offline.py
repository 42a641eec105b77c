"""A private, offline SkyPilot for tests: HOME in a temp dir, the seeded price catalog, a local
API server that is stopped afterwards. `sky launch --dryrun` then runs SkyPilot's real optimizer.

Credentials offline: Vast's check only tests that its key file exists (a dummy one is written).
GCP's check calls Google's IAM API (`testIamPermissions` in sky/clouds/gcp.py), unreachable here,
so after the server's boot-time `sky check` has finished, GCP is recorded as enabled in
SkyPilot's own state, the record a passing `sky check gcp` writes
(global_user_state.set_enabled_clouds). A failed launch makes SkyPilot re-check and forget it.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

from support import BIN, LOOPBACK

CATALOG = LOOPBACK / "catalog"
SKY = str(BIN / "sky")
ENABLED = ("Vast", "GCP")

_SEED = textwrap.dedent(
    """
    from sky import check, global_user_state, skypilot_config
    from sky.clouds import cloud
    ws = skypilot_config.get_active_workspace()
    global_user_state.set_allowed_clouds(check._get_workspace_allowed_clouds(ws), ws)
    global_user_state.set_enabled_clouds({enabled!r}, cloud.CloudCapability.COMPUTE, ws)
    """
)


def sky(env: dict[str, str], *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([SKY, *args], env=env, capture_output=True, text=True, timeout=timeout)


@contextlib.contextmanager
def offline_sky(tmp: Path, extra_env: dict[str, str] | None = None):
    """Yields the environment for `sky` calls; stops the API server on the way out."""
    home = Path(tmp) / "home"
    catalogs = home / ".sky" / "catalogs" / "v8"
    shutil.copytree(CATALOG, catalogs)
    for path in catalogs.rglob("*.csv"):
        path.touch()  # fresh: SkyPilot would otherwise try to download newer catalogs
    key = home / ".config" / "vastai" / "vast_api_key"
    key.parent.mkdir(parents=True)
    key.write_text("dummy-not-a-key\n")
    env = {**os.environ, "HOME": str(home), **(extra_env or {})}
    for name in ("GOOGLE_APPLICATION_CREDENTIALS", "SKYPILOT_API_SERVER_ENDPOINT"):
        env.pop(name, None)
    try:
        started = sky(env, "api", "start")
        assert started.returncode == 0, started.stdout + started.stderr
        # Blocks until the boot-time check is done, so that it cannot overwrite the seed.
        boot = sky(env, "api", "logs", "skypilot-server-on-boot-check")
        assert boot.returncode == 0, boot.stdout + boot.stderr
        seed = _SEED.format(enabled=list(ENABLED))
        subprocess.run([sys.executable, "-c", seed], env=env, check=True, timeout=120)
        yield env
    finally:
        sky(env, "api", "stop", timeout=120)
