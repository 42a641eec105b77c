#!/usr/bin/env bash
# Setup of every task file in benchmarks/sky (and of the workflow's clusters, rendered from
# them), run by SkyPilot in the synced checkout: install the pinned stack into a venv of our own.
#
# Needs on the image: bash, coreutils (`timeout`, `sha256sum`), curl and some python3 (SkyPilot
# needs these on its nodes too), and internet access to PyPI; without a Python 3.11 on the image,
# uv fetches its standalone build. uv itself is PyPI's wheel, checked against the hash below and
# unpacked to a directory of ours: not `pip install --user` (PEP 668 refuses it on Ubuntu 23.04+
# and Debian 12 images) and not ~/.local/bin, where SkyPilot keeps its own runtime uv.
#
# DATARAX_BENCH_SETUP_TIMEOUT_MIN (default 40) bounds the install: a stalled download fails the
# setup instead of keeping the cluster busy (and billing) forever.
set -euo pipefail

UV_VERSION=0.13.8
TOOLS="$HOME/.datarax-bench/bin"
LIMIT_MIN="${DATARAX_BENCH_SETUP_TIMEOUT_MIN:-40}"

install_stack() {
  local venv="$1" url sha tmp
  case "$(uname -m)" in
    x86_64)
      url=https://files.pythonhosted.org/packages/c5/32/52ee34636aea1ab3f8baeeae1c3599461b8cddfb379862cc72ac61b8d91c/uv-0.13.8-py3-none-manylinux_2_17_x86_64.manylinux2014_x86_64.whl
      sha=e18a57b8b352eb7c8feb317b9f6f533c8f0ad9673fd6cf34bbe3cf1a9f6a8984 ;;
    aarch64)
      url=https://files.pythonhosted.org/packages/80/ce/f5eba24d8ec7fa566f9d50d1a69dbf9510137c30366b9f16dbeaf9b9dae4/uv-0.13.8-py3-none-manylinux_2_28_aarch64.whl
      sha=5337c30bb893b4f9ce0ceb921ba2da0d13f649da644f40ad3bef84083bef0203 ;;
    *) echo "setup: no uv wheel pinned for $(uname -m)" >&2; return 1 ;;
  esac
  # `uv 0.13.8 (x86_64-unknown-linux-gnu)`: anything else is replaced.
  if [[ "$("$TOOLS/uv" --version 2>/dev/null || true)" != "uv $UV_VERSION "* ]]; then
    mkdir -p "$TOOLS"
    tmp="$(mktemp -d)"
    curl -fsSL --retry 5 --retry-delay 5 --connect-timeout 20 --max-time 600 -o "$tmp/uv.whl" "$url"
    echo "$sha  $tmp/uv.whl" | sha256sum -c --quiet -
    python3 -c 'import sys, zipfile; open(sys.argv[2], "wb").write(zipfile.ZipFile(sys.argv[1]).read(sys.argv[3]))' \
      "$tmp/uv.whl" "$TOOLS/uv.part" "uv-$UV_VERSION.data/scripts/uv"
    chmod +x "$TOOLS/uv.part"
    mv "$TOOLS/uv.part" "$TOOLS/uv"
    rm -rf "$tmp"
  fi
  # Our uv, our settings: no uv.toml of the image picks the index or the Python.
  export UV_NO_CONFIG=1 UV_HTTP_TIMEOUT=120
  "$TOOLS/uv" venv --quiet --allow-existing --python 3.11 "$venv"
  # Exact pins: constraints.txt pins every package these extras pull on Linux (tests/test_locks.py).
  "$TOOLS/uv" pip install --quiet --compile-bytecode --python "$venv/bin/python" \
    -c constraints.txt -e ".[bench${DATARAX_BENCH_EXTRA:+,$DATARAX_BENCH_EXTRA}]"
}

if [ "${1:-}" = "--install" ]; then
  install_stack "$2"
  exit 0
fi

if [ -n "${DATARAX_BENCH_PREINSTALLED_VENV:-}" ]; then
  # An image that already carries the pinned stack (a custom image, the test loopback node).
  VENV="$DATARAX_BENCH_PREINSTALLED_VENV"
else
  VENV="$HOME/datarax-bench-venv"
  if ! [[ "$LIMIT_MIN" =~ ^[0-9]+([.][0-9]+)?$ ]] || [[ "$LIMIT_MIN" =~ ^[0.]+$ ]]; then
    echo "setup: DATARAX_BENCH_SETUP_TIMEOUT_MIN must be a positive number of minutes, not '$LIMIT_MIN'" >&2
    exit 2
  fi
  rc=0
  # timeout signals the whole process group (uv, curl), then SIGKILLs it a minute later.
  timeout --kill-after=60 "${LIMIT_MIN}m" bash "$0" --install "$VENV" || rc=$?
  if [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then
    echo "setup: FAILED: the install did not finish within $LIMIT_MIN min (DATARAX_BENCH_SETUP_TIMEOUT_MIN)" >&2
    exit 124
  elif [ "$rc" -ne 0 ]; then
    echo "setup: FAILED: the install exited with status $rc" >&2
    exit "$rc"
  fi
fi

# Provenance reads the commit from the synced .git: say so now if the image cannot.
command -v git > /dev/null || echo "setup: WARNING: no git on this image; results will name no commit" >&2

# Every later command (run, `sky exec` cells) sources this file; PYTHONPATH makes the synced
# sources win over whatever copy the environment was built from.
cat > "$HOME/.datarax-bench-env" <<ENVFILE
export PATH="$VENV/bin:\$PATH"
export PYTHONPATH="$PWD/src"
export DATARAX_BENCH_ROOT="$PWD"
ENVFILE
source "$HOME/.datarax-bench-env"
datarax-bench list --profile "$DATARAX_BENCH_PROFILE" > /dev/null
echo "setup: done ($VENV)"
