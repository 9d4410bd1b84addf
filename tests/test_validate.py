import pytest

from graphchallenge.validate import validate


def test_pass():
    result = validate([3, 1, 2], [1, 2, 3])
    assert result.passed and result.precision == result.recall == result.f1 == 1.0
    assert result.summary() == "PASS (3 categories)"


def test_missing_and_extra():
    result = validate([1, 2, 5], [1, 3, 5, 7])
    assert not result.passed
    assert result.missing == [3, 7] and result.extra == [2]
    assert result.precision == pytest.approx(2 / 3)
    assert result.recall == pytest.approx(2 / 4)
    assert result.f1 == pytest.approx(2 * (2 / 3) * 0.5 / (2 / 3 + 0.5))
    assert "2 missing" in result.summary() and "1 extra" in result.summary()


def test_empty_sets():
    assert validate([], []).passed
    result = validate([], [4])
    assert not result.passed and result.recall == 0.0 and result.precision == 0.0
