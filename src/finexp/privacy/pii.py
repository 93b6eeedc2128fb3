"""Masking of personal data in text before tokenization, with typed placeholders and counts per type.

What is found, in this order (each pass sees the placeholders of the passes before it):

* ``[EMAIL]``: ``local@domain.tld``, also inside URLs (``?contact=jo@bank.com``, ``mailto:``) and URL-encoded
  (``jo%40bank.com``); the rest of the URL stays.
* ``[IBAN]``: two letters, two check digits and 11-30 letters/digits, written solid or in groups with spaces; only
  strings that pass the ISO 13616 mod-97 check.
* ``[CARD]``: 13-19 digits, solid or grouped with spaces/dashes; only numbers that pass the Luhn check.
* ``[NATIONAL_ID]``: US social security numbers (``123-45-6789``, not the never-issued 000/666/9xx areas) and UK
  national insurance numbers (``AB 12 34 56 C``).
* ``[ACCOUNT]``: a run of 6-20 digits (dashes/spaces allowed) after ``account``, ``acct``, ``a/c``, ``account no``
  and the like. Bare digit runs without such a word are left alone: they are as often amounts or ids.
* ``[PHONE]``: international numbers (``+44 20 7946 0958``) and North-American ones (``(212) 555-0143``,
  ``212-555-0143``); a number needs a ``+`` or a separator pattern, so plain amounts are not phones.
* ``[NAME]``: in the configured name columns only, a given name from a small built-in list (``given_names.txt``, plus
  any the config adds) or an honorific (Mr, Mrs, Ms, Dr, ...) followed by capitalised tokens (the surname), e.g.
  ``Mr O'Neil``, ``Maria Garcia Lopez``. Names outside the list without an honorific are missed: a list, not a model.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Sequence
from importlib import resources
from typing import Any

import pandas as pd

from finexp.privacy.errors import PrivacyError

PII_TYPES = ("EMAIL", "IBAN", "CARD", "NATIONAL_ID", "ACCOUNT", "PHONE", "NAME")

_EMAIL = re.compile(
    r"(?<![\w.%+-])[A-Za-z0-9][A-Za-z0-9._%+-]*(?:@|%40)[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}\b"
)
# Groups of 1-4 characters after the country code and check digits; candidates are cut back at group boundaries until
# one passes mod-97, so a trailing word ("... 00 AND ...") never sticks to an IBAN.
_IBAN = re.compile(r"\b[A-Z]{2}\d{2}(?: ?[A-Z0-9]{1,4}){3,8}\b")
_CARD = re.compile(r"(?<![\d-])\d(?:[ -]?\d){12,18}(?![\d-])")
_SSN = re.compile(r"\b(?!000|666|9\d\d)\d{3}-(?!00)\d{2}-(?!0000)\d{4}\b")
_NINO = re.compile(r"\b[A-CEGHJ-PR-TW-Z][A-CEGHJ-NPR-TW-Z] ?\d{2} ?\d{2} ?\d{2} ?[A-D]\b")
_ACCOUNT = re.compile(
    r"(?i)\b(?P<word>(?:bank\s+)?(?:account|acct|a/c)(?:\s*(?:no\.?|nr\.?|number|#))?\s*[:#]?\s*)"
    r"(?P<number>\d(?:[ -]?\d){5,19})(?!\d)"
)
_PHONE = re.compile(
    r"(?<![\w+])(?:\+\d{1,3}[ .-]?(?:\(?\d{1,4}\)?[ .-]?){1,4}\d{2,4}"  # +44 20 7946 0958, +1 (212) 555-0143
    r"|\(\d{3}\) ?\d{3}[ .-]\d{4}"  # (212) 555-0143
    r"|\b\d{3}[.-]\d{3}[.-]\d{4})(?![\w-])"  # 212-555-0143
)
_HONORIFICS = ("Mr", "Mrs", "Ms", "Miss", "Dr", "Prof", "Sir", "Madam", "Herr", "Frau", "Mme", "Mlle", "Sr", "Sra")
_CAPITALISED = r"[A-Z][a-zà-ÿ]*(?:['-][A-Z]?[a-zà-ÿ]+)*"


def luhn_valid(digits: str) -> bool:
    """The Luhn checksum every payment card number satisfies."""
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = int(ch)
        if i % 2:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def iban_valid(iban: str) -> bool:
    """ISO 13616: move the first four characters to the end, letters to 10..35; the number mod 97 is 1."""
    iban = iban.replace(" ", "").upper()
    if not 15 <= len(iban) <= 34 or not iban[:2].isalpha() or not iban[2:4].isdigit():
        return False
    digits = "".join(str(int(ch, 36)) for ch in iban[4:] + iban[:4])
    return int(digits) % 97 == 1


def _given_names() -> set[str]:
    text = resources.files("finexp.privacy").joinpath("given_names.txt").read_text(encoding="utf-8")
    return {line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#")}


class PIIMasker:
    """Replace personal data in text with typed placeholders and count what was replaced.

    Args:
        name_columns: columns in which person names are masked too (names are not searched elsewhere).
        extra_names: given names to add to the built-in list.
        types: which PII types to mask (default: all of :data:`PII_TYPES`).
    """

    def __init__(
        self,
        name_columns: Sequence[str] = (),
        extra_names: Iterable[str] = (),
        types: Sequence[str] | None = None,
    ) -> None:
        unknown = sorted(set(types or ()) - set(PII_TYPES))
        if unknown:
            raise PrivacyError(f"privacy.pii.types: unknown PII type(s) {unknown}; known: {', '.join(PII_TYPES)}")
        self.types = tuple(types) if types is not None else PII_TYPES
        self.name_columns = list(name_columns)
        names = sorted(_given_names() | {n.strip() for n in extra_names if n.strip()}, key=len, reverse=True)
        honorifics = "|".join(_HONORIFICS)
        self._name = re.compile(
            rf"\b(?:(?:{honorifics})\.?\s+{_CAPITALISED}|(?:{'|'.join(map(re.escape, names))}))"
            rf"(?:\s+{_CAPITALISED})*\b"
        )
        self.counts: Counter[str] = Counter()

    def mask(self, text: str, names: bool = False) -> str:
        """Mask one string (person names too when ``names``); adds to :attr:`counts`."""
        if "EMAIL" in self.types:
            text = self._sub(_EMAIL, "EMAIL", text)
        if "IBAN" in self.types:
            text = _IBAN.sub(self._iban, text)
        if "CARD" in self.types:
            text = _CARD.sub(self._card, text)
        if "NATIONAL_ID" in self.types:
            text = self._sub(_NINO, "NATIONAL_ID", self._sub(_SSN, "NATIONAL_ID", text))
        if "ACCOUNT" in self.types:
            text = _ACCOUNT.sub(self._account, text)
        if "PHONE" in self.types:
            text = self._sub(_PHONE, "PHONE", text)
        if names and "NAME" in self.types:
            text = self._sub(self._name, "NAME", text)
        return text

    def mask_frame(self, frame: pd.DataFrame, skip: Iterable[str] = ()) -> pd.DataFrame:
        """Mask every text column of a table (names only in :attr:`name_columns`); ``skip``: e.g. the label."""
        missing = [c for c in self.name_columns if c not in frame.columns]
        if missing:
            raise PrivacyError(
                f"privacy.pii.name_columns: column(s) {missing} not found; available: {', '.join(map(str, frame))}"
            )
        frame = frame.copy()
        skipped = set(skip)
        for column in frame.columns:
            if column in skipped or not (frame[column].dtype == object or pd.api.types.is_string_dtype(frame[column])):
                continue
            names = column in self.name_columns
            frame[column] = [self.mask(v, names) if isinstance(v, str) else v for v in frame[column]]
        return frame

    def report(self) -> dict[str, Any]:
        """How many of each type were masked, for ``metrics.json`` (``pii/email``, ``pii/iban``, ...)."""
        return {f"pii/{kind.lower()}": int(self.counts[kind]) for kind in self.types}

    # ----------------------------------------------------------------------------------------------------------
    def _sub(self, pattern: re.Pattern[str], kind: str, text: str) -> str:
        text, n = pattern.subn(f"[{kind}]", text)
        self.counts[kind] += n
        return text

    def _iban(self, match: re.Match[str]) -> str:
        candidate = match.group(0)
        groups = candidate.split(" ")
        for end in range(len(groups), 0, -1):  # longest prefix (in whole groups) that passes mod-97
            prefix = " ".join(groups[:end])
            compact = prefix.replace(" ", "")
            if len(compact) < 15:
                break
            if iban_valid(compact):
                self.counts["IBAN"] += 1
                return "[IBAN]" + candidate[len(prefix) :]
        return candidate

    def _card(self, match: re.Match[str]) -> str:
        digits = re.sub(r"\D", "", match.group(0))
        if 13 <= len(digits) <= 19 and luhn_valid(digits):
            self.counts["CARD"] += 1
            return "[CARD]"
        return match.group(0)

    def _account(self, match: re.Match[str]) -> str:
        self.counts["ACCOUNT"] += 1
        return match.group("word") + "[ACCOUNT]"
