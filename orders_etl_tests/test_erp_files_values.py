"""Amounts and dates as exports write them: exact Decimals, aware UTC instants."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given
from hypothesis import strategies as st

from orders_etl.sources.erp_files.dates import DateParser
from orders_etl.sources.erp_files.numbers import AmountParser

EUROPEAN = AmountParser(decimal=",", thousands=".")
ENGLISH = AmountParser(decimal=".", thousands=",")
SWISS = AmountParser(decimal=".", thousands="'")
PLAIN = AmountParser(decimal=",")


@pytest.mark.parametrize(
    ("parser", "text", "expected"),
    [
        (EUROPEAN, "1.234,56", "1234.56"),
        (EUROPEAN, "1.234.567,8", "1234567.8"),
        (EUROPEAN, "1234,56", "1234.56"),  # grouping is optional
        (EUROPEAN, "0,10", "0.10"),
        (EUROPEAN, ",5", "0.5"),
        (EUROPEAN, "12", "12"),
        (EUROPEAN, "1.000", "1000"),
        (EUROPEAN, " -12,50 ", "-12.50"),
        (EUROPEAN, "12,50-", "-12.50"),  # SAP writes the sign behind
        (ENGLISH, "1,234.56", "1234.56"),
        (SWISS, "1'234.50", "1234.50"),
        (PLAIN, "1234,567", "1234.567"),
        (AmountParser(decimal=",", thousands=" "), "1\u202f234,56", "1234.56"),  # narrow no-break space
        (AmountParser(decimal=",", thousands=" "), "1\u00a0234,56", "1234.56"),
    ],
)
def test_amounts_parse_exactly(parser: AmountParser, text: str, expected: str) -> None:
    parsed = parser.parse(text)

    assert isinstance(parsed, Decimal)
    assert parsed == Decimal(expected)
    assert str(parsed) == expected  # the scale written is kept, nothing went through float


@pytest.mark.parametrize(
    ("parser", "text"),
    [
        (EUROPEAN, "12.50"),  # a group of two digits: the file writes a decimal point
        (EUROPEAN, "1.23.456,00"),
        (EUROPEAN, "1,234,56"),
        (EUROPEAN, ""),
        (EUROPEAN, "-"),
        (EUROPEAN, "12,5O"),
        (EUROPEAN, "€ 12,50"),
        (EUROPEAN, "-12,50-"),
        (EUROPEAN, "1e3"),
        (EUROPEAN, "NaN"),
        (PLAIN, "1.234,56"),  # no thousands separator configured
        (ENGLISH, "1.234,56"),
    ],
)
def test_malformed_amounts_say_what_was_expected(parser: AmountParser, text: str) -> None:
    with pytest.raises(ValueError, match=f"is not an amount with decimal {parser.decimal!r}"):
        parser.parse(text)


@given(st.decimals(min_value=0, max_value=10**12, places=2, allow_nan=False, allow_infinity=False))
def test_european_rendering_round_trips(amount: Decimal) -> None:
    english = f"{amount:,.2f}"  # 1,234,567.89
    european = english.replace(",", "\0").replace(".", ",").replace("\0", ".")

    assert EUROPEAN.parse(european) == amount
    assert ENGLISH.parse(english) == amount


BERLIN = ZoneInfo("Europe/Berlin")


def test_dates_in_the_export_zone_become_utc_following_summer_time() -> None:
    parser = DateParser(["%d.%m.%Y %H:%M", "%d.%m.%Y"], BERLIN)

    assert parser.parse("12.03.2024 10:15") == datetime(2024, 3, 12, 9, 15, tzinfo=UTC)  # CET
    assert parser.parse("12.07.2024 10:15") == datetime(2024, 7, 12, 8, 15, tzinfo=UTC)  # CEST
    # Date only: midnight local time.
    assert parser.parse("12.03.2024") == datetime(2024, 3, 11, 23, 0, tzinfo=UTC)
    assert parser.parse(" 12.07.2024 ") == datetime(2024, 7, 11, 22, 0, tzinfo=UTC)


def test_a_date_with_its_own_offset_keeps_it() -> None:
    parser = DateParser(["%Y-%m-%dT%H:%M:%S%z", "%Y%m%d"], BERLIN)

    assert parser.parse("2024-03-12T10:15:00-05:00") == datetime(2024, 3, 12, 15, 15, tzinfo=UTC)
    assert parser.parse("20240312") == datetime(2024, 3, 11, 23, 0, tzinfo=UTC)


def test_formats_are_tried_in_order() -> None:
    # 03/04/2024 is 3 April with the first format, 4 March with the second.
    assert DateParser(["%d/%m/%Y", "%m/%d/%Y"], ZoneInfo("UTC")).parse("03/04/2024").month == 4
    assert DateParser(["%m/%d/%Y", "%d/%m/%Y"], ZoneInfo("UTC")).parse("03/04/2024").month == 3


@pytest.mark.parametrize("text", ["31.02.2024", "2024-03-12", "", "12.03.24"])
def test_unparsable_dates_name_the_formats(text: str) -> None:
    parser = DateParser(["%d.%m.%Y %H:%M", "%d.%m.%Y"], BERLIN)

    with pytest.raises(
        ValueError, match=r"matches none of the date formats \['%d.%m.%Y %H:%M', '%d.%m.%Y'\]"
    ):
        parser.parse(text)
