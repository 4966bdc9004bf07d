"""Issue 12, item 3: the UI in a real browser (Debian's headless Chromium, driven by Playwright):
log in, open tfserving_resnet, open the Trigger form, check its sections and descriptions, change
a param, trigger, wait for success, open the ``validate`` task and find the validation summary.
Screenshots of every step land in the artifacts directory."""

from __future__ import annotations

import re
import time

import pytest

from .conftest import DAG_ID, serving_replicas

CHROMIUM = "/usr/bin/chromium"
# Debian's Chromium headless as root, with nothing phoning home (this network refuses it).
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
UI_MODEL = "stacktest-ui"


@pytest.fixture
def page(artifacts):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        context = browser.new_context(viewport={"width": 1440, "height": 1000})
        page = context.new_page()
        page.set_default_timeout(30_000)
        try:
            yield page
        finally:
            page.screenshot(path=str(artifacts / "ui-last.png"), full_page=True)
            browser.close()


def shot(page, artifacts, name: str) -> None:
    page.screenshot(path=str(artifacts / f"ui-{name}.png"), full_page=True)


def test_trigger_form_run_and_validation_summary(page, api, run_timeout, artifacts):
    from playwright.sync_api import expect

    base = api.base
    # Log in (simple auth manager) with the admin from .env.
    page.goto(f"{base}/")
    page.locator("input[name=username]").fill(api.user)
    page.locator("input[name=password]").fill(api.password)
    shot(page, artifacts, "1-login")
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url(re.compile(r"^(?!.*login).*$"))

    # The DAG's page, then its Trigger form.
    page.goto(f"{base}/dags/{DAG_ID}")
    expect(page.get_by_text(DAG_ID).first).to_be_visible()
    shot(page, artifacts, "2-dag")
    page.get_by_role("button", name=re.compile("^trigger", re.I)).first.click()
    dialog = page.get_by_role("dialog")
    expect(dialog).to_be_visible()
    # Sections: the ungrouped params ("Run Parameters"), the Kubernetes and the GKE ones; one open at
    # a time. The defaults must validate as they stand: the Trigger button is enabled at once.
    trigger = dialog.get_by_role("button", name="Trigger", exact=True)
    expect(trigger).to_be_enabled()
    expect(dialog.get_by_text(re.compile("Name clients ask for")).first).to_be_visible()
    expect(dialog.get_by_text(re.compile("SavedModel tarball")).first).to_be_visible()
    shot(page, artifacts, "3-trigger-form")
    for section, description in (
        ("Kubernetes and GKE targets", "How validation reaches each pod"),
        ("GKE target", "Create an Autopilot cluster instead"),
    ):
        dialog.get_by_role("button", name=section, exact=True).click()
        expect(dialog.get_by_text(re.compile(description)).first).to_be_visible()
        expect(dialog.get_by_text("This field is required")).to_have_count(0)
        shot(page, artifacts, "3-section-" + section.split()[0].lower())

    # Change params: another model name (its own replicas) and one replica.
    dialog.get_by_role("button", name="Run Parameters", exact=True).click()
    dialog.locator("input[name=element_model_name]").fill(UI_MODEL)
    replicas = dialog.locator("input[name=element_replicas]")
    replicas.fill("1")
    replicas.press("Tab")
    shot(page, artifacts, "4-changed")
    before = {r["dag_run_id"] for r in api.runs(DAG_ID)}
    trigger.click()

    # The run it created (read back through the API), waited for until it succeeds.
    deadline = time.monotonic() + 60
    while not (new := [r for r in api.runs(DAG_ID) if r["dag_run_id"] not in before]):
        assert time.monotonic() < deadline, "the Trigger button created no run within 60 s"
        time.sleep(1)
    (run,) = new
    assert run["conf"]["model_name"] == UI_MODEL and run["conf"]["replicas"] == 1, run["conf"]
    api.wait_for_run(DAG_ID, run["dag_run_id"], run_timeout)
    assert len(serving_replicas(UI_MODEL)) == 1

    # The validate task's log shows the summary: model, version, digest, each replica's check.
    page.goto(f"{base}/dags/{DAG_ID}/runs/{run['dag_run_id']}/tasks/validate")
    summary = page.get_by_text(re.compile(rf"validation of '{UI_MODEL}' version \d+ on 1 replica"))
    expect(summary.first).to_be_visible(timeout=60_000)
    expect(
        page.get_by_text(re.compile(r"latency p50=[\d.]+ms p99=[\d.]+ms over \d+ requests -> OK")).first
    ).to_be_visible()
    expect(page.get_by_text(re.compile(r"image: \S+@sha256:[0-9a-f]{64}")).first).to_be_visible()
    shot(page, artifacts, "5-validate-log")
    # A good run's log holds no ERROR line (a worker marks every stderr line so: TensorFlow's start-up
    # chatter used to be six of them), neither on this page nor in any task's log (issue 18, item 7).
    expect(page.get_by_text(re.compile(r"\bERROR\b")).filter(visible=True)).to_have_count(0)
    assert api.error_entries(DAG_ID, run["dag_run_id"]) == {}
