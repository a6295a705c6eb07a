"""Identifiers: 居民身份证 (GB 11643), 统一社会信用代码 (GB 32100), WS/T 500 OIDs, keyed hashes.

The checksums come from python-stdnum; this module adds what the hub needs on top: the
legacy 15-digit card, the sex digit, the OIDs hospitals put in ``Identifier.system`` and a
keyed hash so that no identifier is ever written in clear into a Kafka key or a table key.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
from dataclasses import dataclass
from datetime import date
from typing import Literal

from stdnum.cn import ric, uscc
from stdnum.exceptions import ValidationError

from services.common.errors import IdentifierError

OID_ROOT = "urn:oid:2.16.156.10011.1"
ID_CARD_SYSTEM = f"{OID_ROOT}.3"  # 居民身份证号
OUTPATIENT_NO_SYSTEM = f"{OID_ROOT}.11"  # 门(急)诊号
INPATIENT_NO_SYSTEM = f"{OID_ROOT}.12"  # 住院号
MEDICAL_RECORD_NO_SYSTEM = f"{OID_ROOT}.13"  # 病案号
INSURANCE_CARD_SYSTEM = f"{OID_ROOT}.15"  # 医保卡号
HEALTH_CARD_SYSTEM = f"{OID_ROOT}.19"  # 健康卡号
ORDER_NO_SYSTEM = f"{OID_ROOT}.24"  # 电子申请单编号
LAB_REPORT_NO_SYSTEM = f"{OID_ROOT}.33"  # 检验报告单号

#: Identifier systems whose numbers a hospital assigns itself: they mean nothing outside it.
INSTITUTION_LOCAL_SYSTEMS = frozenset(
    {
        OUTPATIENT_NO_SYSTEM,
        INPATIENT_NO_SYSTEM,
        MEDICAL_RECORD_NO_SYSTEM,
        ORDER_NO_SYSTEM,
        LAB_REPORT_NO_SYSTEM,
    }
)

#: WS 364 CV02.01.101 document types.
DOCUMENT_TYPES: dict[str, str] = {
    "01": "居民身份证",
    "02": "户口簿",
    "03": "护照",
    "04": "军官证",
    "05": "驾驶证",
    "06": "港澳居民来往内地通行证",
    "07": "台湾居民来往内地通行证",
    "99": "其他",
}
DOCUMENT_TYPE_SYSTEM = "urn:oid:2.16.156.10011.2.3.1.7"  # CV02.01.101 value domain

#: 省级行政区划代码 (GB/T 2260), the first two digits of any region code.
_PROVINCES = (range(11, 16), range(21, 24), range(31, 38), range(41, 47), range(50, 55))
PROVINCE_CODES = frozenset(
    [str(n) for block in _PROVINCES for n in block] + [str(n) for n in (*range(61, 66), 71, 81, 82)]
)

Sex = Literal["male", "female"]


@dataclass(frozen=True, slots=True)
class IdCard:
    """A checked 18-character 居民身份证 number and what it encodes."""

    number: str
    birth_date: date
    sex: Sex
    region_code: str

    def __repr__(self) -> str:  # never print the number itself
        return f"IdCard(region={self.region_code}, ***)"


def with_check_character(body17: str) -> str:
    """An 18-character 身份证 number: ``body17`` (17 digits) and its GB 11643 check character
    (ISO 7064 MOD 11-2, from python-stdnum: the hub's one implementation)."""
    if len(body17) != 17 or not body17.isdigit():
        raise IdentifierError("the first 17 characters of a 身份证 number must be 17 digits")
    return body17 + ric.calc_check_digit(body17 + "0")


def _upgrade_15(number: str) -> str:
    """A 15-digit card (before 1999: 2-digit year, no check character) as its 18-digit form."""
    if not number.isdigit():
        raise IdentifierError("a 15-character 身份证 number must be all digits")
    return with_check_character(number[:6] + "19" + number[6:])


@functools.lru_cache(maxsize=16_384)
def parse_id_card(value: str) -> IdCard:
    """Check a 身份证 number (18 or legacy 15 characters) and decode it.

    Lower-case x is read as X; a 15-digit number is converted to 18. Raises
    ``IdentifierError`` with a reason that names the check that failed, never the number.

    Remembered (the most recent 16,384 valid numbers, in this process's memory only): one
    posted card is parsed by the gateway's checks, its routing and the patient index's
    normalisation several times, ≈ 7 µs each. A refusal is not remembered, and a number
    valid once stays valid (its birth date is not in the future today either).
    """
    number = ric.compact(value or "")
    if len(number) == 15:
        number = _upgrade_15(number)
    # Not ric.validate(): besides the checksum it requires the county code to have existed
    # in the birth year, but a card carries the county where it was first issued (at 16 or
    # later), so it would refuse real cards (born 1985 in 小店区, created 1997). The province
    # prefix is checked instead.
    try:
        if len(number) != 18:
            raise ric.InvalidLength()
        if not number[:17].isdigit():
            raise ric.InvalidFormat()
        if number[-1] != ric.calc_check_digit(number):
            raise ric.InvalidChecksum()
        born = ric.get_birth_date(number)
    except ValidationError as exc:
        raise IdentifierError(f"invalid 身份证 number: {_reason(exc)}") from exc
    if number[:2] not in PROVINCE_CODES:
        raise IdentifierError("invalid 身份证 number: the region code names no province")
    if born > date.today():
        raise IdentifierError("invalid 身份证 number: birth date in the future")
    sex: Sex = "male" if int(number[16]) % 2 == 1 else "female"
    return IdCard(number=number, birth_date=born, sex=sex, region_code=number[:6])


def _reason(exc: ValidationError) -> str:
    return {
        ric.InvalidLength: "length must be 18 (or 15 for a legacy card)",
        ric.InvalidFormat: "the first 17 characters must be digits",
        ric.InvalidChecksum: "check character does not match (GB 11643 MOD 11-2)",
        ric.InvalidComponent: "the birth date is not a valid date",
    }.get(type(exc), "malformed")


def is_valid_uscc(value: str) -> bool:
    """True for a well-formed 统一社会信用代码 with a correct check character."""
    return bool(uscc.is_valid(value))


def keyed_hash(key: bytes, system: str, value: str) -> str:
    """An HMAC-SHA256 of ``system|value``, hex, for keys that must not reveal the identifier."""
    msg = f"{system}|{value}".encode()
    return hmac.new(key, msg, hashlib.sha256).hexdigest()[:32]
