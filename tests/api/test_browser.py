"""The web dashboard in a real browser: Debian's Chromium driven by Playwright, against real server and worker
processes on the synthetic data set, with an API key configured (so every call the pages make carries it).

Each step leaves a screenshot under test-artifacts/browser (FMNIST_TEST_ARTIFACTS overrides the folder). A
test fails on any console error, uncaught exception, failed request, 4xx/5xx answer it did not expect, or
request to another origin. Without Chromium these tests fail; FMNIST_SKIP_BROWSER=1 skips them explicitly.

``FMNIST_DATA_DIR=... python -m tests.api.test_browser docs/img`` takes the README's screenshots on the real data
set instead, on a server without keys (as a laptop runs it).
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient
from pydantic import SecretStr

from models.data import load_fashion_mnist
from models.spec import SpecFields
from service.api import auth
from service.api.app import create_app
from service.api.web.forms import InputKind, form_fields
from service.settings import Settings
from service.store import migrations
from service.store.db import Database
from tests.conftest import REPO_ROOT, real_data_dir
from tests.support.fleet import freeze
from tests.test_e2e import Stack, png, wait_for_job

if TYPE_CHECKING:
    from playwright.sync_api import Browser, ConsoleMessage, FilePayload, Page, Request, Response

CHROMIUM = Path(os.environ.get("FMNIST_CHROMIUM", "/usr/bin/chromium"))
SKIP_BROWSER = os.environ.get("FMNIST_SKIP_BROWSER") == "1"
ARTIFACTS = Path(os.environ.get("FMNIST_TEST_ARTIFACTS", REPO_ROOT / "test-artifacts")) / "browser"
VIEWPORT = {"width": 1280, "height": 800}
# A job small enough to train in a second or two on the synthetic set, on two CPU cores.
TINY = {"hidden_layers": "32", "batch_size": "32", "epochs": "3", "seed": "0"}
TIMEOUT_MS = 60_000
# A study of two trials, one per learning rate, small enough to train in seconds.
STUDY = {
    "base": {"hidden_layers": [16], "batch_size": 64, "epochs": 2},
    "space": {"lr": {"choices": [0.1, 0.2]}},
    "sampler": "grid",
    "trials": 2,
    "seed": 0,
}
STUDY_FIGURES = ("history", "parallel", "importances")

# --- without a browser: the pages as HTML ------------------------------------------------------------


@pytest.fixture
def client(settings: Settings, db: object) -> Iterator[TestClient]:
    with TestClient(create_app(settings)) as test_client:
        yield test_client


def local_references(html: str) -> list[str]:
    """Every URL the page loads or links to, for the check that none leaves the server."""
    return re.findall(r"""(?:src|href|url)\s*[:=]\s*["']([^"']+)["']""", html)


@pytest.mark.parametrize(
    "path",
    [
        "/docs",
        "/redoc",
        "/",
        "/submit",
        "/jobs/abc",
        "/sweeps/abc",
        "/studies/abc",
        "/models",
        "/models/abc",
        "/predict",
    ],
)
def test_pages_reference_only_this_server(client: TestClient, path: str) -> None:
    response = client.get(path)
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/html")
    references = local_references(response.text)
    assert references, "the check found the page's references"
    assert all(ref.startswith("/") and not ref.startswith("//") for ref in references), references
    for ref in references:
        if ref.startswith(("/static/", "/docs-assets/")):
            assert client.get(ref).status_code == 200, ref


def test_docs_serve_swagger_ui_and_the_schema_locally(client: TestClient) -> None:
    html = client.get("/docs").text
    assert "/docs-assets/swagger-ui-bundle.js" in html and "cdn" not in html.lower()
    assert (
        client.get("/docs-assets/swagger-ui-bundle.js")
        .headers["content-type"]
        .startswith(("text/javascript", "application/javascript"))
    )
    assert "fonts.googleapis" not in client.get("/redoc").text
    assert client.get("/openapi.json").status_code == 200


def test_pages_are_not_in_the_api_schema(client: TestClient) -> None:
    paths = client.get("/openapi.json").json()["paths"]
    assert not {"/", "/submit", "/models", "/models/{model_ref}", "/predict", "/docs"} & set(paths)


def test_pages_escape_what_the_url_carries(client: TestClient) -> None:
    html = client.get("/jobs/%3Cimg%20src%3Dx%20onerror%3Dalert(1)%3E").text
    assert "<img src=x" not in html and 'data-job-id="&lt;img src=x onerror=alert(1)&gt;"' in html
    html = client.get("/models/%22%3E%3Cimg%20src%3Dx%3E").text
    assert "<img src=x" not in html and 'data-model-ref="&#34;&gt;&lt;img src=x&gt;"' in html


def test_pages_forbid_loading_from_elsewhere(client: TestClient) -> None:
    policy = client.get("/").headers["content-security-policy"]
    assert "default-src 'self'" in policy


def key_button(html: str) -> str:
    match = re.search(r'<button type="button" id="key-toggle"[^>]*>', html)
    assert match is not None, "the page has the key button"
    return match.group(0)


def test_the_key_button_shows_only_where_the_server_asks_for_a_key(
    client: TestClient, db: Database, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(auth, "CACHE_SECONDS", 0.0)  # a key created below counts at once
    for path in ("/", "/jobs/abc", "/models", "/predict"):
        html = client.get(path).text
        assert 'data-auth="open"' in html and " hidden" in key_button(html), path
    assert "FMNIST_API_KEY" not in client.get("/").text, "the empty state's commands need no key"
    # A key in the database: every page now offers the key box, and the commands carry the key.
    auth.create_key(db, "dashboard", ["predict"])
    html = client.get("/").text
    assert 'data-auth="key"' in html and " hidden" not in key_button(html)
    assert "FMNIST_API_KEY" in html
    # Keys from the environment only.
    keyed = settings.model_copy(update={"api_keys": SecretStr("from-the-environment")})
    with TestClient(create_app(keyed)) as keyed_client:
        html = keyed_client.get("/models").text
    assert 'data-auth="key"' in html and " hidden" not in key_button(html)


def test_submit_form_has_every_spec_field_with_its_default(client: TestClient) -> None:
    html = client.get("/submit").text
    shown = re.findall(r'<div class="field" data-field="([a-z_]+)" data-kind', html)
    # Each once; their order follows the form's sections (tests/api/test_browser_forms.py).
    assert sorted(shown) == sorted(SpecFields.model_fields) and len(set(shown)) == len(shown)
    assert 'id="field-lr" name="lr" type="number" step="any"' in html
    assert re.search(r'id="field-hidden_layers" name="hidden_layers" type="text" value="256"', html)
    assert re.search(r'<option value="relu"\s+selected>', html)
    defaults = json.loads(re.search(r'id="spec-defaults">(.*?)</script>', html, re.S).group(1))  # type: ignore[union-attr]
    assert defaults == {name: info.get_default() for name, info in SpecFields.model_fields.items()}
    presets = re.search(r'id="spec-presets">(.*?)</script>', html, re.S).group(1)  # type: ignore[union-attr]
    assert "best-mlp" in json.loads(presets)


def test_form_fields_follow_the_schema() -> None:
    schema = {
        "$defs": {"Colour": {"enum": ["red", "blue"], "type": "string"}},
        "properties": {
            "colour": {"anyOf": [{"$ref": "#/$defs/Colour"}, {"type": "null"}], "default": None},
            "rate": {"type": "number", "exclusiveMinimum": 0, "maximum": 2, "default": 1.5, "description": "r"},
            "widths": {"type": "array", "items": {"type": "integer"}, "default": [3, 4]},
            "on": {"type": "boolean", "default": True},
            "shape": {"type": "object", "default": {"a": 1}},
        },
    }
    colour, rate, widths, on, shape = form_fields(schema)
    assert (colour.kind, colour.nullable, colour.options, colour.shown_default) == (
        InputKind.select,
        True,
        ("red", "blue"),
        "",
    )
    assert (rate.kind, rate.minimum, rate.maximum, rate.step, rate.description) == (InputKind.number, 0, 2, "any", "r")
    assert (widths.kind, widths.shown_default) == (InputKind.integer_list, "3, 4")
    assert on.kind is InputKind.checkbox
    assert (shape.kind, shape.shown_default) == (InputKind.json, '{"a": 1}')


# --- in the browser ----------------------------------------------------------------------------------


@dataclass
class Live:
    """The running stack the browser talks to."""

    url: str
    key: str
    api: httpx.Client
    data_dir: Path
    first_job_id: str  # submitted through the API as the stack starts, to train while the browser starts
    sweep_id: str  # likewise
    study_id: str  # likewise: a grid over two learning rates, run to the end
    worker: subprocess.Popen[bytes]
    db: Database  # the stack's, for a look at its locks

    @contextmanager
    def worker_paused(self) -> Iterator[None]:
        """The worker process frozen (SIGSTOP) for a moment: a job submitted now stays queued until it ends.
        Frozen outside its write transactions: inside one it would hold SQLite's write lock, and the submission
        would wait out the busy timeout and get a 503."""
        freeze(self.worker, self.db, self.first_job_id)
        try:
            yield
        finally:
            self.worker.send_signal(signal.SIGCONT)


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory, synthetic_data_dir: Path) -> Iterator[Live]:
    if SKIP_BROWSER:
        pytest.skip("FMNIST_SKIP_BROWSER=1")
    root = tmp_path_factory.mktemp("browser-stack")
    stack = Stack(root / "home", synthetic_data_dir, root)
    key = secrets.token_urlsafe(24)
    stack.env.update({"FMNIST_API_KEYS": key, "FMNIST_EVENTS_POLL_SECONDS": "0.1"})
    # In this process, which has the code loaded already: a `fmnist db upgrade` process would import it again.
    migrations.upgrade(Settings(home=root / "home").sqlalchemy_url)
    stack.start("api", "serve", "--port", str(stack.port))
    stack.start("worker", "worker", "--device", "cpu")
    try:
        with httpx.Client(base_url=stack.url, timeout=30, headers={"Authorization": f"Bearer {key}"}) as api:
            stack.wait_ready(api)
            spec = {"hidden_layers": [32], "batch_size": 32, "epochs": 3, "seed": 1}
            first = api.post("/v1/jobs", json=spec).json()["id"]
            sweep = api.post("/v1/sweeps", json={"base": spec, "grid": {"lr": [0.05, 0.2]}}).json()["id"]
            study = api.post("/v1/studies", json=STUDY).json()["id"]
            db = Database(Settings(home=root / "home").sqlalchemy_url)
            try:
                yield Live(stack.url, key, api, synthetic_data_dir, first, sweep, study, stack.processes["worker"], db)
            finally:
                db.dispose()
        assert "Traceback" not in stack.log("api") + stack.log("worker"), stack.log("api") + stack.log("worker")
    finally:
        stack.close()


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    if SKIP_BROWSER:
        pytest.skip("FMNIST_SKIP_BROWSER=1")
    if not CHROMIUM.exists():
        pytest.fail(f"no Chromium at {CHROMIUM}: apt-get install chromium (or FMNIST_SKIP_BROWSER=1 to skip)")
    from playwright.sync_api import expect, sync_playwright

    expect.set_options(timeout=TIMEOUT_MS)  # its default, 5 s, is short for a job on a busy two-core machine
    with sync_playwright() as playwright:
        instance = playwright.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox"])
        yield instance
        instance.close()


@pytest.fixture(scope="module")
def trained_model(live: Live) -> dict[str, Any]:
    """A job trained through the API (not the form), for the tests that need a model."""
    job = wait_for_job(live.api, live.first_job_id, timeout=120)
    assert job["status"] == "succeeded", job
    return job


@dataclass
class Watch:
    """Everything that went wrong on a page; `expect` lists the error answers a test provokes on purpose."""

    origin: str
    expected: list[tuple[str, str, int]] = field(default_factory=list)  # method, path regex, status
    problems: list[str] = field(default_factory=list)
    seen: list[tuple[str, str, int]] = field(default_factory=list)
    paths: list[str] = field(default_factory=list)  # every request to this server, in order

    def expect(self, method: str, path: str, status: int) -> None:
        self.expected.append((method, path, status))

    def _expected(self, method: str, url: str, status: int) -> bool:
        path = url.removeprefix(self.origin)
        return any(m == method and re.fullmatch(p, path) and s == status for m, p, s in self.expected)

    def on_console(self, message: ConsoleMessage) -> None:
        if message.type != "error":
            return
        # Chromium logs every 4xx answer as "Failed to load resource"; the answers themselves are checked below.
        if re.fullmatch(r"Failed to load resource: the server responded with a status of \d+ .*", message.text):
            return
        self.problems.append(f"console error: {message.text}")

    def on_response(self, response: Response) -> None:
        request = response.request
        if response.status >= 400:
            self.seen.append((request.method, response.url, response.status))
            if not self._expected(request.method, response.url, response.status):
                self.problems.append(f"{request.method} {response.url} answered {response.status}")

    def on_request(self, request: Request) -> None:
        if request.url.startswith(self.origin + "/"):
            self.paths.append(request.url.removeprefix(self.origin))
        elif not request.url.startswith(("blob:", "data:")):
            self.problems.append(f"request to another origin: {request.url}")

    def on_request_failed(self, request: Request) -> None:
        # ERR_ABORTED is the browser dropping a request it no longer needs (a navigation, a closed stream).
        if request.failure != "net::ERR_ABORTED":
            self.problems.append(f"{request.method} {request.url} failed: {request.failure}")

    def attach(self, page: Page) -> None:
        page.on("console", self.on_console)
        page.on("pageerror", lambda error: self.problems.append(f"uncaught: {error}"))
        page.on("response", self.on_response)
        page.on("request", self.on_request)
        page.on("requestfailed", self.on_request_failed)


@dataclass
class Session:
    page: Page
    watch: Watch
    name: str
    shots: int = 0

    def goto(self, path: str) -> None:
        self.page.goto(self.watch.origin + path)

    def screenshot(self, step: str, full_page: bool = False) -> None:
        # Full-page shots only once a test is done with the page: after one, Chromium has missed the next click.
        self.shots += 1
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        self.page.screenshot(path=ARTIFACTS / f"{self.name}-{self.shots:02d}-{step}.png", full_page=full_page)


def open_session(browser: Browser, live: Live, name: str, key: str | None) -> Iterator[Session]:
    context = browser.new_context(viewport=VIEWPORT)  # type: ignore[arg-type]
    context.set_default_timeout(TIMEOUT_MS)
    if key is not None:
        context.add_init_script(f"localStorage.setItem('fmnist.apiKey', {json.dumps(key)})")
    for old in ARTIFACTS.glob(f"{name}-*.png"):
        old.unlink()  # an earlier run's shots of this test
    page = context.new_page()
    watch = Watch(live.url)
    watch.attach(page)
    session = Session(page, watch, name)
    try:
        yield session
        session.screenshot("end", full_page=True)
        assert not watch.problems, "\n".join(watch.problems)
    finally:
        context.close()


@pytest.fixture
def session(browser: Browser, live: Live, request: pytest.FixtureRequest) -> Iterator[Session]:
    """A page whose browser already holds the API key."""
    yield from open_session(browser, live, request.node.name, live.key)


@pytest.fixture
def keyless(browser: Browser, live: Live, request: pytest.FixtureRequest) -> Iterator[Session]:
    """A page in a browser that has never been given the key."""
    yield from open_session(browser, live, request.node.name, None)


@pytest.mark.browser
@pytest.mark.e2e
@pytest.mark.timeout(180)
def test_submit_from_the_form_and_watch_the_job_finish(session: Session, live: Live) -> None:
    from playwright.sync_api import expect

    page = session.page
    session.goto("/submit")
    for name, value in TINY.items():
        control = page.locator(f"#field-{name}")
        if not control.is_visible():  # in a folded section of the form
            page.locator(f".form-section:has(#field-{name}) > summary").click()
        control.fill(value)
    session.screenshot("form-filled")
    with live.worker_paused():
        # The page opens on a queued job, so all it shows next comes live, over the job's event stream.
        with page.expect_request(re.compile(r".*/v1/jobs/[0-9a-f]+/events$")) as stream:
            page.click("#submit-button")
        job_id = page.url.rsplit("/", 1)[-1]
        assert stream.value.url.endswith(f"/v1/jobs/{job_id}/events")
        expect(page.locator("#job-status [data-status]")).to_have_attribute("data-status", "queued")

    expect(page.locator("#job-status [data-status]")).to_have_attribute("data-status", "succeeded")
    expect(page.locator("#metrics tbody tr")).to_have_count(3)
    # The figure was fetched again after the last epoch, and the browser could draw it.
    expect(page.locator("#curves")).to_be_visible()
    expect(page.locator("#curves")).to_have_attribute("data-epochs", "3")
    assert page.eval_on_selector("#curves", "img => img.naturalWidth") > 100
    expect(page.locator("#progress-text")).to_have_text("epoch 3 of 3")
    expect(page.locator("#cancel-button")).to_be_hidden()
    session.screenshot("job-succeeded")
    # Live through the event stream: the metrics were read once on load and once at the end, not polled.
    assert session.watch.paths.count(f"/v1/jobs/{job_id}/metrics") == 2

    job = live.api.get(f"/v1/jobs/{job_id}").json()
    assert job["spec"]["hidden_layers"] == [32] and job["spec"]["epochs"] == 3 and job["seed"] == 0
    assert job["spec"]["lr"] == 0.1, "untouched fields keep their defaults"
    metrics = live.api.get(f"/v1/jobs/{job_id}/metrics").json()["epochs"]
    shown = page.locator("#metrics tbody tr").first.locator("td").nth(4).inner_text()
    assert shown == f"{100 * metrics[0]['test_acc']:.2f}%"

    session.goto("/")
    row = page.locator(f"#jobs tr[data-job-id='{job_id}']")
    expect(row.locator("[data-status]")).to_have_attribute("data-status", "succeeded")
    expect(row).to_contain_text("784-32-10 relu")
    session.screenshot("job-list")


@pytest.mark.browser
@pytest.mark.e2e
@pytest.mark.timeout(120)
def test_the_server_s_errors_appear_beside_the_fields(session: Session, live: Live) -> None:
    from playwright.sync_api import expect

    page = session.page
    session.watch.expect("POST", "/v1/jobs", 422)
    session.goto("/submit")
    count = live.api.get("/v1/jobs").json()["count"]

    page.select_option("#field-preset", "best-mlp")
    expect(page.locator("#field-optimizer")).to_have_value("adamw")
    expect(page.locator("#field-hidden_layers")).to_have_value("1024, 1024")
    page.click("#reset-button")
    expect(page.locator("#field-optimizer")).to_have_value("sgd")

    page.fill("#field-lr", "1000")
    page.fill("#field-hidden_layers", "32, 0")
    page.click("#submit-button")
    expect(page.locator("#error-lr")).to_contain_text("less than or equal to 100")
    expect(page.locator("#field-lr")).to_have_attribute("aria-invalid", "true")
    expect(page.locator("#error-hidden_layers")).to_contain_text("greater than or equal to 1 (item 2)")
    expect(page.locator("#error-epochs")).to_be_hidden()
    session.screenshot("field-errors")

    # A rule between fields has no field of its own: it shows above the button.
    page.fill("#field-lr", "0.1")
    page.fill("#field-hidden_layers", "32")
    page.check("#field-nesterov")
    page.click("#submit-button")
    expect(page.locator("#form-error")).to_contain_text("nesterov needs optimizer 'sgd' with momentum > 0")
    expect(page.locator("#error-lr")).to_be_hidden()
    session.screenshot("form-error")
    assert live.api.get("/v1/jobs").json()["count"] == count, "a refused spec queues nothing"


def png_payload(name: str, data: bytes) -> FilePayload:
    return {"name": name, "mimeType": "image/png", "buffer": data}


def sample_pngs(data_dir: Path, count: int) -> list[bytes]:
    """The first test images of a data set, as PNG files."""
    with tempfile.TemporaryDirectory() as cache:
        arrays = load_fashion_mnist(data_dir, Path(cache))
        return [png(np.asarray(image)) for image in arrays.test_images[:count].numpy()]


@pytest.mark.browser
@pytest.mark.e2e
@pytest.mark.timeout(120)
def test_predict_dropped_and_chosen_images(session: Session, live: Live, trained_model: dict[str, Any]) -> None:
    from playwright.sync_api import expect

    page = session.page
    first, second = sample_pngs(live.data_dir, 2)
    model_id = trained_model["model_id"]
    session.goto(f"/predict?model={model_id}")
    expect(page.locator("#predict-model")).to_have_value(model_id)
    page.fill("#predict-top-k", "4")

    # Drag and drop: a DataTransfer holding the file, dropped on the zone as a user's drag would.
    page.evaluate(
        """([bytes, name]) => {
            const transfer = new DataTransfer();
            transfer.items.add(new File([new Uint8Array(bytes)], name, { type: "image/png" }));
            const zone = document.getElementById("drop-zone");
            for (const type of ["dragenter", "dragover", "drop"]) {
                zone.dispatchEvent(new DragEvent(type, { dataTransfer: transfer, bubbles: true, cancelable: true }));
            }
        }""",
        [list(first), "dropped.png"],
    )
    card = page.locator(".prediction").first
    expect(card.locator(".bar")).to_have_count(4)
    expect(card).to_contain_text("dropped.png")

    page.set_input_files("#predict-files", files=[png_payload("chosen.png", second)])
    expect(page.locator(".prediction")).to_have_count(2)
    expect(page.locator("#predict-status")).to_have_text(f"Model {model_id}")
    session.screenshot("predictions")

    # The bars show the server's answer: same classes, in order, and widths that follow the probabilities.
    for shown, image in ((page.locator(".prediction").nth(1), first), (page.locator(".prediction").first, second)):
        answer = live.api.post(
            "/v1/predict", params={"model": model_id, "top_k": 4}, files={"file": ("x.png", image, "image/png")}
        ).json()["predictions"][0]
        assert shown.locator(".bar-label").all_inner_texts() == [entry["class_name"] for entry in answer["top_k"]]
        widths = shown.locator(".bar-fill").evaluate_all("fills => fills.map(f => parseFloat(f.style.width))")
        assert widths == pytest.approx([100 * entry["probability"] for entry in answer["top_k"]], abs=0.06)
        assert int(shown.get_attribute("data-class-id") or -1) == answer["class_id"]


@pytest.mark.browser
@pytest.mark.e2e
@pytest.mark.timeout(120)
def test_the_key_box_appears_on_401_and_then_works(keyless: Session, live: Live, trained_model: dict[str, Any]) -> None:
    from playwright.sync_api import expect

    page = keyless.page
    for path in ("/v1/jobs", "/v1/sweeps", "/v1/studies"):
        keyless.watch.expect("GET", rf"{path}\?.*", 401)
    keyless.goto("/")
    expect(page.locator("#key-toggle")).to_be_visible()
    expect(page.locator("#key-box")).to_be_visible()
    expect(page.locator("#key-message")).to_have_text("This server needs an API key.")
    expect(page.locator("#jobs-error")).to_have_text("The jobs need an API key: enter it above.")
    keyless.screenshot("key-asked")

    page.fill("#key-input", "not-the-key")
    page.click("#key-box button[type=submit]")
    expect(page.locator("#key-message")).to_have_text("The server refused this key: enter another.")

    page.fill("#key-input", live.key)
    page.click("#key-box button[type=submit]")
    expect(page.locator(f"#jobs tr[data-job-id='{trained_model['id']}']")).to_be_visible()
    expect(page.locator("#key-box")).to_be_hidden()
    expect(page.locator("#flash")).to_be_hidden()
    assert page.evaluate("localStorage.getItem('fmnist.apiKey')") == live.key


@pytest.mark.browser
@pytest.mark.e2e
@pytest.mark.timeout(120)
def test_a_page_served_as_open_shows_the_key_button_on_a_401(keyless: Session, live: Live) -> None:
    """A key created after the page was served: the page believed the server open, the API's 401 corrects it."""
    from playwright.sync_api import Route, expect

    page = keyless.page
    keyless.watch.expect("GET", r"/v1/models\?.*", 401)
    keyless.watch.expect("GET", "/v1/aliases", 401)

    def served_as_open(route: Route) -> None:
        html = route.fetch().text()
        assert 'data-auth="key"' in html and 'id="key-toggle" class="link" >' in html
        html = html.replace('data-auth="key"', 'data-auth="open"').replace(
            'id="key-toggle" class="link" >', 'id="key-toggle" class="link" hidden>'
        )
        route.fulfill(body=html, content_type="text/html; charset=utf-8")

    page.route(f"{live.url}/models", served_as_open)
    keyless.goto("/models")
    expect(page.locator("#key-box")).to_be_visible()
    expect(page.locator("#key-toggle")).to_be_visible()
    page.click("#key-toggle")
    expect(page.locator("#key-box")).to_be_hidden()
    page.click("#key-toggle")
    expect(page.locator("#key-box")).to_be_visible()


@pytest.mark.browser
@pytest.mark.e2e
@pytest.mark.timeout(180)
def test_the_job_page_sums_the_job_up_and_shows_the_drawn_seed(
    session: Session, live: Live, trained_model: dict[str, Any]
) -> None:
    from playwright.sync_api import expect

    page = session.page
    summary = page.locator("#job-summary")
    with live.worker_paused():
        job = live.api.post("/v1/jobs", json={"hidden_layers": [16], "batch_size": 64, "epochs": 2}).json()
        session.goto(f"/jobs/{job['id']}")
        expect(summary).to_have_text("queued · waiting for a worker")
    # The spec left the seed out: both blocks show the one drawn, marked so.
    for block in ("#job-spec", "#job-details"):
        expect(page.locator(f"{block} [data-field=seed]")).to_have_text(f"{job['seed']} (drawn)")
        expect(page.locator(f"{block} [data-field=seed] [data-drawn]")).to_have_attribute("data-drawn", "true")
    # Live to the end, then the job's own numbers.
    expect(page.locator("#job-status [data-status]")).to_have_attribute("data-status", "succeeded")
    done = live.api.get(f"/v1/jobs/{job['id']}").json()
    accuracy, seconds = f"{100 * done['test_acc']:.2f}%", f"{done['train_seconds']:.1f} s"
    expect(summary).to_have_text(f"succeeded · final test accuracy {accuracy} · trained {seconds} · on cpu")
    expect(summary.locator("[data-field=test_acc]")).to_have_text(f"{100 * done['test_acc']:.2f}%")
    expect(summary.locator("[data-field=val_acc]")).to_have_count(0)  # no validation split
    session.screenshot("summary")

    # A seed the spec gave is shown as it is.
    session.goto(f"/jobs/{trained_model['id']}")
    expect(page.locator("#job-spec [data-field=seed]")).to_have_text("1")
    expect(page.locator("#job-spec [data-field=seed] [data-drawn]")).to_have_attribute("data-drawn", "false")
    # A study's trial holds validation rows out: the line gives its validation accuracy too.
    study = wait_for_study(live.api, live.study_id, timeout=120)
    trial = live.api.get(f"/v1/jobs/{study['best']['job_id']}").json()
    session.goto(f"/jobs/{trial['id']}")
    expect(summary.locator("[data-field=val_acc]")).to_have_text(f"{100 * trial['val_acc']:.2f}%")
    expect(summary.locator("[data-field=test_acc]")).to_have_text(f"{100 * trial['test_acc']:.2f}%")
    expect(summary.locator("[data-field=device]")).to_have_text("cpu")


@pytest.mark.browser
@pytest.mark.e2e
@pytest.mark.timeout(180)
def test_models_page_sets_and_removes_an_alias(session: Session, live: Live, trained_model: dict[str, Any]) -> None:
    from playwright.sync_api import expect

    page = session.page
    model_id = trained_model["model_id"]
    sweep = live.api.get(f"/v1/sweeps/{live.sweep_id}").json()
    wait_for_finished(live.api, [job["id"] for job in sweep["jobs"]], timeout=120)
    newest = live.api.get("/v1/models", params={"limit": 1}).json()["models"][0]["id"]
    assert newest != model_id, "the sweep's models came after it"
    session.goto("/models")
    row = page.locator(f"#models tr[data-model-id='{model_id}']")
    expect(row).to_contain_text("784-32-10 relu")
    # The name starts as a real suggestion, not a placeholder; a new alias points at the newest model.
    expect(page.locator("#alias-name")).to_have_value("production")
    expect(page.locator("#alias-current")).to_have_text("production is a new alias.")
    expect(page.locator("#alias-model")).to_have_value(newest)
    page.fill("#alias-name", "staging")
    page.select_option("#alias-model", model_id)
    expect(page.locator("#alias-submit")).to_have_text("Create alias")
    page.click("#alias-form button[type=submit]")
    expect(row.locator(".chip[data-alias='staging']")).to_be_visible()
    assert live.api.get("/v1/aliases/staging").json()["model_id"] == model_id
    expect(page.locator("#alias-names option[value='staging']")).to_have_count(1)

    # On a fresh page, naming an alias that exists selects the model it points at now, not the newest.
    session.goto("/models")
    expect(page.locator("#alias-names option[value='staging']")).to_have_count(1)
    page.fill("#alias-name", "staging")
    expect(page.locator("#alias-model")).to_have_value(model_id)
    expect(page.locator("#alias-current")).to_have_text("staging points at this model now.")
    page.select_option("#alias-model", newest)
    expect(page.locator("#alias-current")).to_have_text(f"staging points at {model_id[:12]}… now.")
    expect(page.locator("#alias-submit")).to_have_text("Move alias")

    # Each row: one action in sight (Predict), the others in its menu; headers on one line.
    actions = row.locator("td.actions")
    expect(actions.locator(":scope > a.button")).to_have_text("Predict")
    expect(row.get_by_role("button", name="Samples")).to_be_hidden()
    heights = page.locator("#models thead th").evaluate_all(
        "ths => ths.map(th => [th.textContent, th.clientHeight / parseFloat(getComputedStyle(th).fontSize)])"
    )
    assert all(height < 3 for _, height in heights), heights  # padding and one line: about 2.3 ems
    menu = row.locator("details.menu")
    menu.locator("summary").click()
    expect(menu.locator("a.menu-item", has_text="Model card")).to_have_attribute("href", f"/models/{model_id}")
    expect(menu.locator(".menu-item")).to_have_text(["Model card", "Samples", "Checkpoint", "ONNX", "Delete"])
    session.screenshot("menu-open")
    row.get_by_role("button", name="Samples").click()
    assert menu.evaluate("details => details.open") is False, "choosing closes the menu"
    expect(page.locator("#samples")).to_have_attribute("data-loaded", f"/v1/models/{model_id}/samples.svg")
    assert page.eval_on_selector("#samples", "img => img.naturalWidth") > 100
    # A click elsewhere closes an open menu.
    menu.locator("summary").click()
    page.click("h1")
    expect(row.get_by_role("button", name="Checkpoint")).to_be_hidden()
    session.screenshot("alias-set")

    row.get_by_role("button", name="Remove the alias staging").click()
    expect(row.locator(".chip")).to_have_count(0)
    assert live.api.get("/v1/aliases/staging").status_code == 404
    expect(page.locator("#alias-current")).to_have_text("staging is a new alias.")


def job_ids(api: httpx.Client, **query: Any) -> list[str]:
    return [job["id"] for job in api.get("/v1/jobs", params={"limit": 25, **query}).json()["data"]]


def shown_job_ids(page: Page) -> list[str]:
    return page.locator("#jobs tbody tr").evaluate_all("rows => rows.map(r => r.dataset.jobId)")  # type: ignore[no-any-return]


def wait_for_listing(page: Page, api: httpx.Client, timeout: float = 30, **query: Any) -> list[str]:
    """The job ids the page shows once they are the API's for ``query`` (the page polls, jobs may still move)."""
    deadline = time.monotonic() + timeout
    while True:
        expected, shown = job_ids(api, **query), shown_job_ids(page)
        if shown == expected:
            return shown
        assert time.monotonic() < deadline, (query, shown, expected)
        time.sleep(0.2)


def wait_for_finished(api: httpx.Client, job_ids: list[str], timeout: float) -> None:
    for job_id in job_ids:
        assert wait_for_job(api, job_id, timeout=timeout)["status"] == "succeeded"


@pytest.mark.browser
@pytest.mark.e2e
@pytest.mark.timeout(180)
def test_the_job_list_shows_accuracy_and_sorts_by_a_column(
    session: Session, live: Live, trained_model: dict[str, Any]
) -> None:
    from playwright.sync_api import expect

    page = session.page
    sweep = live.api.get(f"/v1/sweeps/{live.sweep_id}").json()
    wait_for_finished(live.api, [job["id"] for job in sweep["jobs"]], timeout=120)
    session.goto("/")
    row = page.locator(f"#jobs tr[data-job-id='{trained_model['id']}']")
    job = live.api.get(f"/v1/jobs/{trained_model['id']}").json()
    expect(row.locator("[data-field=test_acc]")).to_have_text(f"{100 * job['test_acc']:.2f}%")
    expect(row.locator("[data-field=val_acc]")).to_have_text("\N{EN DASH}")  # no validation split
    expect(row.locator("[data-field=train_seconds]")).to_have_text(f"{job['train_seconds']:.1f} s")
    expect(page.locator("#jobs th[data-sort=created_at]")).to_have_attribute("aria-sort", "descending")
    expect(page.locator("#jobs-loading")).to_be_hidden()

    for column in ("test_acc", "val_acc", "train_seconds"):
        header = page.locator(f"#jobs th[data-sort={column}]")
        with page.expect_request(re.compile(rf".*/v1/jobs\?.*sort=-{column}.*")):
            header.locator("button").click()
        expect(header).to_have_attribute("aria-sort", "descending")
        expect(page.locator("#jobs th[aria-sort]")).to_have_count(1)
        wait_for_listing(page, live.api, sort=f"-{column}")
        assert page.url.endswith(f"/?sort=-{column}"), "the sort stays in the page's URL"
    # Clicked again: the other way round, jobs without a value still last.
    header = page.locator("#jobs th[data-sort=train_seconds]")
    header.locator("button").click()
    expect(header).to_have_attribute("aria-sort", "ascending")
    ascending = wait_for_listing(page, live.api, sort="train_seconds")
    seconds = [live.api.get(f"/v1/jobs/{job_id}").json()["train_seconds"] for job_id in ascending]
    valued = [value for value in seconds if value is not None]
    assert valued == sorted(valued) and seconds == valued + [None] * (len(seconds) - len(valued))
    session.screenshot("sorted")

    # By test accuracy, best first, on the page the accuracies shown say so.
    page.locator("#jobs th[data-sort=test_acc] button").click()
    shown = wait_for_listing(page, live.api, sort="-test_acc")
    texts = page.locator("#jobs tbody [data-field=test_acc]").all_inner_texts()
    accuracies = [float(text.rstrip("%")) for text in texts if text != "\N{EN DASH}"]
    assert len(accuracies) >= 3 and accuracies == sorted(accuracies, reverse=True), texts
    assert texts[: len(accuracies)] == [f"{value:.2f}%" for value in accuracies], "the jobs without one come last"
    assert len(shown) == len(texts)


@pytest.mark.browser
@pytest.mark.e2e
@pytest.mark.timeout(180)
def test_the_job_list_pages_through_cursors_in_the_chosen_order(
    session: Session, live: Live, trained_model: dict[str, Any]
) -> None:
    from playwright.sync_api import expect

    page = session.page
    sweep = live.api.get(f"/v1/sweeps/{live.sweep_id}").json()
    wait_for_finished(live.api, [job["id"] for job in sweep["jobs"]], timeout=120)
    session.goto("/?sort=-test_acc&limit=2")
    expect(page.locator("#jobs th[data-sort=test_acc]")).to_have_attribute("aria-sort", "descending")
    first = live.api.get("/v1/jobs", params={"sort": "-test_acc", "limit": 2}).json()
    assert first["next_cursor"] and first["count"] >= 3
    wait_for_listing(page, live.api, sort="-test_acc", limit=2)
    expect(page.locator("#newer")).to_be_disabled()
    expect(page.locator("#jobs-count")).to_have_text(f"1\N{EN DASH}2 of {first['count']}")

    with page.expect_request(re.compile(r".*/v1/jobs\?.*cursor=.*")) as request:
        page.click("#older")
    assert "sort=-test_acc" in request.value.url and "offset" not in request.value.url
    expect(page.locator("#jobs-count")).to_have_text(re.compile("^3\N{EN DASH}[34] of \\d+$"))
    expect(page.locator("#newer")).to_be_enabled()
    second = live.api.get("/v1/jobs", params={"sort": "-test_acc", "limit": 2, "cursor": first["next_cursor"]}).json()
    deadline = time.monotonic() + 30
    while shown_job_ids(page) != [job["id"] for job in second["data"]]:
        assert time.monotonic() < deadline, (shown_job_ids(page), second)
        time.sleep(0.2)
        second = live.api.get(
            "/v1/jobs", params={"sort": "-test_acc", "limit": 2, "cursor": first["next_cursor"]}
        ).json()
    assert not set(shown_job_ids(page)) & {job["id"] for job in first["data"]}, "the next page, not the same one"
    session.screenshot("second-page")

    page.click("#newer")
    expect(page.locator("#jobs-count")).to_have_text(f"1\N{EN DASH}2 of {first['count']}")
    wait_for_listing(page, live.api, sort="-test_acc", limit=2)


@pytest.mark.browser
@pytest.mark.e2e
@pytest.mark.timeout(120)
def test_the_job_list_says_it_is_loading_and_when_there_are_no_jobs(session: Session, live: Live) -> None:
    from playwright.sync_api import Route, expect

    page = session.page
    listing = re.compile(r".*/v1/jobs\?.*")
    held: list[Route] = []
    page.route(listing, lambda route: held.append(route))  # the first answer waits until the test lets it through
    session.goto("/")
    expect(page.locator("#jobs-loading")).to_have_text("Loading…")
    expect(page.locator("#jobs")).to_have_attribute("aria-busy", "true")
    expect(page.locator("#jobs-empty")).to_be_hidden()
    session.screenshot("loading")
    deadline = time.monotonic() + 30
    while not held:  # the handler runs while Playwright waits
        assert time.monotonic() < deadline, "the page asked for no jobs"
        page.wait_for_timeout(100)
    page.wait_for_timeout(300)
    expect(page.locator("#jobs-loading")).to_be_visible()
    assert len(held) == 1, "no poll while the first answer is awaited"
    held[0].continue_()
    page.unroute(listing)
    expect(page.locator("#jobs tbody tr").first).to_be_visible()
    expect(page.locator("#jobs-loading")).to_be_hidden()
    expect(page.locator("#jobs")).to_have_attribute("aria-busy", "false")

    # A server with no jobs: the next poll's answer is empty.
    empty = {"data": [], "count": 0, "limit": 25, "offset": 0, "next_cursor": None}
    page.route(listing, lambda route: route.fulfill(json=empty))
    expect(page.locator("#jobs-empty")).to_be_visible()
    expect(page.locator("#jobs-empty")).to_contain_text("No jobs yet")
    expect(page.locator("#jobs")).to_be_hidden()
    # It says how to submit one: the form, or this command for this server (which asks for a key).
    expect(page.locator("#jobs-empty a", has_text="the submit form")).to_have_attribute("href", "/submit")
    command = page.locator("#jobs-empty-curl").inner_text()
    assert command == (
        f'curl -X POST {live.url}/v1/jobs -H "Authorization: Bearer $FMNIST_API_KEY" '
        "-H 'content-type: application/json' -d '{\"epochs\": 10}'"
    )
    expect(page.locator("#jobs-empty-cli")).to_have_text(f"fmnist submit --url {live.url} --epochs 10")
    session.screenshot("empty")
    if shutil.which("curl"):  # the command works as shown, pasted into a shell
        with live.worker_paused():
            ran = subprocess.run(
                ["bash", "-c", command], env={**os.environ, "FMNIST_API_KEY": live.key}, capture_output=True, timeout=30
            )
            queued = json.loads(ran.stdout)
            assert queued["status"] == "queued" and queued["spec"]["epochs"] == 10, ran
            assert live.api.post(f"/v1/jobs/{queued['id']}/cancel").status_code == 200
    # Filtered to a status no job has: the table stays, with a line that says so.
    page.select_option("#status-filter", "failed")
    expect(page.locator("#jobs-none-match")).to_have_text("No failed jobs.")
    expect(page.locator("#jobs-empty")).to_be_hidden()
    expect(page.locator("#jobs")).to_be_visible()

    # A refresh that fails says why, above the rows it had, and the next poll that succeeds clears it.
    page.unroute(listing)
    session.watch.expect("GET", r"/v1/jobs\?.*", 500)
    broken = {"detail": "the database is unavailable"}
    page.route(listing, lambda route: route.fulfill(status=500, json=broken))
    error = page.locator("#jobs-error")
    expect(error).to_have_text("Could not load the jobs: the database is unavailable. Trying again every 2 s.")
    expect(page.locator("#jobs-loading")).to_be_hidden()
    session.screenshot("error")
    page.unroute(listing)
    expect(error).to_be_hidden()


@pytest.mark.browser
@pytest.mark.e2e
@pytest.mark.timeout(180)
def test_the_model_page_shows_the_card_and_the_figures(
    session: Session, live: Live, trained_model: dict[str, Any]
) -> None:
    from playwright.sync_api import expect

    page = session.page
    model_id = trained_model["model_id"]
    card = live.api.get(f"/v1/models/{model_id}/card").json()
    session.goto("/models")
    page.locator(f"#models tr[data-model-id='{model_id}'] a.model-link").click()
    page.wait_for_url(f"**/models/{model_id}")
    expect(page.locator("#card")).to_be_visible()
    expect(page.locator("#card-loading")).to_be_hidden()
    expect(page.locator("#model-id")).to_have_text(model_id)
    expect(page.locator("#model-summary")).to_have_text(card["summary"])

    kept = card["kept_epoch"]
    expect(page.locator("#card-model [data-field='kept epoch']")).to_have_text(
        f"epoch {kept['epoch']}: the last trained, no validation split to choose by (3 of 3 planned epochs trained)"
    )
    expect(page.locator("#card-model [data-field='test acc']")).to_have_text(f"{100 * kept['test_acc']:.2f}%")
    expect(page.locator("#card-model [data-field=parameters]")).to_have_text(f"{card['parameters']:,}")
    job_link = page.locator("#card-lineage [data-field=job] a")
    expect(job_link).to_have_attribute("href", f"/jobs/{trained_model['id']}")
    expect(page.locator("#card-lineage [data-field=attempts]")).to_have_text("1 of 3")
    provenance = card["provenance"]
    expect(page.locator("#card-provenance [data-field=seed]")).to_have_text(str(provenance["seed"]))
    expect(page.locator("#card-provenance [data-field=device]")).to_have_text("cpu")
    for name, sha in provenance["data_sha256"].items():
        expect(page.locator(f"#card-provenance [data-field='{name}']")).to_have_text(sha)
    # Every spec field, as the spec has them.
    shown_spec = page.locator("#card-spec dd").evaluate_all("dds => dds.map(d => [d.dataset.field, d.textContent])")
    assert [(name, json.loads(text)) for name, text in shown_spec] == list(card["spec"].items())
    contract = card["input_contract"]
    expect(page.locator("#card-input [data-field=image]")).to_have_text(
        "28\N{MULTIPLICATION SIGN}28 grey, a light garment on a dark background"
    )
    expect(page.locator("#card-input-steps li")).to_have_count(len(contract["upload_steps"]))
    limits = card["known_limits"]
    rows = page.locator("#card-limits tbody tr")
    expect(rows).to_have_count(len(limits["uploads"]))
    for row, upload in zip(rows.all(), limits["uploads"], strict=True):
        cells = row.locator("td").all_inner_texts()
        change = "\N{EN DASH}" if upload["change"] is None else f"{upload['change']:+.4f}"
        assert cells == [upload["upload"], f"{upload['accuracy']:.4f}", change, f"{upload['agreement']:.4f}"]
    expect(page.locator("#card-limits-setup")).to_contain_text("bench.upload_accuracy")
    expect(page.locator("#card-limits-notes li")).to_have_count(len(limits["notes"]))

    per_class = page.locator("#per-class tbody tr")
    expect(per_class).to_have_count(10)
    for row, scores in zip(per_class.all(), card["evaluation"]["per_class"], strict=True):
        assert row.locator("td").all_inner_texts() == [
            scores["class_name"],
            f"{scores['precision']:.4f}",
            f"{scores['recall']:.4f}",
            f"{scores['f1']:.4f}",
            str(scores["support"]),
        ]
    for name in ("confusion", "calibration", "mistakes"):
        img = page.locator(f"#{name}")
        expect(img).to_have_attribute("data-loaded", f"/v1/models/{model_id}/{name}.svg")
        assert img.evaluate("img => img.naturalWidth") > 100, name
    session.screenshot("model-card")


@pytest.mark.browser
@pytest.mark.e2e
@pytest.mark.timeout(180)
def test_the_model_page_by_alias_for_a_study_trial_and_for_no_model(session: Session, live: Live) -> None:
    from playwright.sync_api import expect

    page = session.page
    study = wait_for_study(live.api, live.study_id, timeout=120)
    best = study["best"]
    assert live.api.put("/v1/aliases/card-test", json={"model_id": best["model_id"]}).status_code in (200, 201)
    try:
        session.goto("/models/card-test")
        expect(page.locator("#model-id")).to_have_text(best["model_id"])
        expect(page.locator("#model-aliases [data-alias='card-test']")).to_be_visible()
        # A study's trials hold validation rows out: the kept epoch is the best on them.
        expect(page.locator("#card-model [data-field='kept epoch']")).to_contain_text("the best validation accuracy")
        expect(page.locator("#card-model [data-field='val acc']")).to_have_text(f"{100 * best['val_acc']:.2f}%")
        study_cell = page.locator("#card-lineage [data-field=study]")
        expect(study_cell).to_have_text(f"{live.study_id} trial {best['number']}")
        expect(study_cell.locator("a")).to_have_attribute("href", f"/studies/{live.study_id}")
        expect(page.locator("#card-evaluation")).to_contain_text("Validation split")
        expect(page.locator("#mistakes")).to_have_attribute(
            "data-loaded", f"/v1/models/{best['model_id']}/mistakes.svg"
        )
        expect(page.locator("#predict-link")).to_have_attribute("href", f"/predict?model={best['model_id']}")
    finally:
        live.api.delete("/v1/aliases/card-test")

    session.watch.expect("GET", "/v1/models/no-such-model/card", 404)
    session.goto("/models/no-such-model")
    expect(page.locator("#flash")).to_have_text("No model or alias no-such-model.")
    expect(page.locator("#card")).to_be_hidden()
    expect(page.locator("#card-loading")).to_be_hidden()


@pytest.mark.browser
@pytest.mark.e2e
@pytest.mark.timeout(120)
def test_sweep_page_compares_its_jobs(session: Session, live: Live) -> None:
    from playwright.sync_api import expect

    page = session.page
    session.goto(f"/sweeps/{live.sweep_id}")
    expect(page.locator("#sweep-counts")).to_have_text("2 succeeded")
    rows = page.locator("#sweep-jobs tbody tr")
    expect(rows).to_have_count(2)
    sweep = live.api.get(f"/v1/sweeps/{live.sweep_id}").json()
    assert rows.evaluate_all("rows => rows.map(r => r.dataset.jobId)") == [job["id"] for job in sweep["jobs"]]
    expect(rows.first).to_contain_text(f"lr = {sweep['jobs'][0]['params']['lr']}")
    # The figure shows both jobs' last epochs.
    expect(page.locator("#compare")).to_have_attribute("data-loaded", re.compile(r"/v1/compare\.svg\?jobs=.+"))
    assert page.eval_on_selector("#compare", "img => img.naturalWidth") > 100
    expect(page.locator("#cancel-sweep")).to_be_hidden()


def wait_for_study(api: httpx.Client, study_id: str, timeout: float) -> dict[str, Any]:
    """The study once it has ended and so have all its trials."""
    deadline = time.monotonic() + timeout
    while True:
        study: dict[str, Any] = api.get(f"/v1/studies/{study_id}").json()
        final = {"succeeded", "failed", "cancelled", "pruned"}
        if study["status"] != "running" and all(trial["status"] in final for trial in study["trials"]):
            return study
        assert time.monotonic() < deadline, study
        time.sleep(0.2)


@pytest.mark.browser
@pytest.mark.e2e
@pytest.mark.timeout(180)
def test_study_page_shows_its_trials_and_the_best(session: Session, live: Live) -> None:
    from playwright.sync_api import expect

    page = session.page
    study = wait_for_study(live.api, live.study_id, timeout=120)
    assert study["status"] == "completed" and study["counts"]["succeeded"] == 2, study

    session.goto(f"/studies/{live.study_id}")
    expect(page.locator("#study-status [data-status]")).to_have_attribute("data-status", "completed")
    expect(page.locator("#study-counts")).to_have_text("2 of 2 trials: 2 succeeded")
    expect(page.locator("#cancel-study")).to_be_hidden()
    rows = page.locator("#study-trials tbody tr")
    expect(rows).to_have_count(2)
    # In the order of suggestion, each with its parameters, status, epochs, objective and job.
    assert rows.evaluate_all("rows => rows.map(r => r.dataset.number)") == ["0", "1"]
    for row, trial in zip(rows.all(), study["trials"], strict=True):
        cells = row.locator("td").all_inner_texts()
        assert cells[:6] == [
            str(trial["number"]),
            "succeeded",
            f"lr = {trial['params']['lr']}",
            "2/2",
            f"{100 * trial['val_acc']:.2f}%",
            f"{100 * trial['test_acc']:.2f}%",
        ], cells
        assert cells[6] == "\N{EN DASH}", "a grid of two prunes nothing"
        expect(row.locator("a")).to_have_attribute("href", f"/jobs/{trial['job_id']}")
    best = study["best"]
    line = page.locator("#study-best")
    expect(line).to_contain_text(f"Best: trial {best['number']} (lr = {best['params']['lr']})")
    expect(line.locator("[data-field=val_acc]")).to_have_text(f"{100 * best['val_acc']:.2f}%")
    expect(line.locator("[data-field=test_acc]")).to_have_text(f"{100 * best['test_acc']:.2f}%")
    expect(line.locator(f"a[href='/jobs/{best['job_id']}']")).to_be_visible()
    expect(line.locator(f"a[href='/predict?model={best['model_id']}']")).to_be_visible()
    expect(page.locator("#study-details")).to_contain_text('{"lr":{"choices":[0.1,0.2]}}')
    for name in STUDY_FIGURES:
        img = page.locator(f"#study-{name}")
        expect(img).to_have_attribute("data-loaded", f"/v1/studies/{live.study_id}/{name}.svg")
        assert img.evaluate("img => img.naturalWidth") > 100
        expect(page.locator(f"#study-{name}-empty")).to_be_hidden()
    session.screenshot("study")

    # A trial's job page leads back to its study; the job list lists the study and tags its trials.
    rows.first.locator("a").click()
    expect(page.locator("#study-link")).to_have_attribute("href", f"/studies/{live.study_id}")
    session.goto("/")
    listed = page.locator(f"#studies tr[data-study-id='{live.study_id}']")
    expect(listed.locator("[data-status]")).to_have_attribute("data-status", "completed")
    expect(listed).to_contain_text("2 of 2: 2 succeeded")
    expect(listed).to_contain_text(f"{100 * best['val_acc']:.2f}%")
    expect(page.locator("#studies-empty")).to_be_hidden()
    trial_row = page.locator(f"#jobs tr[data-job-id='{best['job_id']}']")
    expect(trial_row.locator("a.tag", has_text="study")).to_have_attribute("href", f"/studies/{live.study_id}")


@pytest.mark.browser
@pytest.mark.e2e
@pytest.mark.timeout(120)
def test_cancel_a_study_from_its_page(session: Session, live: Live) -> None:
    from playwright.sync_api import expect

    page = session.page
    with live.worker_paused():
        # One trial at a time: the first queued, the second not yet suggested; the worker will run none.
        body = {**STUDY, "max_concurrent": 1, "seed": 1}
        study = live.api.post("/v1/studies", json=body).json()
        session.goto(f"/studies/{study['id']}")
        expect(page.locator("#study-status [data-status]")).to_have_attribute("data-status", "running")
        rows = page.locator("#study-trials tbody tr")
        expect(rows).to_have_count(1)
        expect(rows.first.locator("[data-status]")).to_have_attribute("data-status", "queued")
        page.click("#cancel-study")
        expect(page.locator("#study-status [data-status]")).to_have_attribute("data-status", "cancelled")
        expect(rows.first.locator("[data-status]")).to_have_attribute("data-status", "cancelled")
        expect(page.locator("#cancel-study")).to_be_hidden()
        expect(page.locator("#study-counts")).to_have_text("1 of 2 trials: 1 cancelled")
        expect(page.locator("#study-best")).to_be_hidden()
    after = live.api.get(f"/v1/studies/{study['id']}").json()
    assert after["status"] == "cancelled" and [t["status"] for t in after["trials"]] == ["cancelled"], after


@pytest.mark.browser
@pytest.mark.e2e
@pytest.mark.timeout(120)
def test_swagger_ui_renders_offline(session: Session) -> None:
    from playwright.sync_api import expect

    session.goto("/docs")
    expect(session.page.locator(".swagger-ui .info .title")).to_contain_text("fmnist-service")
    expect(session.page.locator(".opblock-summary-path", has_text="/v1/jobs/{job_id}/events")).to_be_visible()


# --- the README's screenshots --------------------------------------------------------------------------


SHOTS = ("job", "jobs", "sweep", "predict", "models", "submit")


def readme_screenshots(folder: Path, names: tuple[str, ...] = SHOTS) -> None:
    """Trains a few jobs on the real data through a real stack without keys and photographs the dashboard at
    1280x800, as ``docs/img/dashboard-<name>.png`` for each of ``names``."""
    from PIL import Image
    from playwright.sync_api import expect, sync_playwright

    unknown = set(names) - set(SHOTS)
    if unknown:
        raise SystemExit(f"no screenshot named {', '.join(sorted(unknown))}: choose from {', '.join(SHOTS)}")
    expect.set_options(timeout=TIMEOUT_MS)
    data_dir = real_data_dir()
    if data_dir is None:
        raise SystemExit("the README screenshots need the real data: set FMNIST_DATA_DIR")
    work = Path(os.environ.get("TMPDIR", "/tmp")) / f"fmnist-screenshots-{secrets.token_hex(4)}"
    work.mkdir(parents=True)
    stack = Stack(work / "home", data_dir, work)
    migrations.upgrade(Settings(home=work / "home").sqlalchemy_url)
    stack.start("api", "serve", "--port", str(stack.port))
    stack.start("worker", "worker", "--device", "cpu", "--concurrency", "2")
    folder.mkdir(parents=True, exist_ok=True)
    try:
        with httpx.Client(base_url=stack.url, timeout=60) as api, sync_playwright() as playwright:
            stack.wait_ready(api)
            sweep = api.post(
                "/v1/sweeps",
                json={"base": {"epochs": 10, "seed": 0}, "grid": {"hidden_layers": [[64], [256], [1024]]}},
            ).json()
            if set(names) != {"submit"}:  # the form alone needs no trained job
                for job in sweep["jobs"]:
                    wait_for_job(api, job["id"], timeout=900)
            best = api.get(f"/v1/sweeps/{sweep['id']}").json()["jobs"][0]
            api.put("/v1/aliases/production", json={"model_id": best["model_id"]})
            # A wider job left running, so that the job list shows a live one; cancelled at the end.
            running = api.post("/v1/jobs", json={"hidden_layers": [1024, 512], "lr": 0.3, "epochs": 30}).json()

            browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox"])
            page = browser.new_page(viewport=VIEWPORT)  # type: ignore[arg-type]
            page.set_default_timeout(TIMEOUT_MS)

            def shot(name: str) -> None:
                path = folder / f"dashboard-{name}.png"
                page.screenshot(path=path)
                # A palette of 256 colours is lossless enough for flat UI and a quarter of the size.
                Image.open(path).convert("RGB").quantize(256).save(path, optimize=True)
                print(path, path.stat().st_size, "bytes")

            if "job" in names:
                page.goto(f"{stack.url}/jobs/{best['id']}")
                expect(page.locator("#curves")).to_have_attribute("data-epochs", "10")
                expect(page.locator("#job-summary [data-field=test_acc]")).to_be_visible()
                shot("job")
            if "jobs" in names:
                page.goto(f"{stack.url}/")
                expect(page.locator("#sweeps tbody tr")).to_have_count(1)
                expect(page.locator(f"#jobs tr[data-job-id='{running['id']}'] [data-status]")).to_have_attribute(
                    "data-status", "running"
                )
                shot("jobs")
            if "sweep" in names:
                page.goto(f"{stack.url}/sweeps/{sweep['id']}")
                expect(page.locator("#compare")).to_be_visible()
                shot("sweep")
            if "predict" in names:
                page.goto(f"{stack.url}/predict")
                images = sample_pngs(data_dir, 4)
                page.set_input_files(
                    "#predict-files",
                    files=[png_payload(f"test-{i}.png", image) for i, image in enumerate(images)],
                )
                expect(page.locator(".prediction")).to_have_count(4)
                shot("predict")
            if "models" in names:
                page.goto(f"{stack.url}/models")
                expect(page.locator("#models tbody tr")).to_have_count(3)
                expect(page.locator("#alias-current")).to_have_text("production points at this model now.")
                shot("models")
            if "submit" in names:
                page.goto(f"{stack.url}/submit")
                page.select_option("#field-preset", "best-mlp")
                shot("submit")
            api.post(f"/v1/jobs/{running['id']}/cancel")
            browser.close()
    finally:
        stack.close()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    # python -m tests.api.test_browser [FOLDER [NAME ...]]: every screenshot, or only those named.
    readme_screenshots(Path(sys.argv[1] if len(sys.argv) > 1 else "docs/img"), tuple(sys.argv[2:]) or SHOTS)
