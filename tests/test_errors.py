"""One error type: every refusal the proxy can answer is a sluiceway.Error."""

import pytest

import sluiceway
from sluiceway import CircuitOpen, ConcurrencyLimitExceeded, Error, LoadShedError, ParseError


@pytest.mark.parametrize("cls", [ParseError, LoadShedError, ConcurrencyLimitExceeded, CircuitOpen])
def test_refusals_are_errors(cls):
    assert issubclass(cls, Error)


def test_load_shed_error_maps_to_503_from_upstream():
    err = CircuitOpen("breaker open for 10.0.0.1:80", upstream="10.0.0.1:80", retry_after=2.0)
    assert (err.status, err.source, err.retryable, err.retry_after) == (503, "upstream", True, 2.0)
    assert "10.0.0.1:80" in repr(err)


def test_public_names_resolve():
    for name in sluiceway.__all__:
        assert getattr(sluiceway, name) is not None, name
