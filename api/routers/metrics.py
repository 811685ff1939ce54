"""GET /metrics: the Prometheus exposition, outside the JSON envelope by nature."""

from fastapi import APIRouter, Request, Response

from api.observability import metrics

router = APIRouter(include_in_schema=False)


@router.get("/metrics")
async def prometheus_metrics(request: Request) -> Response:
    body, content_type = await metrics.render(request.app.state.store, request.headers.get("accept"))
    return Response(body, media_type=content_type)
