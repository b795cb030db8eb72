#!/usr/bin/env bash
# Bootstraps the machine (hack/bootstrap.sh) and runs the whole benchmark: bench/RESULTS.md and
# bench/cost-vs-size.svg are rewritten. Extra arguments go to bench/run.py (e.g. --quick).
# Needs root; takes about 15 minutes on a 2-CPU machine (--quick: 2-3 minutes).
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo"
bash hack/bootstrap.sh
command -v strace >/dev/null || { DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends strace >/dev/null; }
# shellcheck source=hack/env.sh
source hack/env.sh
exec python bench/run.py "$@"
