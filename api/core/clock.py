"""Timestamps as the contract writes them: ISO 8601, UTC, microseconds, `Z` suffix."""

import functools
import time


def iso_timestamp(seconds: float) -> str:
    """Seconds since the epoch as e.g. 2026-11-27T03:50:01.646906Z."""
    whole = int(seconds)
    return f"{_second(whole)}.{int((seconds - whole) * 1_000_000):06d}Z"


@functools.lru_cache(maxsize=16)
def _second(whole: int) -> str:
    # strftime is most of a timestamp's cost, and its result changes once a second; every
    # response, log line and build step writes timestamps.
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(whole))


def utc_now() -> str:
    return iso_timestamp(time.time())
