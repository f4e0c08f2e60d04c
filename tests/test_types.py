"""The type hints in elipc/ are checked: mypy, strict, as configured in pyproject.toml."""

from __future__ import annotations

import os

from twisted.trial.unittest import SynchronousTestCase

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class TypeCheckTests(SynchronousTestCase):
    """mypy runs as part of the suite, so the test command and CI both hold the hints true."""

    def test_mypy_finds_nothing(self) -> None:
        """mypy --strict (with the zope plugin for Twisted's interfaces) passes over elipc/."""
        from mypy import api

        out, err, status = api.run(["--config-file", os.path.join(ROOT, "pyproject.toml"),
                                    "--cache-dir", os.path.join(ROOT, ".mypy_cache"),
                                    os.path.join(ROOT, "elipc")])
        self.assertEqual(status, 0, out + err)
        self.assertIn("Success: no issues found", out)
