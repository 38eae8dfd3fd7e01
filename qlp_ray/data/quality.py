"""Quality checks of capsule rows before training: schema, duplicates, too short, PII.

One owner for what the dataset builder (``builder.py``), the HTTP dataset routes and the
web UI call a bad or doubtful training row:

- **invalid** — the row is not a :class:`~qlp_ray.data.capsules.Capsule` (missing or empty
  instruction/output, a score outside [0, 1], ...): training refuses the file;
- **duplicate** — the same instruction, input and output (case and whitespace folded) as an
  earlier row: the builder's de-duplication key, :func:`fingerprint`;
- **too_short** — an instruction or an output shorter than the configured minimum;
- **pii** — an e-mail address, phone number, IPv4 address, payment card number (Luhn
  checked), or credential-looking token (AWS key id, private key block, bearer token).

The last three are warnings: the rows still train, the person building the set decides.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from pydantic import ValidationError

from qlp_ray.data.capsules import Capsule

# The trainer needs two records to split a held-out part off (ray_train.load_training_data).
MIN_TRAIN_RECORDS = 2

_PII_PATTERNS: dict[str, re.Pattern[str]] = {
    "email": re.compile(r"\b[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}\b"),
    "phone": re.compile(
        r"(?<![\w.])\+?\d{1,3}[ .-]?\(?\d{2,4}\)?[ .-]\d{3,4}[ .-]\d{3,4}(?![\w.])"
    ),
    "ipv4": re.compile(r"\b(?:(?:25[0-5]|2[0-4]\d|1?\d?\d)\.){3}(?:25[0-5]|2[0-4]\d|1?\d?\d)\b"),
    "aws_access_key": re.compile(r"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b"),
    "private_key": re.compile(r"-----BEGIN (?:[A-Z]+ )?PRIVATE KEY-----"),
    "bearer_token": re.compile(r"\bBearer\s+[A-Za-z0-9._~+/-]{20,}=*", re.IGNORECASE),
}
_CARD = re.compile(r"\b(?:\d[ -]?){12,18}\d\b")
_PRIVATE_IPS = ("0.", "127.", "10.", "192.168.", "255.")


def fingerprint(*parts: str) -> str:
    """The de-duplication key of a row: SHA-256 of its parts, case and whitespace folded."""
    norm = "\x1f".join(" ".join(p.lower().split()) for p in parts)
    return hashlib.sha256(norm.encode()).hexdigest()


def _luhn_ok(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = int(ch)
        if i % 2 == 1:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def pii_kinds(text: str) -> list[str]:
    """Which kinds of personal or secret data ``text`` seems to hold (sorted, unique)."""
    found = set()
    for kind, pattern in _PII_PATTERNS.items():
        for match in pattern.finditer(text):
            if kind == "ipv4" and match.group().startswith(_PRIVATE_IPS):
                continue  # loopback / private / example ranges are config, not a person
            found.add(kind)
            break
    for match in _CARD.finditer(text):
        digits = re.sub(r"\D", "", match.group())
        if 13 <= len(digits) <= 19 and _luhn_ok(digits):
            found.add("card_number")
            break
    return sorted(found)


@dataclass
class RowReport:
    """The checks of one row (``index`` is 0-based in the submitted order)."""

    index: int
    errors: list[str] = field(default_factory=list)
    duplicate_of: int | None = None
    too_short: list[str] = field(default_factory=list)
    pii: list[str] = field(default_factory=list)

    @property
    def valid(self) -> bool:
        return not self.errors

    def flags(self) -> list[str]:
        """Short names of everything found: invalid, duplicate, too_short, pii."""
        out = ["invalid"] if self.errors else []
        out += ["duplicate"] if self.duplicate_of is not None else []
        out += ["too_short"] if self.too_short else []
        out += ["pii"] if self.pii else []
        return out


@dataclass
class DatasetReport:
    """Every row's checks and the totals a trainer cares about."""

    rows: list[RowReport]
    domains: dict[str, int]
    min_records: int
    recommended_records: int

    @property
    def valid_rows(self) -> int:
        return sum(r.valid for r in self.rows)

    def to_dict(self) -> dict[str, Any]:
        rows = [{**asdict(r), "valid": r.valid, "flags": r.flags()} for r in self.rows]
        counts = {f: sum(f in r["flags"] for r in rows) for f in ("invalid", "duplicate",
                                                                   "too_short", "pii")}  # fmt: skip
        return {
            "object": "dataset.report",
            "rows": rows,
            "total": len(self.rows),
            "valid": self.valid_rows,
            "flag_counts": counts,
            "domains": self.domains,
            "min_records": self.min_records,
            "recommended_records": self.recommended_records,
            "enough": self.valid_rows >= self.min_records,
        }


def _errors(exc: ValidationError) -> list[str]:
    return [f"{'.'.join(str(p) for p in e['loc']) or 'row'}: {e['msg']}" for e in exc.errors()]


def check_rows(
    rows: Sequence[Any],
    *,
    min_instruction_chars: int = 8,
    min_output_chars: int = 8,
    recommended_records: int = 200,
) -> DatasetReport:
    """Check capsule rows (dicts) one by one; see the module docstring for the flags."""
    reports: list[RowReport] = []
    seen: dict[str, int] = {}
    domains: dict[str, int] = {}
    for i, row in enumerate(rows):
        rep = RowReport(i)
        reports.append(rep)
        if not isinstance(row, dict):
            rep.errors.append(f"row: expected a JSON object, got {type(row).__name__}")
            continue
        try:
            cap = Capsule.model_validate(row)
        except ValidationError as exc:
            rep.errors.extend(_errors(exc))
            continue
        domains[cap.domain] = domains.get(cap.domain, 0) + 1
        key = fingerprint(cap.instruction, cap.input, cap.output)
        if key in seen:
            rep.duplicate_of = seen[key]
        else:
            seen[key] = i
        for name, text, minimum in (
            ("instruction", cap.instruction, min_instruction_chars),
            ("output", cap.output, min_output_chars),
        ):
            if len(text.strip()) < minimum:
                rep.too_short.append(f"{name} has {len(text.strip())} characters (< {minimum})")
        rep.pii = pii_kinds(" ".join((cap.instruction, cap.input, cap.output)))
    return DatasetReport(reports, domains, MIN_TRAIN_RECORDS, recommended_records)


__all__ = [
    "MIN_TRAIN_RECORDS",
    "DatasetReport",
    "RowReport",
    "check_rows",
    "fingerprint",
    "pii_kinds",
]
