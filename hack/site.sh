#!/usr/bin/env bash
# The README's main-job command: prepare this machine with playbooks/site.yml (extra arguments go to
# ansible-playbook, e.g. --check --diff).
set -euo pipefail
cd "$(dirname "$0")/.."
bash hack/bootstrap.sh
source hack/env.sh
ansible-playbook -i inventories/localhost/hosts.yml playbooks/site.yml "$@"
