"""Reading the client's ``_count`` and a cursor's skip (pipeline.pages): ASCII digits only."""

from __future__ import annotations

import pytest

from middleware.pipeline.pages import MAX_COUNT, requested_count, split_skip, with_skip


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        # what FHIR allows
        ("0", 0),
        ("10", 10),
        ("007", 7),
        (str(MAX_COUNT), MAX_COUNT),
        # larger than any page: read as the most there is
        (str(MAX_COUNT + 1), MAX_COUNT),
        ("1" * 5_000, MAX_COUNT),  # int() refuses more than 4,300 digits
        ("0" * 5_000 + "5", 5),
        # not a number in ASCII digits: no count asked
        ("\u00b2", None),  # superscript two: str.isdigit() is True, int() refuses it
        ("\u0663", None),  # Arabic-Indic three: int() reads it, FHIR does not
        ("\uff11", None),  # fullwidth one
        ("-1", None),
        ("1e3", None),
        ("", None),
    ],
    ids=[
        "zero",
        "ten",
        "leading-zeros",
        "max",
        "past-max",
        "5000-digits",
        "zeros-then-5",
        "superscript",
        "arabic-indic",
        "fullwidth",
        "negative",
        "exponent",
        "empty",
    ],
)
def test_requested_count(value: str, expected: int | None) -> None:
    """Attack: ``_count=%C2%B2`` and a 5,000-digit count passed ``str.isdigit`` and made
    ``int`` raise ValueError: a 500."""
    assert requested_count([("_count", value)]) == expected


def test_the_last_count_counts_and_none_is_none() -> None:
    assert requested_count([("_count", "3"), ("_count", "4")]) == 4
    assert requested_count([("patient", "p1")]) is None


@pytest.mark.parametrize("skip", ["\u00b2", "1" * 5_000, "-2"])
def test_a_skip_that_is_not_ascii_digits_is_no_skip(skip: str) -> None:
    assert split_skip(f"http://up/fhir?page=2#consentry-skip={skip}")[1] == 0


def test_a_skip_round_trips() -> None:
    assert split_skip(with_skip("http://up/fhir?page=2", 7)) == ("http://up/fhir?page=2", 7)
