"""The fault and fuzz lane (`make test-faults`): every test here carries the `faults`
marker, which the default run deselects, so `make test` stays quick and this lane runs
on its own in CI. Each test prints its figures (requests lost, 5xx, hangs) with
`report()`, so the CI log shows them."""

import pytest


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/faults/" in item.nodeid:
            item.add_marker(pytest.mark.faults)


def report(title: str, **figures: object) -> None:
    """Print one figure line to the lane's log (pytest runs this lane with -s)."""
    shown = ", ".join(f"{name.replace('_', ' ')}: {value}" for name, value in figures.items())
    print(f"\n== {title}: {shown}", flush=True)
