"""The project ships a licence (issue 14): the Apache License 2.0 in full, declared in the
package metadata as an SPDX expression (PEP 639) and named in the README."""

from __future__ import annotations

import hashlib
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# The md5 of the Apache Software Foundation's own LICENSE-2.0.txt, unchanged.
APACHE_2_0_MD5 = "3b83ef96387f14655fc854ddc3c6bd57"


def test_the_full_apache_2_0_text_is_shipped_and_declared() -> None:
    text = (ROOT / "LICENSE").read_bytes()
    assert hashlib.md5(text, usedforsecurity=False).hexdigest() == APACHE_2_0_MD5
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["license"] == "Apache-2.0"
    assert project["license-files"] == ["LICENSE"]
    assert not [c for c in project.get("classifiers", []) if c.startswith("License ::")]
    assert "[LICENSE](LICENSE)" in (ROOT / "README.md").read_text()
