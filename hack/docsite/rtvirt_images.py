# Copyright (c) rtvirt.kvm contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Sphinx extension for hack/docs.sh: make docs/images/ available to the pages of docs/docsite/rst/.

antsibull-docs copies only the ``.rst`` files of docs/docsite/rst/ into the site's sources, so an
``.. image:: images/x.png`` in one of those pages would find nothing. Before Sphinx reads the sources, this
copies the images of ``rtvirt_images_source`` (docs/images/) to ``<sources>/docsite/images/``, next to the
pages that show them. A page that names an image missing there still fails the strict build.
"""

from __future__ import annotations

import os
import shutil

SUFFIXES = (".png", ".svg", ".jpg", ".jpeg", ".gif")


def copy_images(source, pages_dir):
    """Copy the images in ``source`` to ``pages_dir``/images; return the names copied, sorted."""
    if not source or not os.path.isdir(source):
        return []
    names = sorted(name for name in os.listdir(source) if name.lower().endswith(SUFFIXES)
                   and os.path.isfile(os.path.join(source, name)))
    if names:
        target = os.path.join(pages_dir, "images")
        os.makedirs(target, exist_ok=True)
        for name in names:
            shutil.copyfile(os.path.join(source, name), os.path.join(target, name))
    return names


def _builder_inited(app):
    copy_images(app.config.rtvirt_images_source, os.path.join(str(app.srcdir), "docsite"))


def setup(app):
    app.add_config_value("rtvirt_images_source", "", "env")
    app.connect("builder-inited", _builder_inited)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
