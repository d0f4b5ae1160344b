"""The review queue of doubtful predictions (active learning): a domain's settings, its
queued images with their top-3, and a decision per image -- a label that moves the image
into the domain's samples, or a discard. ``page_router`` serves the review page (static
files, like the dashboard: the page holds no data and reads this API with the token)."""
import os
from typing import Optional

from fastapi import APIRouter, Path, Query
from fastapi.responses import FileResponse, Response
from typing_extensions import Annotated

from device_agent.api.deps import DomainName, ReviewKeeperDep, SettingsDep, StoreDep
from device_agent.api.review_keeper import ReviewKeeper
from device_agent.api.routers.datasets import archive_limits
from device_agent.api.schemas import (
    ReviewDecision,
    ReviewOutcome,
    ReviewQueueView,
    ReviewSettingsUpdate,
    ReviewSettingsView,
)
from device_agent.errors import InvalidInput
from device_agent.store.review import ReviewItem, ReviewSettings

router = APIRouter(tags=["review"])
page_router = APIRouter(tags=["dashboard"])
STATIC = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "static")
# The page shows the thumbnails as blob: URLs of images it fetched with the token.
PAGE_POLICY = ("default-src 'self'; style-src 'self' 'unsafe-inline'; "
               "img-src 'self' data: blob:")

ItemId = Annotated[int, Path(ge=1, le=2 ** 63 - 1, description="a review item's id")]


def settings_view(keeper: ReviewKeeper, settings: ReviewSettings) -> dict:
    return dict(settings._asdict(), cap_items=keeper.caps.max_items,
                cap_bytes=keeper.caps.max_bytes)


def item_view(domain: str, item: ReviewItem) -> dict:
    return {"id": item.id, "created_at": item.created_at, "version": item.version,
            "predictions": [{"class": name, "probability": p} for name, p in item.top],
            "bytes": item.bytes, "media_type": item.media_type,
            "image": "/v1/domains/%s/review/%d/image" % (domain, item.id)}


@router.get("/domains/{domain}/review/settings", response_model=ReviewSettingsView,
            summary="the domain's review settings (off by default)")
def get_settings(domain: DomainName, store: StoreDep, keeper: ReviewKeeperDep) -> dict:
    return settings_view(keeper, store.review_settings(domain))


@router.put("/domains/{domain}/review/settings", response_model=ReviewSettingsView,
            summary="turn keeping doubtful predictions on or off, set its threshold and "
                    "bounds (a field left out keeps its value)")
def put_settings(domain: DomainName, body: ReviewSettingsUpdate, store: StoreDep,
                 keeper: ReviewKeeperDep) -> dict:
    changed = {name: value for name, value in body.model_dump().items() if value is not None}
    settings = store.review_settings(domain)._replace(**changed)
    if settings.max_items > keeper.caps.max_items or settings.max_bytes > keeper.caps.max_bytes:
        raise InvalidInput("the daemon keeps at most %d items and %d bytes per domain "
                           "(review_max_items, review_max_mb)"
                           % (keeper.caps.max_items, keeper.caps.max_bytes))
    return settings_view(keeper, store.set_review_settings(domain, settings))


@router.get("/domains/{domain}/review", response_model=ReviewQueueView,
            summary="the queue of doubtful predictions, newest first, with their top-3")
def get_queue(domain: DomainName, store: StoreDep, keeper: ReviewKeeperDep,
              limit: int = Query(50, ge=1, le=200, description="items on this page"),
              before: Optional[int] = Query(None, ge=1, le=2 ** 63 - 1,
                                            description="only items older than this id "
                                                        "(the last page's next_before)")
              ) -> dict:
    # the counters first: the keeper counts an item only after the store holds it, so a
    # page never counts an item it does not show (read after the items, it could)
    counters = keeper.counters(domain)
    settings = store.review_settings(domain)
    items = store.review_items(domain, limit + 1, before)
    count, size = store.review_totals(domain)
    return {"domain": domain, "settings": settings_view(keeper, settings), "count": count,
            "bytes": size, "items": [item_view(domain, item) for item in items[:limit]],
            "next_before": items[limit - 1].id if len(items) > limit else None,
            "counters": counters}


@router.get("/domains/{domain}/review/{item_id}/image", response_class=Response,
            responses={200: {"content": {"image/jpeg": {}, "image/png": {}}}},
            summary="a queued item's image")
def get_image(domain: DomainName, item_id: ItemId, keeper: ReviewKeeperDep) -> Response:
    item, data = keeper.image(domain, item_id)
    return Response(data, media_type=item.media_type, headers={"Cache-Control": "no-store"})


@router.post("/domains/{domain}/review/{item_id}", response_model=ReviewOutcome,
             summary="decide a queued item: {\"label\": \"cls\"} moves its image into the "
                     "domain's samples, {\"discard\": true} drops it")
def decide(domain: DomainName, item_id: ItemId, body: ReviewDecision,
           keeper: ReviewKeeperDep, settings: SettingsDep) -> dict:
    if (body.label is None) == (body.discard is None):
        raise InvalidInput('give exactly one of {"label": "<class>"} and {"discard": true}')
    if body.discard:
        keeper.discard(domain, item_id)
        return {"id": item_id, "action": "discarded"}
    _, added = keeper.label(domain, item_id, body.label, archive_limits(settings))
    return {"id": item_id, "action": "labelled", "label": body.label,
            "sample_ids": added.ids, "duplicates": added.duplicates}


@page_router.get("/review", response_class=FileResponse, summary="the review page",
                 responses={200: {"content": {"text/html": {}}}})
def review_page() -> FileResponse:
    return FileResponse(os.path.join(STATIC, "review.html"), media_type="text/html",
                        headers={"Cache-Control": "no-store",
                                 "Content-Security-Policy": PAGE_POLICY})


@page_router.get("/review.js", response_class=FileResponse, include_in_schema=False)
def review_script() -> FileResponse:
    return FileResponse(os.path.join(STATIC, "review.js"), media_type="application/javascript",
                        headers={"Cache-Control": "no-store"})
