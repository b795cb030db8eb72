#!/usr/bin/env bash
# Builds the documentation site (antsibull-docs + Sphinx) and prints where the HTML is.
#   hack/docs.sh [DEST]     DEST defaults to build/docsite in this checkout (gitignored)
# The site holds every module, filter and role page (from DOCUMENTATION and meta/argument_specs.yml) and the
# pages in docs/docsite/. The build is strict: a documentation error or a broken link fails it.
# DEST is emptied first, so it must be empty, missing, or an earlier build of this script.
set -euo pipefail
cd "$(dirname "$0")/.."
bash hack/bootstrap.sh
source hack/env.sh

dest=$(realpath -m "${1:-$RTVIRT_REPO/build/docsite}")
marker=.rtvirt-kvm-docsite
if [[ -e "$dest" && ! -e "$dest/$marker" ]] && [[ -n "$(ls -A "$dest")" ]]; then
  echo "hack/docs.sh: $dest is not empty and not a site this script built (no $marker): choose another DEST" >&2
  exit 2
fi
rm -rf "$dest"
mkdir -p "$dest"
touch "$dest/$marker"

antsibull-docs sphinx-init --use-current --squash-hierarchy --fail-on-error \
  --project rtvirt.kvm --copyright "rtvirt.kvm contributors" \
  --title "rtvirt.kvm documentation" --html-short-title rtvirt.kvm \
  --dest-dir "$dest" rtvirt.kvm >/dev/null

# The generated conf.py fetches docs.python.org's and docs.ansible.com's intersphinx inventories, which
# this machine cannot reach: link the few Ansible pages antsibull-docs refers to directly instead
# (hack/docsite/rtvirt_offline_refs.py), so that -W still fails on every other broken reference.
cat >> "$dest/conf.py" <<CONF

# hack/docs.sh: no intersphinx downloads; rtvirt_offline_refs links the Ansible pages the generated RST names.
# rtvirt_images puts docs/images/ beside the pages of docs/docsite/rst/ (antsibull-docs copies only .rst files).
import sys  # noqa: E402
sys.path.insert(0, "$RTVIRT_REPO/hack/docsite")
intersphinx_mapping = {}
extensions += ["rtvirt_offline_refs", "rtvirt_images"]
rtvirt_images_source = "$RTVIRT_REPO/docs/images"
CONF

bash "$dest/build.sh"
echo "HTML: $dest/build/html/index.html"
