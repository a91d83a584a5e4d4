"""The web dashboard's pages and the API docs, all served from the app's own files (no CDN: works offline).

The pages are open, like /docs: they hold no data. Their JavaScript reads everything from /v1 with the
API key the user types in, so the pages need no session and the API's checks apply unchanged. Each page says
whether the server asks for a key (``data-auth`` on its body), so the key button shows only where one is
needed; a key created after the page was served still opens the key box through the API's 401.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import fastapi_offline
from fastapi import APIRouter, FastAPI, Request
from fastapi import Path as PathParam
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html, get_swagger_ui_oauth2_redirect_html
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from sqlalchemy.exc import SQLAlchemyError

from models.presets import PRESETS
from models.spec import SpecFields
from service.api.auth import KeyStore
from service.api.web import STATIC_DIR, TEMPLATES_DIR
from service.api.web.forms import form_fields

logger = logging.getLogger(__name__)
router = APIRouter(include_in_schema=False)
templates = Jinja2Templates(directory=TEMPLATES_DIR)

# Swagger UI and ReDoc as the fastapi-offline package ships them (it tracks swagger-ui-dist 5 and redoc 2).
DOCS_ASSETS = Path(fastapi_offline.__file__).parent / "static"

# Everything a page loads comes from this server; images arrive as blobs fetched with the API key.
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; img-src 'self' blob: data:; object-src 'none'; base-uri 'none'; "
    "form-action 'self'; frame-ancestors 'none'"
)

Id = Annotated[str, PathParam(max_length=64)]


def mount_assets(app: FastAPI) -> None:
    """Serves the dashboard's scripts and styles, and the docs' assets, from the installed package."""
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    app.mount("/docs-assets", StaticFiles(directory=DOCS_ASSETS), name="docs-assets")


def _path_for(request: Request) -> Callable[..., str]:
    # Paths, not absolute URLs: behind a TLS-terminating proxy an http:// URL would be blocked as mixed content.
    def path_for(name: str, /, **params: Any) -> str:
        return request.url_for(name, **params).path

    return path_for


def _auth(request: Request) -> str:
    """Whether the API asks for a key: ``key`` when one is in the environment or active in the database,
    ``open`` when none is, ``unknown`` when the database cannot say (the page then offers the key box)."""
    store: KeyStore = request.app.state.keys
    try:
        if store.stale:
            store.refresh()  # the page routes are plain defs: this runs in the thread pool
    except SQLAlchemyError:
        logger.warning("could not read the API keys to render a page", exc_info=True)
        return "unknown"
    return "key" if store.enabled else "open"


def _page(request: Request, template: str, title: str, **context: Any) -> HTMLResponse:
    values = {
        "title": title,
        "path_for": _path_for(request),
        "root_path": request.scope.get("root_path", ""),
        "auth": _auth(request),
    }
    response = templates.TemplateResponse(request, template, {**values, **context})
    response.headers["Content-Security-Policy"] = CONTENT_SECURITY_POLICY
    response.headers["X-Content-Type-Options"] = "nosniff"
    return response


@router.get("/", response_class=HTMLResponse)
def jobs_page(request: Request) -> HTMLResponse:
    return _page(request, "jobs.html", "Jobs")


@router.get("/submit", response_class=HTMLResponse)
def submit_page(request: Request) -> HTMLResponse:
    fields = form_fields(SpecFields.model_json_schema())
    defaults = {field.name: field.default for field in fields}
    return _page(request, "submit.html", "Submit a job", fields=fields, defaults=defaults, presets=PRESETS)


@router.get("/jobs/{job_id}", response_class=HTMLResponse)
def job_page(request: Request, job_id: Id) -> HTMLResponse:
    return _page(request, "job.html", f"Job {job_id}", job_id=job_id)


@router.get("/sweeps/{sweep_id}", response_class=HTMLResponse)
def sweep_page(request: Request, sweep_id: Id) -> HTMLResponse:
    return _page(request, "sweep.html", f"Sweep {sweep_id}", sweep_id=sweep_id)


@router.get("/studies/{study_id}", response_class=HTMLResponse)
def study_page(request: Request, study_id: Id) -> HTMLResponse:
    return _page(request, "study.html", f"Study {study_id}", study_id=study_id)


@router.get("/models", response_class=HTMLResponse)
def models_page(request: Request) -> HTMLResponse:
    return _page(request, "models.html", "Models")


@router.get("/models/{model_ref}", response_class=HTMLResponse)
def model_page(request: Request, model_ref: Id) -> HTMLResponse:
    return _page(request, "model.html", f"Model {model_ref}", model_ref=model_ref)


@router.get("/predict", response_class=HTMLResponse)
def predict_page(request: Request) -> HTMLResponse:
    return _page(request, "predict.html", "Predict")


@router.get("/docs", response_class=HTMLResponse)
def swagger_ui(request: Request) -> HTMLResponse:
    app: FastAPI = request.app
    path_for = _path_for(request)
    return get_swagger_ui_html(
        openapi_url=path_for("openapi"),
        title=f"{app.title} - API docs",
        swagger_js_url=path_for("docs-assets", path="swagger-ui-bundle.js"),
        swagger_css_url=path_for("docs-assets", path="swagger-ui.css"),
        swagger_favicon_url=path_for("static", path="favicon.svg"),
        oauth2_redirect_url=path_for("swagger_ui_redirect"),
    )


@router.get("/docs/oauth2-redirect", response_class=HTMLResponse)
def swagger_ui_redirect() -> HTMLResponse:
    return get_swagger_ui_oauth2_redirect_html()


@router.get("/redoc", response_class=HTMLResponse)
def redoc(request: Request) -> HTMLResponse:
    app: FastAPI = request.app
    path_for = _path_for(request)
    return get_redoc_html(
        openapi_url=path_for("openapi"),
        title=f"{app.title} - ReDoc",
        redoc_js_url=path_for("docs-assets", path="redoc.standalone.js"),
        redoc_favicon_url=path_for("static", path="favicon.svg"),
        with_google_fonts=False,
    )
