#!/usr/bin/env bash
# Sets up everything the collection needs on a fresh Debian 12 machine (root, no systemd):
# Debian packages from hack/apt-packages.txt, a virtualenv in .venv with hack/requirements.txt,
# and .venv/ansible_collections/rtvirt/kvm pointing at this checkout so Ansible finds the
# collection as rtvirt.kvm. Safe to run again: it only installs what is missing.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo"

log() { printf '[bootstrap] %s\n' "$*" >&2; }

missing=()
while read -r pkg; do
  [[ -z "$pkg" || "$pkg" == \#* ]] && continue
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed' || missing+=("$pkg")
done < hack/apt-packages.txt
if ((${#missing[@]})); then
  log "installing Debian packages: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# Debian's /usr/bin/python3 is the interpreter every Debian host has; the venv is built from it so
# that the same interpreter runs the controller and (on localhost) the modules.
py=${RTVIRT_PYTHON:-/usr/bin/python3}
if [[ ! -x .venv/bin/python ]]; then
  log "creating .venv from $py"
  if ! "$py" -m venv .venv 2>/dev/null; then
    apt-get install -y -qq --no-install-recommends python3-venv >/dev/null
    "$py" -m venv .venv
  fi
fi
stamp=.venv/.requirements.sha
want=$(sha256sum hack/requirements.txt | cut -d' ' -f1)
if [[ "$(cat "$stamp" 2>/dev/null)" != "$want" ]]; then
  log "installing Python packages into .venv"
  .venv/bin/pip install -q --upgrade pip
  .venv/bin/pip install -q -r hack/requirements.txt
  echo "$want" > "$stamp"
fi

mkdir -p .venv/ansible_collections/rtvirt
ln -sfn ../../.. .venv/ansible_collections/rtvirt/kvm
log "ready: $(.venv/bin/ansible --version | sed -n 1p)"
