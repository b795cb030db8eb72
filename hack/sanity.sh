#!/usr/bin/env bash
# ansible-test must run from a directory named ansible_collections/<ns>/<name>: copy the checkout's
# files (tracked and untracked-not-ignored) into one and run the sanity tests there, with this
# project's virtualenv as the Python ansible-test tests against.
set -euo pipefail
source "$(dirname "$0")/env.sh"
cd "$RTVIRT_REPO"
work=$(mktemp -d /tmp/rtvirt-sanity.XXXXXX)
trap 'rm -rf "$work"' EXIT
dest="$work/ansible_collections/rtvirt/kvm"
mkdir -p "$dest"
git ls-files -z --cached --others --exclude-standard | while IFS= read -r -d '' f; do
  [[ -e "$f" ]] && printf '%s\0' "$f"
done | rsync -a --from0 --files-from=- ./ "$dest/"
# ansible-test bootstraps pip in its venvs with a script from its own CDN, which these machines cannot
# reach (only PyPI is). Give it a stand-in that runs the pip of this project's virtualenv instead:
# same effect, packages still come from PyPI.
pip_version=$(python - <<'PY'
import re, ansible_test, pathlib
text = (pathlib.Path(ansible_test.__file__).parent / "_internal" / "python_requirements.py").read_text()
print(re.search(r"pip='([0-9.]+)'", text).group(1))
PY
)
cache=~/.ansible/test/cache/get_pip_${pip_version//./_}.py
if [[ ! -s "$cache" ]] || ! grep -q rtvirt "$cache"; then
  mkdir -p "$(dirname "$cache")"
  pip_dir=$(python -c 'import os, pip; print(os.path.dirname(os.path.dirname(pip.__file__)))')
  cat > "$cache" <<PY
# rtvirt.kvm stand-in for get-pip.py: install pip with the project's own pip from PyPI.
import sys
sys.path.insert(0, "$pip_dir")
from pip._internal.cli.main import main
args = [a for a in sys.argv[1:] if a not in ("--no-setuptools", "--no-wheel")]
sys.exit(main(["install", "--disable-pip-version-check"] + args))
PY
fi
cd "$dest"
git init -q && git add -A && git -c user.email=ci@localhost -c user.name=ci commit -qm sanity
ansible-test sanity --local --python 3.11 --color no "$@"
