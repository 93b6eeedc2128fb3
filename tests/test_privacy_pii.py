"""PII masking: every type gets its placeholder and is counted; look-alikes (Luhn/mod-97 failures, URLs) survive."""

from __future__ import annotations

import pandas as pd
import pytest

from finexp.privacy import PrivacyError
from finexp.privacy.pii import PIIMasker, iban_valid, luhn_valid

VALID_CARD = "4111 1111 1111 1111"  # Visa test number, passes Luhn
VALID_IBAN_SPACED = "DE89 3704 0044 0532 0130 00"
VALID_IBAN_SOLID = "GB82WEST12345698765432"


def test_checksums():
    assert luhn_valid("4111111111111111") and luhn_valid("5500005555555559")
    assert not luhn_valid("4111111111111112")
    assert iban_valid(VALID_IBAN_SPACED) and iban_valid(VALID_IBAN_SOLID)
    assert not iban_valid("DE89 3704 0044 0532 0130 01")  # one digit off: mod-97 fails


def test_each_type_gets_its_placeholder_and_is_counted():
    masker = PIIMasker()
    text = (
        f"Mail jane.doe@bank.co.uk, pay {VALID_IBAN_SPACED} or {VALID_IBAN_SOLID}, card {VALID_CARD}, "
        "SSN 123-45-6789, NINO AB 12 34 56 C, account no. 12345678, call +44 20 7946 0958 or (212) 555-0143."
    )
    masked = masker.mask(text)
    assert masked == (
        "Mail [EMAIL], pay [IBAN] or [IBAN], card [CARD], SSN [NATIONAL_ID], NINO [NATIONAL_ID], "
        "account no. [ACCOUNT], call [PHONE] or [PHONE]."
    )
    assert masker.report() == {
        "pii/email": 1,
        "pii/iban": 2,
        "pii/card": 1,
        "pii/national_id": 2,
        "pii/account": 1,
        "pii/phone": 2,
        "pii/name": 0,
    }


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        # Card look-alikes that fail Luhn stay, dashed valid cards go.
        ("order 4111 1111 1111 1112 shipped", "order 4111 1111 1111 1112 shipped"),
        ("card 5500-0055-5555-5559 declined", "card [CARD] declined"),
        # A 20-digit reference is not a card, even though 16 of its digits might pass Luhn.
        ("ref 41111111111111110000", "ref 41111111111111110000"),
        # IBAN with spaces followed by capitalised words: the words are not swallowed.
        (f"IBAN {VALID_IBAN_SPACED} AND SWIFT", "IBAN [IBAN] AND SWIFT"),
        ("IBAN DE89 3704 0044 0532 0130 01 (typo)", "IBAN DE89 3704 0044 0532 0130 01 (typo)"),
        # E-mails inside URLs are masked, the URL around them stays; URLs without one are untouched.
        ("see https://bank.com/contact?mail=jo.smith@bank.com&x=1", "see https://bank.com/contact?mail=[EMAIL]&x=1"),
        ("mailto:jo@bank.com", "mailto:[EMAIL]"),
        ("https://bank.com/u?e=jo%40bank.com", "https://bank.com/u?e=[EMAIL]"),
        ("https://www.bank.com/path/2024-01-15/report.pdf", "https://www.bank.com/path/2024-01-15/report.pdf"),
        # Amounts, dates and bare numbers are not phones, ids or accounts.
        ("revenue 1,250,000 on 2024-01-15, up 12.5%", "revenue 1,250,000 on 2024-01-15, up 12.5%"),
        ("invoice 12345678 paid", "invoice 12345678 paid"),
        ("SSN-like 000-12-3456 is never issued", "SSN-like 000-12-3456 is never issued"),
    ],
)
def test_adversarial_strings(text, expected):
    assert PIIMasker().mask(text) == expected


def test_names_only_in_configured_columns():
    frame = pd.DataFrame(
        {
            "note": ["Called Maria Garcia Lopez about the loan", "Mr O'Neil paid, jo@x.org", "no names here"],
            "branch": ["Maria Street branch", "Main", "Main"],
            "label": ["a", "b", "a"],
        }
    )
    masker = PIIMasker(name_columns=["note"], extra_names=["Zebedee"])
    out = masker.mask_frame(frame, skip=["label"])
    assert out["note"].tolist() == ["Called [NAME] about the loan", "[NAME] paid, [EMAIL]", "no names here"]
    assert out["branch"].tolist() == frame["branch"].tolist()  # not a name column
    assert out["label"].tolist() == frame["label"].tolist()
    assert masker.report()["pii/name"] == 2 and masker.report()["pii/email"] == 1
    assert PIIMasker(name_columns=["c"], extra_names=["Zebedee"]).mask("Zebedee Smith", names=True) == "[NAME]"


def test_unknown_name_column_and_type_are_rejected():
    with pytest.raises(PrivacyError, match=r"privacy\.pii\.name_columns.*'nope'.*available: note"):
        PIIMasker(name_columns=["nope"]).mask_frame(pd.DataFrame({"note": ["x"]}))
    with pytest.raises(PrivacyError, match="unknown PII type"):
        PIIMasker(types=["EMAIL", "PASSPORT"])
