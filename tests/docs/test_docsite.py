# -*- coding: utf-8 -*-
"""The documentation site builds with hack/docs.sh, the documented command, and holds every page it should.

What a page must say is read from the sources (DOCUMENTATION, the filters' YAML, meta/argument_specs.yml,
docs/docsite/), so these tests follow the collection instead of repeating it. One build (about a quarter of
a minute) serves the whole module.
"""
from __future__ import annotations

import ast
import html.parser
import pathlib
import posixpath
import subprocess
import sys
import urllib.parse

import pytest
import yaml

REPO = pathlib.Path(__file__).resolve().parents[2]
DOCSITE = REPO / "docs" / "docsite"

sys.path.insert(0, str(REPO / "hack" / "docsite"))
import rtvirt_images  # noqa: E402
import rtvirt_offline_refs  # noqa: E402

# Sphinx's smartypants turns quotes and dashes typographic; the sources use plain ones.
_TYPOGRAPHY = str.maketrans({"\u2019": "'", "\u2018": "'", "\u201c": '"', "\u201d": '"', "\u2013": "-",
                             "\u2014": "-", "\u00a0": " "})


class _Page(html.parser.HTMLParser):
    """The visible text (whitespace folded) and the link targets of one HTML page."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.chunks, self.hrefs, self._skip = [], [], 0

    def handle_starttag(self, tag, attrs):
        if tag in ("script", "style"):
            self._skip += 1
        for name, value in attrs:
            if name in ("href", "src") and value:
                self.hrefs.append(value)

    def handle_endtag(self, tag):
        if tag in ("script", "style"):
            self._skip -= 1

    def handle_data(self, data):
        if not self._skip:
            self.chunks.append(data)

    @property
    def text(self):
        return " ".join(" ".join(self.chunks).translate(_TYPOGRAPHY).split())


def read_page(path):
    page = _Page()
    page.feed(path.read_text(encoding="utf-8"))
    return page


def folded(text):
    return " ".join(text.translate(_TYPOGRAPHY).split())


def module_docs():
    docs = {}
    for path in sorted((REPO / "plugins" / "modules").glob("*.py")):
        tree = ast.parse(path.read_text())
        for node in tree.body:
            if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "DOCUMENTATION" for t in node.targets):
                docs[path.stem] = yaml.safe_load(node.value.value)
    return docs


def filter_docs():
    return {path.stem: yaml.safe_load(path.read_text())["DOCUMENTATION"]
            for path in sorted((REPO / "plugins" / "filter").glob("*.yml"))}


def role_specs():
    return {path.parent.parent.name: yaml.safe_load(path.read_text())["argument_specs"]
            for path in sorted((REPO / "roles").glob("*/meta/argument_specs.yml"))}


def extra_pages():
    index = yaml.safe_load((DOCSITE / "extra-docs.yml").read_text())
    return [entry for section in index["sections"] for entry in section["toctree"]]


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    dest = tmp_path_factory.mktemp("docsite") / "site"
    proc = subprocess.run(["bash", str(REPO / "hack" / "docs.sh"), str(dest)], cwd=str(REPO),
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, check=False)
    assert proc.returncode == 0, proc.stdout[-6000:]
    html_dir = dest / "build" / "html"
    assert proc.stdout.rstrip().splitlines()[-1] == "HTML: %s" % (html_dir / "index.html")
    return html_dir


def test_sources_are_found():
    # Guards the tests below against passing on nothing.
    assert len(module_docs()) == len(list((REPO / "plugins" / "modules").glob("*.py"))) >= 1
    assert filter_docs() and role_specs() and extra_pages()


@pytest.mark.parametrize("name", sorted(module_docs()))
def test_module_page(site, name):
    doc = module_docs()[name]
    text = read_page(site / ("%s_module.html" % name)).text
    assert "rtvirt.kvm.%s module" % name in text
    assert folded(doc["short_description"]) in text
    for option in doc.get("options") or {}:
        assert option in text, option


@pytest.mark.parametrize("name", sorted(filter_docs()))
def test_filter_page(site, name):
    doc = filter_docs()[name]
    text = read_page(site / ("%s_filter.html" % name)).text
    assert folded(doc["short_description"]) in text


@pytest.mark.parametrize("role", sorted(role_specs()))
def test_role_page(site, role):
    text = read_page(site / ("%s_role.html" % role)).text
    for entry_point, spec in role_specs()[role].items():
        assert "Entry point %s - %s" % (entry_point, folded(spec["short_description"])) in text
        for option in spec.get("options") or {}:
            assert option in text, (entry_point, option)


@pytest.mark.parametrize("name", extra_pages())
def test_extra_docs_page(site, name):
    rst = (DOCSITE / "rst" / ("%s.rst" % name)).read_text().splitlines()
    # The page title is the first line underlined with '='.
    title = next(line for line, under in zip(rst, rst[1:]) if under and set(under) == {"="})
    assert folded(title) in read_page(site / "docsite" / ("%s.html" % name)).text
    assert folded(title) in read_page(site / "index.html").text


def test_glossary_defines_the_projects_terms(site):
    text = read_page(site / "docsite" / "glossary.html").text
    for term in ("realtime CPU", "housekeeping CPU", "emulator CPU", "resource partition", "cpuset partition",
                 "isolated cpuset partition", "cgroup v1", "cgroup v2", "hybrid cgroup host", "sibling reservation",
                 "pinning drift", "IRQ affinity", "SMT policy"):
        assert term in text, term


def test_every_local_link_resolves(site):
    broken = []
    for page in sorted(site.rglob("*.html")):
        for href in read_page(page).hrefs:
            parts = urllib.parse.urlsplit(href)
            if parts.scheme or parts.netloc or not parts.path:
                continue
            target = posixpath.normpath(posixpath.join(posixpath.dirname(page.relative_to(site).as_posix()),
                                                       urllib.parse.unquote(parts.path)))
            if not (site / target).exists():
                broken.append("%s -> %s" % (page.relative_to(site), href))
    assert not broken, broken


def test_ansible_links_point_at_docs_ansible_com(site):
    # The module pages link Ansible's common return values through rtvirt_offline_refs, not intersphinx.
    hrefs = read_page(site / "cgroup_cpuset_module.html").hrefs
    assert rtvirt_offline_refs.ANSIBLE_DOCS + "reference_appendices/common_return_values.html" in hrefs


@pytest.mark.parametrize("target, expected", [
    ("common_return_values", rtvirt_offline_refs.ANSIBLE_DOCS + "reference_appendices/common_return_values.html"),
    ("ansible_collections.ansible.builtin.copy_module",
     rtvirt_offline_refs.ANSIBLE_DOCS + "collections/ansible/builtin/copy_module.html"),
    ("ansible_collections.rtvirt.kvm.nosuch_module", None),
    ("ansible_collections.ansible.builtin.", None),
    ("ansible_collections.rtvirt.kvm.docsite.nosuch", None),
])
def test_offline_refs_link_only_ansible_pages(target, expected):
    found = rtvirt_offline_refs.external_page(target)
    assert (found[0] if found else None) == expected


def test_images_are_copied_beside_the_pages(tmp_path):
    source = tmp_path / "images"
    source.mkdir()
    (source / "map.png").write_bytes(b"\x89PNG map")
    (source / "notes.txt").write_text("not an image")
    (source / "sub.png").mkdir()
    pages = tmp_path / "rst" / "docsite"
    assert rtvirt_images.copy_images(str(source), str(pages)) == ["map.png"]
    assert sorted(p.name for p in (pages / "images").iterdir()) == ["map.png"]
    assert (pages / "images" / "map.png").read_bytes() == b"\x89PNG map"


def test_no_images_directory_copies_nothing(tmp_path):
    pages = tmp_path / "rst" / "docsite"
    assert rtvirt_images.copy_images(str(tmp_path / "missing"), str(pages)) == []
    assert not pages.exists()


def test_docs_sh_refuses_a_directory_it_did_not_build(tmp_path):
    keep = tmp_path / "mine.txt"
    keep.write_text("not a site")
    proc = subprocess.run(["bash", str(REPO / "hack" / "docs.sh"), str(tmp_path)], cwd=str(REPO),
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, check=False)
    assert proc.returncode == 2, proc.stdout
    assert "%s is not empty and not a site this script built" % tmp_path in proc.stdout
    assert keep.read_text() == "not a site"
