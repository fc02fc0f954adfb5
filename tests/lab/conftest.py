"""Fixtures for kernel-lab tests (network namespaces; root).

Skip rule (team rule): lab tests skip only when not root AND env CI is unset; with CI set and
not root they fail, so CI can never silently skip the real-kernel checks.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from punchthrough.lab import PROFILE_NAMES, HostSpec, Lab


def require_lab() -> None:
    if os.geteuid() == 0:
        return
    if os.environ.get("CI"):
        pytest.fail("lab tests must run in CI: run pytest as root (namespaces, nftables)")
    pytest.skip("lab tests need root (set CI=1 to make this a failure)")


def pytest_runtest_setup(item: pytest.Item) -> None:
    if item.get_closest_marker("lab") is not None:
        require_lab()


@pytest.fixture(scope="session")
def nat_lab() -> Iterator[Lab]:
    """One host behind each of the 8 profiles; our STUN server and coturn running.

    Shared by the whole session: tests must not change its routers (build their own lab with
    `lab_factory` for that)."""
    require_lab()
    with Lab(PROFILE_NAMES) as lab:
        yield lab


@pytest.fixture
def lab_factory() -> Iterator[Callable[..., Lab]]:
    """Build extra labs (`lab_factory(hosts, **Lab kwargs)`); all are torn down afterwards."""
    require_lab()
    labs: list[Lab] = []

    def make(hosts: list[str | HostSpec], **kwargs: Any) -> Lab:
        lab = Lab(hosts, **kwargs)
        labs.append(lab)
        return lab.__enter__()

    try:
        yield make
    finally:
        errors = []
        for lab in reversed(labs):
            try:
                lab.close()
            except Exception as exc:  # close every lab even if one fails
                errors.append(exc)
        if errors:
            raise errors[0]
