#!/usr/bin/env bash
# The deploy checks: the Helm chart (rendered and linted by Helm's own engine), the manifests
# and the CRD (Kubernetes schemas, strict, offline), the examples (the CRD's schema, and
# kubectl apply against a real control plane), the RBAC against the code's API calls,
# the Dockerfile (BuildKit's parser, hadolint), and a policy scan (checkov) of the rendered chart
# and of the children the operator writes. Python, from virtual environments created here
# (.venv-deploy, and .venv-checkov for checkov, whose pins clash with pytest's).
#
#   tests/deploy/run.sh                  # create/refresh .venv-deploy if needed, run every check
#   tests/deploy/run.sh --setup          # only create/refresh the environment
#   tests/deploy/run.sh -k rbac -x       # extra arguments go to pytest
#
# Needs python3 (3.11) with venv, and the workspace binaries for the kubectl and operator checks
# (`cargo build --workspace --bins`; those checks are skipped with a notice without them). The
# kubectl checks start `roomshard-testcluster --nodes 0` (the real control plane, built by
# testing/controlplane/build.sh on first use), which needs root.
# Ends with pytest's summary line, e.g. `==== 120 passed, 2 skipped in 40.1s ====`.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
venv="${DEPLOY_VENV:-$repo/.venv-deploy}"
requirements="$here/requirements.txt"
stamp="$venv/.requirements.sha256"

want="$(sha256sum "$requirements" | cut -d' ' -f1)"
if [ ! -x "$venv/bin/python" ] || [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "deploy checks: installing $venv from tests/deploy/requirements.txt"
  rm -rf "$venv"
  if ! python3 -m venv "$venv"; then
    echo "deploy checks: 'python3 -m venv' failed; on Debian: apt-get install python3-venv" >&2
    exit 1
  fi
  "$venv/bin/pip" install --quiet --disable-pip-version-check --no-input -r "$requirements"
  echo "$want" >"$stamp"
fi

# checkov, the policy scanner, in an environment of its own (its pins clash with pytest's).
checkov_venv="${CHECKOV_VENV:-$repo/.venv-checkov}"
checkov_requirements="$here/checkov/requirements.txt"
checkov_stamp="$checkov_venv/.requirements.sha256"
want="$(sha256sum "$checkov_requirements" | cut -d' ' -f1)"
if [ ! -x "$checkov_venv/bin/checkov" ] || [ "$(cat "$checkov_stamp" 2>/dev/null)" != "$want" ]; then
  echo "deploy checks: installing $checkov_venv from tests/deploy/checkov/requirements.txt"
  rm -rf "$checkov_venv"
  python3 -m venv "$checkov_venv"
  "$checkov_venv/bin/pip" install --quiet --disable-pip-version-check --no-input \
    -r "$checkov_requirements"
  echo "$want" >"$checkov_stamp"
fi
export CHECKOV="$checkov_venv/bin/checkov"

if [ "${1:-}" = "--setup" ]; then
  "$venv/bin/python" -c 'import helm_python; print("helm", helm_python.helm_sdk_version())'
  echo "checkov $("$CHECKOV" --version)"
  exit 0
fi

cd "$here"
# pytest's own exit code: 0 all passed, 1 some failed, 5 nothing collected (an error here).
report="$(mktemp)"
trap 'rm -f "$report"' EXIT
status=0
"$venv/bin/python" -m pytest -p no:cacheprovider -c "$here/pytest.ini" --rootdir "$here" \
  --junitxml="$report" "$@" || status=$?
# The closing line in the plain form every CI reader understands.
"$venv/bin/python" - "$report" <<'PY'
import sys, xml.etree.ElementTree as ET
suite = ET.parse(sys.argv[1]).getroot()
suite = suite if suite.tag == "testsuite" else suite.find("testsuite")
total, failed = int(suite.get("tests", 0)), int(suite.get("failures", 0)) + int(suite.get("errors", 0))
skipped = int(suite.get("skipped", 0))
print(f"deploy: {total - failed - skipped} passed, {failed} failed, {skipped} skipped")
PY
if [ "$status" -eq 5 ]; then
  echo "deploy checks: no test was collected" >&2
fi
exit "$status"
