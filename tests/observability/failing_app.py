"""The real app plus one route whose handler raises, served the way api/main.py serves it.

`python -m tests.observability.failing_app`: a server run needs an unhandled exception to show
how it is logged and answered, and the product itself has no route meant to fail.
"""

import uvicorn

from api.config import get_settings
from api.main import create_app
from api.instrumentation import prepare_server


async def boom() -> None:
    raise RuntimeError("boom while talking to https://user:hunter2@example.invalid")


if __name__ == "__main__":
    settings = get_settings()
    uvicorn_options = prepare_server(settings)
    app = create_app(settings)
    app.add_api_route("/boom", boom)
    uvicorn.run(app, host=settings.api_host, port=settings.api_port, **uvicorn_options)
