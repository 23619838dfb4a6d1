#!/usr/bin/env bash
# Put imbalanced-losses 0.6.0 (the package-registry release, used as a black box) into .gpu_inc/
# at the repository root, an ignored folder that travels with a device run of gpu_check.py:
#
#   bash benchmarks/gpu_check.sh                # where pip reaches the registry
#   python3 benchmarks/gpu_check.py --out DIR   # on the GPU machine, .gpu_inc/ carried along
#
# No dependencies are installed (--no-deps): the GPU machine's own torch is used.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
rm -rf .gpu_inc
"$PYTHON" -m pip install --quiet --no-deps --no-compile --target .gpu_inc imbalanced-losses==0.6.0
"$PYTHON" - <<'PY'
import json, pathlib
found = sorted(p.name for p in pathlib.Path(".gpu_inc").glob("imbalanced_losses-*.dist-info"))
print(json.dumps({"installed": found}))
PY
