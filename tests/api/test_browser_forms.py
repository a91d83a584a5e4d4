"""The submit page's forms: the spec in labelled, foldable sections, a submit button that stays in view, errors
counted from 1, and sweeps and studies submitted from the page.

The browser tests drive Debian's Chromium through Playwright against the real server and worker processes of
tests/api/test_browser.py (its ``live`` stack and ``browser``), at 1400x900, as a new user sees the page.
Screenshots land beside that file's, in test-artifacts/browser.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import pytest
from fastapi.testclient import TestClient

from models.spec import SpecFields
from service.api.web.forms import LAYOUT, SECTIONS, InputKind, bounds_text, form_fields
from tests.api import test_browser
from tests.api.test_browser import ARTIFACTS, TIMEOUT_MS, Live, Session, Watch

if TYPE_CHECKING:
    from playwright.sync_api import Browser, Locator, Page

# The stack, the browser and the test client of tests/api/test_browser.py, as fixtures of this module too.
live = test_browser.live
browser = test_browser.browser
client = test_browser.client

WIDE = {"width": 1400, "height": 900}
# Tiny runs: one epoch of a narrow layer on the synthetic set.
BASE = {"hidden_layers": "16", "epochs": "1", "batch_size": "64", "seed": "0"}


# --- forms.py, without a browser ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("schema", "text"),
    [
        ({"type": "number", "exclusiveMinimum": 0, "maximum": 100}, "> 0, ≤ 100"),
        ({"type": "number", "minimum": 0.0, "exclusiveMaximum": 1.0}, "≥ 0, < 1"),
        ({"type": "integer", "minimum": 1, "maximum": 60000}, "≥ 1, ≤ 60,000"),
        ({"type": "integer", "minimum": 0, "maximum": 2**63 - 1}, "≥ 0, ≤ 9,223,372,036,854,775,807"),
        ({"type": "number", "minimum": 0.0, "maximum": 0.5}, "≥ 0, ≤ 0.5"),
        (
            {"type": "array", "maxItems": 8, "items": {"type": "integer", "minimum": 1, "maximum": 8192}},
            "up to 8 values, each ≥ 1, ≤ 8192",
        ),
        ({"type": "array", "items": {"type": "integer"}}, ""),
        ({"type": "boolean"}, ""),
        ({"enum": ["a", "b"]}, ""),
    ],
)
def test_bounds_read_as_words(schema: dict[str, Any], text: str) -> None:
    assert bounds_text(schema) == text


def test_the_spec_s_fields_get_labels_sections_and_bounds() -> None:
    fields = {field.name: field for field in form_fields(SpecFields.model_json_schema())}
    assert list(fields) == list(SpecFields.model_fields), "form_fields keeps the schema's order"
    lr = fields["lr"]
    assert (lr.label, lr.section.slug, lr.bounds, lr.default_text) == (
        "Learning rate",
        "optimiser",
        "> 0, ≤ 100",
        "0.1",
    )
    assert "step size" in lr.description.lower()
    assert (fields["seed"].section.slug, fields["seed"].default_text) == ("run", "none")
    assert (fields["hflip"].section.slug, fields["hflip"].default_text) == ("regularisation", "off")
    assert fields["hidden_layers"].bounds == "up to 8 values, each ≥ 1, ≤ 8192"
    assert fields["max_seconds"].label == "Time limit (seconds)"
    # Every field of today's spec has a place, a label and a description of its own.
    assert all(field.section.slug != "other" and field.label != field.name for field in fields.values())
    assert all(field.description for field in fields.values())
    # Positions follow the sections, then LAYOUT's order within one.
    shown = sorted(fields.values(), key=lambda field: field.position)
    assert [field.name for field in shown] == sorted(LAYOUT, key=lambda name: SECTIONS[LAYOUT[name][0]].order)
    assert [field.section.slug for field in shown][:1] == ["architecture"]


def test_a_field_the_layout_does_not_know_lands_in_other_under_its_schema_title() -> None:
    schema = {
        "properties": {
            "lr": {"type": "number", "exclusiveMinimum": 0, "default": 0.1, "title": "Lr"},
            "new_knob": {"type": "integer", "minimum": 2, "default": 3, "title": "New Knob", "description": "d"},
            "untitled": {"type": "boolean", "default": True},
        }
    }
    lr, knob, untitled = form_fields(schema)
    assert (lr.label, lr.section.slug) == ("Learning rate", "optimiser")
    assert (knob.label, knob.section.slug, knob.kind, knob.bounds, knob.minimum) == (
        "New Knob",
        "other",
        InputKind.integer,
        "≥ 2",
        2,
    )
    assert (untitled.label, untitled.default_text) == ("untitled", "on")
    assert lr.position < knob.position < untitled.position


def test_the_page_groups_the_fields_and_folds_the_rare_ones(client: TestClient) -> None:
    html = client.get("/submit").text
    assert '/static/forms.css"' in html and client.get("/static/forms.css").status_code == 200
    sections = re.findall(r'<details class="form-section" id="section-([a-z]+)" data-section="[a-z]+"\s*(open)?>', html)
    assert sections == [
        ("architecture", "open"),
        ("optimiser", "open"),
        ("schedule", "open"),
        ("regularisation", ""),
        ("run", ""),
    ]
    shown = re.findall(r'<div class="field" data-field="([a-z_]+)" data-kind', html)
    assert sorted(shown) == sorted(SpecFields.model_fields), "every spec field, once"
    assert shown.index("dropout") > shown.index("epochs") and shown.index("seed") > shown.index("dropout")
    assert '<span class="label-text">Learning rate</span> <code class="field-name">lr</code>' in html
    assert '<span class="bounds">&gt; 0, ≤ 100</span>' in html
    assert "Default: null" not in html and "&#34;relu&#34;" not in html
    defaults = json.loads(re.search(r'id="spec-defaults">(.*?)</script>', html, re.S).group(1))  # type: ignore[union-attr]
    assert defaults == {name: info.get_default() for name, info in SpecFields.model_fields.items()}


# --- in the browser, at 1400x900 ------------------------------------------------------------------------


@pytest.fixture
def wide(browser: Browser, live: Live, request: pytest.FixtureRequest) -> Iterator[Session]:
    """A 1400x900 page whose browser holds the API key; fails the test on any console error or unexpected 4xx."""
    context = browser.new_context(viewport=WIDE)  # type: ignore[arg-type]
    context.set_default_timeout(TIMEOUT_MS)
    context.add_init_script(f"localStorage.setItem('fmnist.apiKey', {json.dumps(live.key)})")
    name = request.node.name
    for old in ARTIFACTS.glob(f"{name}-*.png"):
        old.unlink()
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


def in_viewport(page: Page, locator: Locator) -> bool:
    box = locator.bounding_box()
    size = page.viewport_size
    assert box is not None and size is not None
    return box["y"] >= 0 and box["y"] + box["height"] <= size["height"] and box["x"] + box["width"] <= size["width"]


def fill_base(page: Page) -> None:
    for name, value in BASE.items():
        control = page.locator(f"#field-{name}")
        if not control.is_visible():  # in a folded section
            page.locator(f".form-section:has(#field-{name}) > summary").click()
        control.fill(value)


@pytest.mark.browser
@pytest.mark.e2e
@pytest.mark.timeout(120)
def test_labels_show_titles_and_ranges_not_raw_names(wide: Session) -> None:
    from playwright.sync_api import expect

    page = wide.page
    wide.goto("/submit")
    expect(page.locator("label[for=field-lr] .label-text")).to_have_text("Learning rate")
    expect(page.locator("[data-field=lr] .description")).to_contain_text("Step size of the optimiser")
    expect(page.locator("[data-field=lr] .bounds")).to_have_text("> 0, ≤ 100")
    expect(page.locator("[data-field=lr] .default")).to_have_text("default 0.1")
    expect(page.locator("label[for=field-hidden_layers] .label-text")).to_have_text("Hidden layers")
    expect(page.locator("label[for=field-batch_size] .label-text")).to_have_text("Batch size (images)")
    labels = page.locator(".field[data-kind] .label-text").all_inner_texts()
    assert len(labels) == len(SpecFields.model_fields)
    assert not set(labels) & set(SpecFields.model_fields), "no label is a raw field name"
    body = page.locator("main").inner_text()
    assert "Default: null" not in body and '"relu"' not in body
    wide.screenshot("labels")


@pytest.mark.browser
@pytest.mark.e2e
@pytest.mark.timeout(120)
def test_sections_fold_and_unfold_and_a_preset_opens_what_it_changes(wide: Session) -> None:
    from playwright.sync_api import expect

    page = wide.page
    wide.goto("/submit")
    expect(page.locator("#field-lr")).to_be_visible()
    expect(page.locator("#field-epochs")).to_be_visible()
    expect(page.locator("#field-dropout")).to_be_hidden()
    expect(page.locator("#field-seed")).to_be_hidden()
    wide.screenshot("folded")

    page.locator("#section-regularisation > summary").click()
    expect(page.locator("#field-dropout")).to_be_visible()
    page.locator("#section-architecture > summary").click()
    expect(page.locator("#field-hidden_layers")).to_be_hidden()
    wide.screenshot("unfolded")
    page.locator("#section-regularisation > summary").click()
    page.locator("#section-architecture > summary").click()
    expect(page.locator("#field-dropout")).to_be_hidden()
    expect(page.locator("#field-hidden_layers")).to_be_visible()

    # best-mlp sets dropout and label smoothing: the folded section opens and says how many it changed.
    page.select_option("#field-preset", "best-mlp")
    expect(page.locator("#field-dropout")).to_be_visible()
    expect(page.locator("#field-dropout")).to_have_value("0.3")
    expect(page.locator("#section-regularisation .section-changed")).to_have_text("2 changed")
    expect(page.locator("#submit-summary")).to_contain_text("0 fields changed from best-mlp")
    expect(page.locator("#section-architecture .section-changed")).to_have_text("2 changed")
    page.select_option("#field-activation", "gelu")
    expect(page.locator("#section-architecture .section-changed")).to_have_text("3 changed")
    expect(page.locator("#submit-summary")).to_contain_text("1 field changed from best-mlp")
    wide.screenshot("preset")


@pytest.mark.browser
@pytest.mark.e2e
@pytest.mark.timeout(120)
def test_the_submit_button_stays_in_view_at_1400x900(wide: Session) -> None:
    page = wide.page
    wide.goto("/submit")
    for section in ("regularisation", "run"):
        page.locator(f"#section-{section} > summary").click()  # every field shown: the longest page
    page.evaluate("window.scrollTo(0, 0)")
    submit = page.locator("#submit-button")
    assert in_viewport(page, submit), "visible without scrolling"
    assert page.evaluate("document.documentElement.scrollHeight") > 900, "the form is taller than the window"
    wide.screenshot("top")
    page.evaluate("window.scrollTo(0, document.documentElement.scrollHeight)")
    page.wait_for_function("window.scrollY > 0")
    assert in_viewport(page, submit), "still visible at the bottom"
    for mode in ("sweep", "study"):
        page.click(f"#mode-{mode}")
        page.evaluate("window.scrollTo(0, document.documentElement.scrollHeight)")
        assert in_viewport(page, submit), mode
    wide.screenshot("bottom")


@pytest.mark.browser
@pytest.mark.e2e
@pytest.mark.timeout(120)
def test_errors_count_list_items_from_1_and_open_their_section(wide: Session, live: Live) -> None:
    from playwright.sync_api import expect

    page = wide.page
    wide.watch.expect("POST", "/v1/jobs", 422)
    count = live.api.get("/v1/jobs").json()["count"]
    wide.goto("/submit")
    page.fill("#field-hidden_layers", "32, 0, 64")
    page.locator("#section-regularisation > summary").click()
    page.fill("#field-dropout", "1.5")
    page.locator("#section-regularisation > summary").click()
    expect(page.locator("#field-dropout")).to_be_hidden()
    page.click("#submit-button")
    expect(page.locator("#error-hidden_layers")).to_have_text("Input should be greater than or equal to 1 (item 2)")
    expect(page.locator("#field-hidden_layers")).to_have_attribute("aria-invalid", "true")
    # The error's folded section opens so that it can be read.
    expect(page.locator("#error-dropout")).to_be_visible()
    expect(page.locator("#error-dropout")).to_contain_text("less than 1")
    expect(page.locator("#error-lr")).to_be_hidden()
    wide.screenshot("errors")
    assert live.api.get("/v1/jobs").json()["count"] == count, "a refused spec queues nothing"


@pytest.mark.browser
@pytest.mark.e2e
@pytest.mark.timeout(180)
def test_a_sweep_submitted_from_the_form(wide: Session, live: Live) -> None:
    from playwright.sync_api import expect

    page = wide.page
    wide.watch.expect("POST", "/v1/sweeps", 422)
    wide.goto("/submit")
    page.click("#mode-sweep")
    expect(page.locator("#submit-button")).to_have_text("Submit sweep")
    expect(page.locator("#grid-panel")).to_be_visible()
    fill_base(page)
    rows = page.locator("#grid-rows .param-row")
    expect(rows).to_have_count(1)  # the learning rate, to start with
    rows.nth(0).locator(".param-values").fill("0.05, 500")
    page.click("#grid-add")
    rows.nth(1).locator(".param-field").select_option("hidden_layers")
    rows.nth(1).locator(".param-values").fill("16; 32, 16")
    # A field in the grid is no part of the base.
    expect(page.locator("#field-hidden_layers")).to_be_disabled()
    expect(page.locator("#submit-summary")).to_contain_text("4 jobs (2 \u00d7 2)")

    # 500 is over the learning rate's ceiling: the first point with it (index 2) is refused, counted from 1.
    page.click("#submit-button")
    expect(rows.nth(0).locator(".error")).to_have_text(
        "Input should be less than or equal to 100 (grid point 3: lr 500, hidden_layers [16])"
    )
    expect(rows.nth(0).locator(".param-values")).to_have_attribute("aria-invalid", "true")
    wide.screenshot("grid-error")

    rows.nth(0).locator(".param-values").fill("0.05, 0.2")
    page.click("#submit-button")
    page.wait_for_url(re.compile(r".*/sweeps/[0-9a-f]+$"))
    sweep_id = page.url.rsplit("/", 1)[-1]
    sweep = live.api.get(f"/v1/sweeps/{sweep_id}").json()
    live.api.post(f"/v1/sweeps/{sweep_id}/cancel")
    assert sweep["grid"] == {"lr": [0.05, 0.2], "hidden_layers": [[16], [32, 16]]}
    assert sweep["base"] == {"epochs": 1, "batch_size": 64, "seed": 0}
    assert len(sweep["jobs"]) == 4
    expect(page.locator("main")).to_contain_text(sweep_id[:8])
    wide.screenshot("sweep-page")


@pytest.mark.browser
@pytest.mark.e2e
@pytest.mark.timeout(180)
def test_a_study_submitted_from_the_form(wide: Session, live: Live) -> None:
    from playwright.sync_api import expect

    page = wide.page
    wide.watch.expect("POST", "/v1/studies", 422)
    wide.goto("/submit#study")
    expect(page.locator("#submit-button")).to_have_text("Start study")
    expect(page.locator("#space-panel")).to_be_visible()
    page.locator("#section-run > summary").click()
    # A study holds out validation data: the form starts there, and sends nothing for it.
    expect(page.locator("#field-val_fraction")).to_have_value("0.1")
    fill_base(page)
    rows = page.locator("#space-rows .param-row")
    lr = rows.nth(0)
    lr.locator("[data-bound=low]").fill("0.01")
    lr.locator("[data-bound=high]").fill("0.5")
    lr.locator(".param-log").check()
    page.click("#space-add")
    activation = rows.nth(1)
    activation.locator(".param-field").select_option("activation")
    expect(activation.locator(".param-kind option")).to_have_count(1)  # a choice field takes choices only
    activation.locator(".param-values").fill("relu, tanh")
    page.select_option("#study-sampler", "random")
    page.select_option("#study-pruner", "none")
    page.fill("#study-trials", "0")
    page.fill("#study-max_concurrent", "1")
    page.fill("#study-seed", "3")
    wide.screenshot("study-filled")

    page.click("#submit-button")
    expect(page.locator("#error-study-trials")).to_contain_text("greater than or equal to 1")
    expect(page.locator("#study-trials")).to_have_attribute("aria-invalid", "true")
    wide.screenshot("study-error")

    page.fill("#study-trials", "2")
    page.click("#submit-button")
    page.wait_for_url(re.compile(r".*/studies/[0-9a-f]+$"))
    study_id = page.url.rsplit("/", 1)[-1]
    study = live.api.get(f"/v1/studies/{study_id}").json()
    live.api.post(f"/v1/studies/{study_id}/cancel")
    assert study["space"] == {
        "lr": {"low": 0.01, "high": 0.5, "log": True},
        "activation": {"choices": ["relu", "tanh"]},
    }
    assert study["sampler"]["type"] == "random" and study["pruner"]["type"] == "none"
    assert (study["n_trials"], study["max_concurrent"], study["seed"]) == (2, 1, 3)
    assert study["base"]["val_fraction"] == 0.1
    assert {key: study["base"][key] for key in ("hidden_layers", "epochs", "batch_size", "seed")} == {
        "hidden_layers": [16],
        "epochs": 1,
        "batch_size": 64,
        "seed": 0,
    }
    wide.screenshot("study-page")
