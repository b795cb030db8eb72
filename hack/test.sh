#!/usr/bin/env bash
# The README's test command: sets up this machine (Debian packages, .venv) and runs every test layer.
#   static: ansible-test sanity, ansible-lint (production profile), antsibull-docs lint
#   pytest: unit (parsers, planners, modules on fake trees), the built artifact, the real kernel's cgroupfs, a real
#           libvirtd with KVM/QEMU guests, the systemd + cgroup v2 QEMU test host, Molecule scenarios.
# Real-system tests may not skip here: a skip is a failure (RTVIRT_REQUIRE_REAL=1).
# Extra arguments go to pytest (e.g. `hack/test.sh -k cpuset` while working; CI passes none).
set -euo pipefail
cd "$(dirname "$0")/.."
bash hack/bootstrap.sh
source hack/env.sh

step() { printf '\n=== %s\n' "$*"; }

step "preflight: what the real-system layers need"
python hack/preflight.py

step "static: ansible-test sanity"
bash hack/sanity.sh

step "static: ansible-lint (production profile)"
ansible-lint --offline -q

step "static: antsibull-docs lint-collection-docs (modules, filters, roles, docs/docsite)"
# Schema, semantic markup and rstcheck of every plugin and role page, and the references in the extra docs;
# references to collections that are not installed are errors too. Findings exit non-zero.
antsibull-docs lint-collection-docs --plugin-docs --check-extra-docs-refs \
  --validate-collection-refs all --disallow-unknown-collection-refs .

step "pytest: unit, real kernel, libvirt, v2 host, molecule"
export RTVIRT_REQUIRE_REAL=1
set +e
python -m pytest tests "$@"
rc=$?
set -e
if [[ $rc -eq 5 ]]; then
  echo "FAILED: pytest collected no tests; that is an error, not a pass" >&2
  exit 1
fi
exit $rc
