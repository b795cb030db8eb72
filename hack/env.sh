# Sourced by hack/*.sh and Makefile targets: puts the project's virtualenv and collection on the path.
# shellcheck shell=bash
RTVIRT_REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
export RTVIRT_REPO
export PATH="$RTVIRT_REPO/.venv/bin:$PATH"
export ANSIBLE_COLLECTIONS_PATH="$RTVIRT_REPO/.venv"
export ANSIBLE_CONFIG="$RTVIRT_REPO/ansible.cfg"
# Interpreter discovery finds a pyenv shim here that does not run; name the interpreter explicitly.
export RTVIRT_PYTHON_INTERPRETER="$RTVIRT_REPO/.venv/bin/python"
export PYTHONDONTWRITEBYTECODE=1
