# Copyright (c) rtvirt.kvm contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Sphinx extension for hack/docs.sh: resolve the generated pages' links into the Ansible docs without intersphinx.

antsibull-docs links every module page to Ansible's "common return values" page, the environment variable
index to the configuration settings, and ``M(ansible.builtin.x)`` to ansible-core's plugin pages. Those labels
live in docs.ansible.com's intersphinx inventory, which this build cannot fetch (no network beyond the package
registries), and an unresolved label fails the strict (``-W``) build. This extension links exactly those labels
to the pages the inventory would name; every other unresolved label (a typo, a link to a page of this
collection that does not exist) stays a warning and fails the build.
"""

from __future__ import annotations

import re

from docutils import nodes

ANSIBLE_DOCS = "https://docs.ansible.com/projects/ansible/devel/"

# Label -> (page below ANSIBLE_DOCS, title used when the reference gives none).
APPENDIX = {
    "common_return_values": ("reference_appendices/common_return_values.html", "Return Values"),
    "ansible_configuration_settings": ("reference_appendices/config.html", "Ansible Configuration Settings"),
}

# antsibull-docs' label of an ansible.builtin plugin page, e.g. ansible_collections.ansible.builtin.copy_module.
BUILTIN = re.compile(r"^ansible_collections\.ansible\.builtin\.(?P<page>[a-z0-9_]+_[a-z]+)$")


def external_page(target):
    """(url, default title) for a label of the Ansible docs this build links to, else None."""
    if target in APPENDIX:
        page, title = APPENDIX[target]
        return ANSIBLE_DOCS + page, title
    match = BUILTIN.match(target)
    if match:
        page = match.group("page")
        return "%scollections/ansible/builtin/%s.html" % (ANSIBLE_DOCS, page), "ansible.builtin." + page
    return None


def _missing_reference(app, env, node, contnode):
    if node.get("refdomain") != "std" or node.get("reftype") != "ref":
        return None
    found = external_page(node.get("reftarget", ""))
    if found is None:
        return None
    url, title = found
    content = contnode if node.get("refexplicit") else nodes.inline(title, title)
    reference = nodes.reference("", "", internal=False, refuri=url)
    reference += content
    return reference


def setup(app):
    app.connect("missing-reference", _missing_reference)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
