#!/usr/bin/env bash
# Packaging check (`make package`): build the sdist and, from it, the wheel; install the wheel into
# a clean virtualenv (torch==2.13.0 first, as the README says); then run the user's page
# (tests/test_seed.py with tests/seed/) from a folder outside the checkout, so that
# `import imbalanced_losses` can only resolve to the installed wheel.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

"$PY" -m build --outdir "$work/dist" . >"$work/build.log" 2>&1 || { cat "$work/build.log"; exit 1; }
ls -l "$work"/dist/*.tar.gz "$work"/dist/*.whl

python3 -m venv "$work/venv"
"$work/venv/bin/python" -m pip install --quiet torch==2.13.0
"$work/venv/bin/python" -m pip install --quiet "$work"/dist/*.whl pytest

mkdir "$work/page"
cp -r tests/test_seed.py tests/conftest.py tests/seed "$work/page/"
cd "$work/page"
"$work/venv/bin/python" - <<'PY'
import imbalanced_losses

assert "site-packages" in imbalanced_losses.__file__, imbalanced_losses.__file__
print("installed imbalanced_losses", imbalanced_losses.__version__)
PY
"$work/venv/bin/python" -m pytest -q -p no:cacheprovider test_seed.py
