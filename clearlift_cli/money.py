"""Exact money: platform decimals become integer micros; never a float in between."""

from __future__ import annotations

from decimal import ROUND_HALF_EVEN, Decimal, InvalidOperation

MICROS = Decimal(1_000_000)

# ISO 4217 currencies without a minor unit (Stripe's list of zero-decimal currencies).
ZERO_DECIMAL_CURRENCIES = frozenset("BIF CLP DJF GNF JPY KMF KRW MGA PYG RWF UGX VND VUV XAF XOF XPF".split())


def to_decimal(value: object) -> Decimal:
    """Parse a platform number exactly. Floats go through ``str`` (shortest repr), so
    ``120.5`` is ``Decimal('120.5')``, not its binary expansion. Missing means 0."""
    if value is None or value == "":
        return Decimal(0)
    if isinstance(value, bool):
        raise ValueError(f"not a number: {value!r}")
    if isinstance(value, Decimal):
        d = value
    elif isinstance(value, int):
        d = Decimal(value)
    elif isinstance(value, float):
        d = Decimal(repr(value))
    else:
        try:
            d = Decimal(str(value).strip())
        except InvalidOperation:
            raise ValueError(f"not a number: {value!r}") from None
    if not d.is_finite():
        raise ValueError(f"not a finite number: {value!r}")
    return d


def to_micros(value: object) -> int:
    """A decimal amount in currency units ("14.35") as integer millionths (14_350_000).
    Sub-micro fractions round half-even (banker's rounding), as ledgers do."""
    return int((to_decimal(value) * MICROS).quantize(Decimal(1), rounding=ROUND_HALF_EVEN))


def to_int(value: object) -> int:
    """An integer count that may arrive as a string ("1000"), a number, or be missing."""
    # the usual shapes first (several per metric row); anything else goes through Decimal
    if type(value) is int:
        return value
    if type(value) is str and len(value) < 19 and value.isascii() and value.isdigit():
        return int(value)
    d = to_decimal(value)
    if d != d.to_integral_value():
        raise ValueError(f"not a whole number: {value!r}")
    return int(d)


def minor_units_per_unit(currency: str) -> int:
    return 1 if currency.upper() in ZERO_DECIMAL_CURRENCIES else 100
