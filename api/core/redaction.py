"""Secrets masked out of text and structured values: for log lines, error bodies and probes.

In core because every layer that writes text someone else reads (the log formatter, the error
envelope, the model probe's error text) masks it the same way."""

import functools
import re
from typing import Any

MASK = "***"
_SECRET_KEY = re.compile(
    r"authorization|api[-_]?key|secret|password|passwd|token|credential|cookie|signature", re.I)
_SECRET_TEXT = (
    (re.compile(r"\b(Bearer|Basic)\s+[A-Za-z0-9._~+/=-]+", re.I), rf"\1 {MASK}"),
    (re.compile(r"\bsk-[A-Za-z0-9_-]{8,}"), f"sk-{MASK}"),
    (re.compile(r"\b(?:AKIA|ASIA)[A-Z0-9]{16}\b"), MASK),
    # key=value, key: value, "key": "value" (aws_secret_access_key=..., X-Api-Key: ...);
    # token *counts* (max_tokens=100) are left alone.
    (re.compile(
        r"""((?:secret|password|passwd|api[-_]?key|token|authorization|signature)[\w-]*"""
        r"""["']?\s*[:=]\s*["']?)(?!\d+\b)(?:(?:Bearer|Basic)\s+)?[^\s"',;&}]+""", re.I),
     rf"\1{MASK}"),
    (re.compile(r"(://[^/\s:@]+:)[^/\s@]+@"), rf"\1{MASK}@"),
)
# Substrings without which none of the patterns above can match: most text (every access
# line) is ruled out by these cheap checks, and the patterns never run on it.
_TRIGGERS = ("bearer", "basic", "sk-", "akia", "asia", "secret", "passw", "key", "token",
             "authoriz", "signature", "://")


def redact_text(text: str) -> str:
    lowered = text.lower()
    # A plain loop: any() over a generator costs twice as much, on every field of every line.
    for trigger in _TRIGGERS:
        if trigger in lowered:
            break
    else:
        return text
    for pattern, replacement in _SECRET_TEXT:
        text = pattern.sub(replacement, text)
    return text


@functools.lru_cache(maxsize=4096)
def _names_a_secret(key: str) -> bool:
    return _SECRET_KEY.search(key) is not None


def redact(key: str, value: Any) -> Any:
    """Mask `value` when its key names a secret; look inside strings and containers otherwise."""
    # Counts (input_tokens) and absent values are no secrets, whatever their key says.
    if value is not None and _names_a_secret(key) and not isinstance(value, (int, float)):
        return MASK
    if isinstance(value, str):
        return redact_text(value)
    if isinstance(value, dict):
        return {k: redact(str(k), v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [redact(key, v) for v in value]
    return value
