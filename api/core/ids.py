"""Identifiers in the contract's formats."""

import secrets


def project_id() -> str:
    return f"proj_{secrets.token_hex(6)}"


def build_id() -> str:
    return f"build_{secrets.token_hex(6)}"


def invocation_id() -> str:
    return f"inv_{secrets.token_hex(8)}"


def session_id() -> str:
    return f"sess_{secrets.token_hex(8)}"


def message_id() -> str:
    return f"msg_{secrets.token_hex(8)}"
