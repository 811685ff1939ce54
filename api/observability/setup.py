"""PLACEHOLDER until the observability layer lands: wires logging, tracing, metrics, health."""

from fastapi import FastAPI

from api.config import Settings


def configure_logging(settings: Settings) -> None:
    pass


def instrument(app: FastAPI, settings: Settings) -> None:
    pass


async def start(app: FastAPI) -> None:
    pass


async def stop(app: FastAPI) -> None:
    pass
