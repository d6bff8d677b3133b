#!/usr/bin/env bash
# Set up the project on a fresh machine (idempotent, quick when nothing changed):
# a virtualenv in .venv with the locked dependencies and the CPU build of torch, the project
# installed in editable mode, and a default DAGSTER_HOME (the project's dagster_home/) for every
# program of the virtualenv.
#
# Environment: PYTHON (interpreter to use, default python3),
#   INSTRUCTCV_TORCH_INDEX (extra package index for torch, e.g. https://download.pytorch.org/whl/cu128
#   on a GPU machine; default: the CPU wheel index unless a local CPU wheel is configured).
set -euo pipefail
cd "$(dirname "$0")/.."

python=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$python" -m venv .venv
# shellcheck disable=SC1091
. .venv/bin/activate

stamp=.venv/.instructcv-installed
want=$(cat requirements.lock pyproject.toml | sha256sum | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  # torch==2.13.0 from PyPI is the CUDA build on Linux (several GB): take the CPU wheel instead,
  # from a configured local wheel folder when there is one, else from the PyTorch CPU index.
  links="${PIP_FIND_LINKS:-} $(python -m pip config get global.find-links 2>/dev/null || true)"
  local_cpu_wheel=""
  for dir in $links; do
    ls "$dir"/torch-2.13.0+cpu-*.whl >/dev/null 2>&1 && local_cpu_wheel=yes
  done
  if [ -n "${INSTRUCTCV_TORCH_INDEX:-}" ]; then
    export PIP_EXTRA_INDEX_URL="$INSTRUCTCV_TORCH_INDEX"
  elif [ -z "$local_cpu_wheel" ]; then
    export PIP_EXTRA_INDEX_URL="https://download.pytorch.org/whl/cpu"
  fi
  echo "setup: installing locked dependencies into .venv (about 2 minutes on a fresh machine)"
  python -m pip install --progress-bar off -q --upgrade pip
  python -m pip install --progress-bar off -q -c requirements.lock -e ".[test]"
  python -c "import torch; assert '+cu' not in torch.__version__ or '${INSTRUCTCV_TORCH_INDEX:-}', torch.__version__"
  echo "$want" > "$stamp"
fi

# The Dagster UI test drives Debian's headless chromium through its chromedriver (never a downloaded
# browser). Installed when missing and apt-get is usable (root); INSTRUCTCV_SKIP_BROWSER=1 skips it.
if [ -z "${INSTRUCTCV_SKIP_BROWSER:-}" ] && ! { [ -x /usr/bin/chromium ] && [ -x /usr/bin/chromedriver ]; }; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "setup: installing Debian's chromium and chromium-driver for the UI test"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null
  else
    echo "setup: note: the UI test needs Debian's chromium and chromium-driver (apt-get install chromium chromium-driver)"
  fi
fi

# The Dagster CLI reads DAGSTER_HOME before it imports any project code, and it must be absolute:
# a .pth file makes the venv's interpreter default it to this checkout's dagster_home/ at start-up.
# An explicit DAGSTER_HOME in the environment still wins.
mkdir -p dagster_home
site=$(python -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
printf 'import os; os.environ.setdefault("DAGSTER_HOME", %s)\n' \
  "$(python -c "import json, os; print(json.dumps(os.path.abspath('dagster_home')))")" > "$site/instructcv_dagster_home.pth"
echo "setup: ready (.venv; default DAGSTER_HOME=$(pwd)/dagster_home)"
