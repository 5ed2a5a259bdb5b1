"""The quickstart notebook in a real browser: Voila serves it, Debian's Chromium renders it,
Playwright moves sliders, switches methods and clicks on the image.

The page is shared by the tests (one Voila kernel), so each test first brings the explorer to the state it needs
(its tab selected from another one, the accordion opened only if closed): any order passes
(``SSL_WIDGETS_REVERSE_TESTS=1`` runs them backwards, see conftest.py).

Needs ``/usr/bin/chromium`` (``apt-get install -y chromium``; ``.ci/run`` installs it) and the
``test`` extra (playwright, voila). Screenshots go to ``$SSL_WIDGETS_SCREENSHOTS`` (default: the
test's temporary folder).
"""
import os
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.both_cores  # Voila, its kernel and Chromium: runs after the background notebooks (tests/conftest.py)


@pytest.fixture(scope="module")
def page(browser_setups):
    """The explorer's page, loaded (Voila and the page were started by ``browser_setups``, tests/browser_setups.py)."""
    explorer = browser_setups["explorer"]
    explorer.page.wait_for_selector("img.ssl-view", timeout=180_000)
    yield explorer.page
    explorer.stop()


def screenshots() -> Path:
    folder = Path(os.environ.get("SSL_WIDGETS_SCREENSHOTS", "/tmp/ssl_widgets_screenshots"))
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def image_sources(page) -> list[str]:
    return page.eval_on_selector_all("img.ssl-view", "els => els.map(e => e.src)")


def similarity_text(page) -> str:
    return page.locator(".widget-html", has_text="cos similarity").first.inner_text()


def status_text(page) -> str:
    return page.locator(".widget-html").all_inner_texts()


def wait_for(predicate, timeout=90.0, what="", page=None):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return
        time.sleep(0.25)
    if page is not None:
        page.screenshot(path=str(screenshots() / "failure.png"), full_page=True)
    raise AssertionError(f"timed out waiting for {what}" + (f"; status: {status_text(page)}" if page else ""))


def no_error(page) -> bool:
    return not any("error:" in t for t in status_text(page))


def select_tab(page, title: str, shown) -> None:
    """Make ``title`` the selected method tab and wait until ``shown()``, whichever tab an earlier test left selected:
    another tab is chosen first, so the tab's first computation (or prompt) always happens here."""
    other = "Gradients" if title != "Gradients" else "Interaction-CAM"
    page.locator(".lm-TabBar-tab", has_text=other).first.click()
    wait_for(lambda: not any(t.startswith(("computing", "click a point")) for t in status_text(page)),
             what=f"the {other} tab", page=page)
    page.locator(".lm-TabBar-tab", has_text=title).first.click()
    wait_for(shown, what=f"the {title} tab", page=page)


def test_quickstart_renders_the_explorer(page):
    wait_for(lambda: len(image_sources(page)) >= 2 and "cos similarity" in page.content(), what="the two views")
    assert "cos similarity" in similarity_text(page)
    assert no_error(page)
    page.screenshot(path=str(screenshots() / "explorer.png"), full_page=True)


LAYOUT = """() => ({
  truncated: [...document.querySelectorAll('.lm-TabBar-tabLabel')].filter(e => e.scrollWidth > e.clientWidth + 1)
             .map(e => e.innerText),
  images: [...document.querySelectorAll('img.ssl-view')].map(e => {
             const r = e.getBoundingClientRect(); return [Math.round(r.x), Math.round(r.y), Math.round(r.width)]; }),
  upload: getComputedStyle(document.querySelector('.widget-upload'), '::after').content})"""


def test_tabs_read_in_full_and_the_images_keep_their_place(page):
    """Issue #29 item 8: labels were cut ("Pixel invarianc"), the images shrank on the Attention tab of a CNN,
    the upload button read "upload image 1 (0)", and the maps had no colour bar or image labels."""
    select_tab(page, "Interaction-CAM", lambda: any(t.startswith("interaction-cam") for t in status_text(page)))
    on_cam = page.evaluate(LAYOUT)
    assert on_cam["truncated"] == [] and on_cam["upload"] == '"upload image 1"', on_cam
    assert [w for _x, _y, w in on_cam["images"]] == [256, 256]
    text = " ".join(status_text(page))
    assert "image 1: chelsea" in text and "image 2: aug view of 1, seed" in text
    assert page.locator(".widget-html", has_text="+0").count() >= 2  # the colour bars' value range
    select_tab(page, "Attention", lambda: any("does not apply" in t for t in status_text(page)))
    on_attention = page.evaluate(LAYOUT)
    assert on_attention["images"] == on_cam["images"], (on_cam, on_attention)  # same place, same size
    page.screenshot(path=str(screenshots() / "explorer_attention_tab.png"), full_page=True)


def test_switching_method_and_moving_the_patch_slider_change_the_heatmap(page):
    select_tab(page, "Occlusion", lambda: any("conditional-occlusion" in t and "coarse" not in t
                                              for t in status_text(page)))
    assert no_error(page)
    after_method = image_sources(page)
    handle = page.locator(".widget-slider", has_text="patch size").locator(".noUi-handle").first
    handle.focus()
    for _ in range(3):
        handle.press("ArrowRight")
    wait_for(lambda: image_sources(page) != after_method and
             any(t.strip() == "conditional-occlusion" for t in status_text(page)), what="the refined occlusion map")
    assert no_error(page)
    page.screenshot(path=str(screenshots() / "explorer_occlusion.png"), full_page=True)


def test_resample_changes_the_similarity(page):
    before = similarity_text(page)
    resample = page.locator("button", has_text="resample").first
    if not resample.is_visible():  # open the accordion unless an earlier test left it open
        page.locator(".jupyter-widget-Collapse-header", has_text="view 2 augmentation").first.click()
    resample.click()
    wait_for(lambda: similarity_text(page) != before, what="a new similarity")
    assert no_error(page)


def test_click_on_image_1_shows_the_correspondence(page):
    select_tab(page, "Correspondence", lambda: any("click a point" in t for t in status_text(page)))
    before = image_sources(page)
    page.locator("img.ssl-view").first.click(position={"x": 90, "y": 70})
    wait_for(lambda: any("correspondence of the point" in t for t in status_text(page)), what="the click")
    after = image_sources(page)
    assert after[1] != before[1] and after[0] != before[0]  # heat map on image 2, patch box on image 1
    assert no_error(page)
    page.screenshot(path=str(screenshots() / "explorer_correspondence.png"), full_page=True)
