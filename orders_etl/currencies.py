"""ISO 4217 currency codes and their minor-unit exponents.

Money keeps the currency's own exponent everywhere (JPY 0, USD 2, KWD 3), so the exponent
table is part of the data contract, not a display detail. Codes are the active list of
ISO 4217 (including funds and precious-metal codes, which a shop will not use but an ERP
export may legitimately carry); codes without a minor unit (XAU, XDR, ...) use exponent 0.
"""

from __future__ import annotations

_EXPONENT_0 = (
    "BIF CLP DJF GNF ISK JPY KMF KRW PYG RWF UGX UYI VND VUV XAF XOF XPF "
    "XAG XAU XBA XBB XBC XBD XDR XPD XPT XSU XTS XUA XXX"
)
_EXPONENT_3 = "BHD IQD JOD KWD LYD OMR TND"
_EXPONENT_4 = "CLF UYW"
_EXPONENT_2 = (
    "AED AFN ALL AMD ANG AOA ARS AUD AWG AZN BAM BBD BDT BGN BMD BND BOB BOV BRL BSD BTN BWP "
    "BYN BZD CAD CDF CHE CHF CHW CNY COP COU CRC CUC CUP CVE CZK DKK DOP DZD EGP ERN ETB EUR "
    "FJD FKP GBP GEL GHS GIP GMD GTQ GYD HKD HNL HTG HUF IDR ILS INR IRR JMD KES KGS KHR "
    "KPW KYD KZT LAK LBP LKR LRD LSL MAD MDL MGA MKD MMK MNT MOP MRU MUR MVR MWK MXN MXV MYR "
    "MZN NAD NGN NIO NOK NPR NZD PAB PEN PGK PHP PKR PLN QAR RON RSD RUB SAR SBD SCR SDG SEK "
    "SGD SHP SLE SLL SOS SRD SSP STN SVC SYP SZL THB TJS TMT TOP TRY TTD TWD TZS UAH USD USN "
    "UYU UZS VED VES WST XCD XCG YER ZAR ZMW ZWG ZWL"
)

CURRENCY_EXPONENTS: dict[str, int] = {
    code: exponent
    for exponent, codes in ((0, _EXPONENT_0), (2, _EXPONENT_2), (3, _EXPONENT_3), (4, _EXPONENT_4))
    for code in codes.split()
}


def is_iso_currency(code: str) -> bool:
    return code in CURRENCY_EXPONENTS


def exponent_of(code: str) -> int:
    """Minor-unit exponent of an ISO 4217 code; raises KeyError for an unknown code."""
    return CURRENCY_EXPONENTS[code]
