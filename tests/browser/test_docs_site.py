"""The documentation site in a real browser: ``mkdocs build --strict`` builds it (warnings are errors),
a local HTTP server serves it on 127.0.0.1, Debian's Chromium renders the pages, and the test checks that
the API reference and a tutorial render with their images.

Needs the ``docs`` extra (mkdocs-material, mkdocstrings-python, mkdocs-jupyter), ``/usr/bin/chromium``
and the ``test`` extra (playwright).
"""
import functools
import http.server
import threading

import pytest

pytestmark = pytest.mark.both_cores  # a web server, Chromium and a kernel: runs after the background notebooks (tests/conftest.py)


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:  # no access log in the test output
        pass


@pytest.fixture(scope="module")
def site_url(browser_setups):
    """The site built by ``mkdocs build --strict`` (begun in the background by tests/browser_setups.py), served on 127.0.0.1."""
    build = browser_setups["docs"]
    site = build.wait()
    handler = functools.partial(QuietHandler, directory=str(site))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/"
    server.shutdown()
    server.server_close()
    build.stop()


@pytest.fixture(scope="module")
def browser_page(site_url, chromium):
    context = chromium.new_context(viewport={"width": 1300, "height": 1000})
    page = context.new_page()
    # the site must work offline: anything not served locally is refused
    page.route("**/*", lambda route: route.abort() if not route.request.url.startswith("http://127.0.0.1")
               else route.continue_())
    yield page
    context.close()


def loaded_images(page) -> list[int]:
    """Natural widths of the page's content images (0 for an image that failed to load)."""
    page.wait_for_load_state("load")
    return page.eval_on_selector_all("article img", "els => els.map(e => e.complete ? e.naturalWidth : 0)")


def test_home_page_shows_the_two_commands_and_its_figure(browser_page, site_url):
    browser_page.goto(site_url)
    text = browser_page.inner_text("article")
    assert "voila notebooks/00_quickstart.ipynb" in text and "python -m pytest -q" in text
    widths = loaded_images(browser_page)
    assert widths and all(w > 0 for w in widths)


def test_api_reference_renders_the_method_classes(browser_page, site_url):
    browser_page.goto(site_url + "api/attr/")
    headings = browser_page.eval_on_selector_all("article h2, article h3", "els => els.map(e => e.innerText)")
    for name in ("ConditionalOcclusion", "InteractionCAM", "PairAttribution", "get_method"):
        assert any(name in h for h in headings), f"{name} missing from the API page: {headings[:20]}"
    body = browser_page.inner_text("article")
    assert "Args" in body or "Parameters" in body
    assert "Returns" in body


def test_a_tutorial_page_renders_with_its_figures(browser_page, site_url):
    browser_page.goto(site_url + "tutorials/01_conditional_occlusion/")
    body = browser_page.inner_text("article")
    assert "occlusion" in body.lower()
    widths = loaded_images(browser_page) + browser_page.eval_on_selector_all(
        ".jp-OutputArea img, .output_png img, img[src^='data:image/png']",
        "els => els.map(e => e.complete ? e.naturalWidth : 0)")
    assert widths and all(w > 0 for w in widths), "the tutorial page shows no figure"


def test_the_gallery_shows_one_figure_per_method(browser_page, site_url):
    browser_page.goto(site_url + "gallery/")
    widths = loaded_images(browser_page)
    assert len(widths) >= 8 and all(w > 0 for w in widths)
