"""The admin as an operator sees it, in a real browser (headless Chromium) against the
gateway on a real socket: a new key's secret on its own page and in no cookie, a switch's
phase changing without a reload, badges readable in both themes (axe-core's
color-contrast rule), every admin page fitting a 390 px phone, the download list's
columns whole at 1280 px, TalkTuah's branding, favicon and landing page, and no
console error anywhere.

axe-core is vendored in tests/modelmgr/axe/ (its licence beside it): the npm package
axe-core 4.14.1 (`npm pack axe-core@4.14.1`), axe.min.js loaded into each page."""

import contextlib
import re
import threading
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from django.contrib import admin
from django.contrib.auth.models import User
from django.contrib.sessions.models import Session
from django.core.management import call_command
from django.test import RequestFactory
from django.urls import NoReverseMatch, reverse
from django.utils import timezone

from backends.services import backend_create
from backends.spec import default_spec
from modelmgr import services
from modelmgr.models import (
    ApiKey,
    DownloadJob,
    DownloadStatus,
    ModelSwitch,
    SwitchPhase,
    UsageDaily,
)
from tests.browser import admin_login, browser_page
from tests.modelmgr.test_admin_lifecycle import FakeCache

pytestmark = pytest.mark.django_db(transaction=True)

PASSWORD = "a-long-test-password-1"
AXE = Path(__file__).parent / "axe" / "axe.min.js"
KEY_RE = re.compile(r"tt-[0-9a-f]{8}\.[A-Za-z0-9_-]{32}")
PHONE = {"width": 390, "height": 844}
LONG_ERROR = (
    "HubError: 401 Client Error: Unauthorized for url /api/models/org/private-model/revision/"
    "main (the repo is gated: accept its licence on the Hub and set HF_TOKEN)"
)


# --- fixtures ----------------------------------------------------------------------------


@pytest.fixture(scope="session")
def collected_static(django_db_blocker: Any) -> None:
    """The admin's CSS and JS where the gateway serves them with DEBUG off (STATIC_ROOT),
    as the Dockerfile's collectstatic puts them."""
    with django_db_blocker.unblock():
        call_command("collectstatic", interactive=False, verbosity=0)


@pytest.fixture
def operator_site(
    collected_static: None, simulator: Any, monkeypatch: pytest.MonkeyPatch
) -> SimpleNamespace:
    """What an operator's admin holds after a while: keys with usage, downloads (one
    failed with a long error, one that switched when done), switches, a live worker, a
    second backend that is down, and `default` (VLLM_BASE_URL, no row) serving org/old."""
    simulator(model="org/old")
    # The default backend's Hugging Face cache.
    cache = FakeCache()
    cache.add("org/old", 3 * 1024**3)
    cache.add("org/a-model-with-a-rather-long-repository-name", 512 * 1024**2)
    monkeypatch.setattr("modelmgr.hub.cached_models", cache.cached_models)
    monkeypatch.setattr("modelmgr.hub.snapshot_path", cache.snapshot_path)
    user = User.objects.create_superuser("root", "root@example.com", PASSWORD)
    key, _ = services.api_key_create(name="laptop", scopes=["inference"])
    today = timezone.now().date()
    for days_ago in range(3):
        UsageDaily.objects.create(
            key_prefix=key.prefix,
            key_name=key.name,
            model="org/old",
            day=today - timedelta(days=days_ago),
            requests=10 + days_ago,
            prompt_tokens=1200,
            completion_tokens=3400,
        )
    now = timezone.now()
    DownloadJob.objects.create(
        repo_id="org/private-model",
        backend="default",
        status=DownloadStatus.FAILED,
        error=LONG_ERROR,
        requested_by="admin:root",
        started_at=now - timedelta(minutes=5),
        finished_at=now - timedelta(minutes=4),
    )
    cause = DownloadJob.objects.create(
        repo_id="org/old",
        backend="default",
        status=DownloadStatus.SUCCEEDED,
        auto_switch=True,
        bytes_total=3 * 1024**3,
        bytes_done=3 * 1024**3,
        files_total=4,
        files_done=4,
        requested_by=f"key:{key.name} ({key.prefix})",
        started_at=now - timedelta(minutes=3),
        finished_at=now - timedelta(minutes=2),
    )
    switch = ModelSwitch.objects.create(
        backend="default",
        from_model="org/a-model-with-a-rather-long-repository-name",
        to_model="org/old",
        phase=SwitchPhase.READY,
        requested_by=cause.requested_by,
        started_at=now - timedelta(minutes=2),
        finished_at=now - timedelta(minutes=2) + timedelta(seconds=1.9),
    )
    # The switch was requested the moment its download finished.
    ModelSwitch.objects.filter(pk=switch.pk).update(created_at=cause.finished_at)
    backend_create(name="gpu-2", base_url="http://127.0.0.1:9", engine="external")
    services.worker_beat(name="host:1", started_at=now, backend=default_spec())
    return SimpleNamespace(user=user, key=key, cause=cause, switch=switch)


def in_thread(work: Callable[[], Any]) -> None:
    """Database work while the browser runs: Playwright's sync API keeps an event loop
    in this thread, beside which Django refuses synchronous queries."""
    errors: list[BaseException] = []

    def run() -> None:
        try:
            work()
        except BaseException as exc:  # handed back to the test below
            errors.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    thread.join(30)
    if errors:
        raise errors[0]


class Watched:
    """A page's console errors, uncaught exceptions and every Set-Cookie it was sent."""

    def __init__(self, page: Any, manager: Any) -> None:
        self.page = page
        self.manager = manager
        self.closed = False
        self.errors: list[str] = []
        self.set_cookies: list[str] = []
        page.on(
            "console",
            lambda message: (
                self.errors.append(f"{page.url}: {message.text}")
                if message.type == "error"
                else None
            ),
        )
        page.on("pageerror", lambda error: self.errors.append(f"{page.url}: {error}"))
        page.on("response", self._response)

    def _response(self, response: Any) -> None:
        from playwright.sync_api import Error

        try:
            headers = response.headers_array()
        except Error:  # the page closed before its last responses were read
            return
        for header in headers:
            if header["name"].lower() == "set-cookie":
                self.set_cookies.append(header["value"])

    def close(self) -> None:
        """End the browser and Playwright's loop (then the test may query the database)."""
        if not self.closed:
            self.closed = True
            self.manager.__exit__(None, None, None)

    def goto(self, url: str) -> None:
        response = self.page.goto(url)
        assert response is not None and response.status == 200, (url, response and response.status)

    def overflow(self) -> int:
        """How far the page is wider than the screen (0: no horizontal scrolling)."""
        return int(
            self.page.evaluate(
                "Math.max(document.documentElement.scrollWidth, document.body.scrollWidth)"
                " - window.innerWidth"
            )
        )

    def contrast_violations(self) -> list[str]:
        """axe-core's color-contrast rule on the page: each failing element, with why."""
        if not self.page.evaluate("typeof window.axe !== 'undefined'"):
            self.page.add_script_tag(path=str(AXE))
        result = self.page.evaluate(
            """async () => {
                const only = {runOnly: {type: "rule", values: ["color-contrast"]}};
                const r = await axe.run(document, only);
                return r.violations.flatMap(
                    v => v.nodes.map(n => n.target.join(" ") + ": " + n.failureSummary));
            }"""
        )
        return [str(item) for item in result]


@pytest.fixture
def watched() -> Iterator[Callable[..., Any]]:
    """watched(width=..., dark=False) → a Watched page in a fresh headless Chromium."""
    opened: list[Watched] = []

    def open_page(*, width: int = 1280, height: int = 900, dark: bool = False) -> Watched:
        manager = browser_page(width=width, height=height)
        page = manager.__enter__()
        if dark:
            page.emulate_media(color_scheme="dark")
        opened.append(Watched(page, manager))
        return opened[-1]

    yield open_page
    for browser in reversed(opened):
        browser.close()


def admin_urls(site: SimpleNamespace) -> list[str]:
    """Every page of the admin an operator reaches from its index: the index, each app's
    page, each model's list, add form (where adding is allowed) and the page of one row,
    and TalkTuah's own pages."""
    urls = [reverse("admin:index"), reverse("admin:password_change")]
    for model, model_admin in admin.site._registry.items():
        meta = model._meta
        name = f"admin:{meta.app_label}_{meta.model_name}"
        app_index = reverse("admin:app_list", kwargs={"app_label": meta.app_label})
        if app_index not in urls:
            urls.append(app_index)
        urls.append(reverse(f"{name}_changelist"))
        request = RequestFactory().get("/")
        request.user = site.user
        if model_admin.has_add_permission(request):
            urls.append(reverse(f"{name}_add"))
        row = model._default_manager.order_by("pk").first()
        if row is not None:
            # (the downloaded models' list is no model list: its rows have no page)
            with contextlib.suppress(NoReverseMatch):
                urls.append(reverse(f"{name}_change", args=[row.pk]))
    servedmodel = reverse("admin:modelmgr_servedmodel_changelist")
    urls += [
        reverse("admin:talktuah_dashboard"),
        reverse("admin:modelmgr_servedmodel_serve")
        + "?model=org/a-model-with-a-rather-long-repository-name",
        reverse("admin:modelmgr_usage_summary"),
        reverse("admin:modelmgr_usage_summary") + "?days=90",
        reverse("admin:modelmgr_usagedaily_changelist") + f"?key={site.key.prefix}",
        servedmodel + "?backend=default",
        "/about/",
    ]
    return list(dict.fromkeys(urls))


# --- the tests ---------------------------------------------------------------------------


def test_a_new_keys_secret_is_shown_once_on_its_own_page_and_in_no_cookie(
    gateway: Any, operator_site: SimpleNamespace, watched: Callable[..., Watched]
) -> None:
    browser = watched(**PHONE)
    page = browser.page
    page.context.grant_permissions(["clipboard-read", "clipboard-write"])
    admin_login(page, gateway.url, "root", PASSWORD)
    browser.goto(gateway.url + reverse("admin:modelmgr_apikey_add"))
    page.fill("input[name=name]", "ci-runner")
    page.click("input[type=submit][name=_save]")

    # The answer to the save itself (no redirect): the secret, once, in monospace.
    secret = page.locator("#tt-new-key")
    plaintext = secret.inner_text()
    assert KEY_RE.fullmatch(plaintext)
    assert page.url.endswith(reverse("admin:modelmgr_apikey_add"))
    assert "monospace" in secret.evaluate("el => getComputedStyle(el).fontFamily")
    # One line on a phone (it scrolls in its box rather than breaking mid-key), and the
    # page does not widen.
    assert secret.evaluate("el => el.getClientRects().length") == 1
    assert browser.overflow() <= 0
    page.click("#tt-copy-key")
    page.wait_for_function("document.getElementById('tt-copy-status').textContent !== ''")
    assert page.evaluate("navigator.clipboard.readText()") == plaintext
    assert browser.contrast_violations() == []

    # Never again: not on the list, not on the key's page (which shows its usage).
    page.click("text=All keys")
    page.wait_for_url("**/apikey/")
    assert "ci-runner" in page.content() and plaintext not in page.content()
    page.click("#result_list a:text-is('laptop')")
    page.wait_for_url("**/change/")
    assert plaintext not in page.content()
    usage = page.locator("#tt-key-usage").inner_text()
    assert "org/old" in usage and "3400" in usage
    page.click("text=All daily usage of this key")
    page.wait_for_url("**/usagedaily/?key=*")
    assert page.locator("#result_list tbody tr").count() == 3

    secret_part = plaintext.partition(".")[2]
    assert browser.set_cookies, "the flow sets cookies (session, CSRF): they were seen"
    assert not [c for c in browser.set_cookies if secret_part in c or "messages" in c]
    assert browser.errors == []
    cookies = page.context.cookies()
    assert not [c for c in cookies if secret_part in c["value"]]
    # Read once the browser is gone: nor is it in any session.
    browser.close()
    for session in Session.objects.all():
        assert secret_part not in str(session.get_decoded())
    assert ApiKey.objects.get(name="ci-runner").matches(plaintext)


def test_a_switch_phase_changes_on_the_list_and_the_dashboard_without_a_reload(
    gateway: Any, operator_site: SimpleNamespace, watched: Callable[..., Watched]
) -> None:
    running = ModelSwitch.objects.create(
        backend="gpu-2", from_model="org/x", to_model="org/y", phase=SwitchPhase.STOPPING
    )
    browser = watched()
    page = browser.page
    admin_login(page, gateway.url, "root", PASSWORD)

    browser.goto(gateway.url + reverse("admin:modelmgr_modelswitch_changelist"))
    phase = page.locator(f'[data-tt-switch="{running.pk}"][data-tt-switch-field="phase"]')
    assert phase.inner_text() == "stopping"
    # The ready switch links the download that asked for it and who asked.
    row = page.locator("#result_list tr", has_text="org/old").first
    assert row.locator(f'a[href$="/downloadjob/{operator_site.cause.pk}/change/"]').count() == 1
    assert row.locator(f'a[href$="/apikey/{operator_site.key.pk}/change/"]').count() == 1

    def advance(to: str) -> Callable[[], None]:
        def work() -> None:
            fields: dict[str, Any] = {"phase": to, "phase_changed_at": timezone.now()}
            if to == SwitchPhase.READY:
                fields |= {"started_at": timezone.now() - timedelta(seconds=1.9)}
                fields |= {"finished_at": timezone.now()}
            ModelSwitch.objects.filter(pk=running.pk).update(**fields)

        return work

    in_thread(advance(SwitchPhase.LOADING))
    page.wait_for_function(
        f"document.querySelector('[data-tt-switch=\"{running.pk}\"][data-tt-switch-field=phase]')"
        ".textContent === 'loading'",
        timeout=5000,
    )
    in_thread(advance(SwitchPhase.READY))
    page.wait_for_function(
        f"document.querySelector('[data-tt-switch=\"{running.pk}\"][data-tt-switch-field=phase]')"
        ".textContent === 'ready'",
        timeout=5000,
    )
    duration = page.locator(f'[data-tt-switch="{running.pk}"][data-tt-switch-field=duration_label]')
    assert duration.inner_text() == "1.9"

    # The dashboard's card follows the latest switch, one requested after it loaded too.
    browser.goto(gateway.url + reverse("admin:talktuah_dashboard"))
    card = page.locator("#tt-switch")
    assert "Last switch" in card.inner_text() and "org/x → org/y" in card.inner_text()

    def request_another() -> None:
        ModelSwitch.objects.create(
            backend="default",
            from_model="org/old",
            to_model="org/a-model-with-a-rather-long-repository-name",
            phase=SwitchPhase.STARTING,
        )

    in_thread(request_another)
    page.wait_for_function(
        "document.querySelector('#tt-switch h2').textContent === 'Switch in progress'",
        timeout=10000,
    )
    assert "starting" in card.inner_text()
    assert "org/old → org/a-model-with-a-rather-long-repository-name" in card.inner_text()

    def finish() -> None:
        ModelSwitch.objects.filter(phase=SwitchPhase.STARTING).update(
            phase=SwitchPhase.FAILED, error="not ready after 900 s", finished_at=timezone.now()
        )

    in_thread(finish)
    page.wait_for_function(
        "document.querySelector('#tt-switch h2').textContent === 'Last switch'", timeout=5000
    )
    assert "failed" in card.inner_text() and "not ready after 900 s" in card.inner_text()
    assert browser.errors == []


@pytest.mark.parametrize("dark", [False, True], ids=["light", "dark"])
def test_the_badges_are_readable_in_both_themes(
    gateway: Any, operator_site: SimpleNamespace, watched: Callable[..., Watched], dark: bool
) -> None:
    browser = watched(dark=dark)
    page = browser.page
    admin_login(page, gateway.url, "root", PASSWORD)
    browser.goto(gateway.url + reverse("admin:talktuah_dashboard"))
    # Both kinds of badge are on the page: default healthy, its worker alive; gpu-2 down.
    assert page.locator(".tt-ok", has_text="healthy").count() >= 1
    assert page.locator(".tt-ok", has_text="alive").count() >= 1
    assert page.locator(".tt-bad", has_text="down").count() >= 1
    theme = page.evaluate("getComputedStyle(document.body).backgroundColor")
    assert theme == ("rgb(18, 18, 18)" if dark else "rgb(255, 255, 255)")
    assert browser.contrast_violations() == []
    assert browser.errors == []


def test_every_admin_page_fits_a_phone_with_readable_text_and_no_console_error(
    gateway: Any, operator_site: SimpleNamespace, watched: Callable[..., Watched]
) -> None:
    urls = admin_urls(operator_site)
    browser = watched(**PHONE)
    page = browser.page
    browser.goto(gateway.url + "/admin/login/")
    assert browser.overflow() <= 0
    admin_login(page, gateway.url, "root", PASSWORD)
    too_wide, unreadable = {}, {}
    for url in urls:
        browser.goto(gateway.url + url)
        if (extra := browser.overflow()) > 0:
            too_wide[url] = extra
        if violations := browser.contrast_violations():
            unreadable[url] = violations
    assert too_wide == {}
    assert unreadable == {}
    assert browser.errors == []
    # The admin index's TalkTuah box reads as words, not one letter per line.
    browser.goto(gateway.url + reverse("admin:index"))
    link = page.get_by_role("link", name="TalkTuah dashboard")
    box = link.bounding_box()
    assert box is not None and box["height"] < 40


def test_no_list_cuts_a_column_at_1280_px_and_a_failed_downloads_error_shows(
    gateway: Any, operator_site: SimpleNamespace, watched: Callable[..., Watched]
) -> None:
    lists = [
        reverse(f"admin:{model._meta.app_label}_{model._meta.model_name}_changelist")
        for model in admin.site._registry
        if model._meta.model_name != "servedmodel"  # the downloaded models: no list of rows
    ]
    browser = watched(width=1280)
    page = browser.page
    admin_login(page, gateway.url, "root", PASSWORD)
    cut = {}
    for url in lists:
        browser.goto(gateway.url + url)
        results = page.locator("#changelist-form .results")
        if results.count() and (hidden := results.evaluate("e => e.scrollWidth - e.clientWidth")):
            cut[url] = hidden
    assert cut == {}

    browser.goto(gateway.url + reverse("admin:modelmgr_downloadjob_changelist"))
    error = page.locator("#result_list td.field-error_cell", has_text="HubError")
    box = error.bounding_box()
    assert box is not None and box["x"] + box["width"] <= 1280
    assert "HubError: 401 Client Error" in error.inner_text()
    # Who asked is a link: the admin user, and the key of the API request.
    row = page.locator("#result_list tr", has_text="org/private-model")
    assert row.locator(f'a[href$="/auth/user/{operator_site.user.pk}/change/"]').count() == 1
    assert browser.overflow() <= 0
    assert browser.errors == []


def test_the_admin_is_branded_with_a_favicon_and_a_landing_page(
    gateway: Any, operator_site: SimpleNamespace, watched: Callable[..., Watched]
) -> None:
    browser = watched()
    page = browser.page
    admin_login(page, gateway.url, "root", PASSWORD)
    assert page.title().endswith("TalkTuah admin")
    assert page.locator("#site-name").inner_text().strip() == "TalkTuah"
    assert "Django administration" not in page.content()
    icon = page.evaluate("document.querySelector('link[rel=icon]').href")
    assert icon == gateway.url + "/favicon.ico"
    favicon = page.request.get(gateway.url + "/favicon.ico")
    assert favicon.status == 200 and favicon.headers["content-type"] == "image/x-icon"
    assert favicon.body()[:4] == b"\x00\x00\x01\x00"

    # "View site" is a page for people, with the way on.
    page.click("text=View site")
    page.wait_for_url("**/about/")
    text = page.locator("#content").inner_text()
    assert "gateway in front of vLLM" in text
    for href in ("/api/docs", "/api/healthz", "/admin/"):
        assert page.locator(f'#content a[href="{href}"]').count() == 1, href
    assert browser.errors == []

    # The Backends page lists `default` (VLLM_BASE_URL, no row) beside the rows.
    browser.goto(gateway.url + reverse("admin:backends_backend_changelist"))
    settings_rows = page.locator("#tt-settings-backends tbody tr")
    assert settings_rows.count() == 1 and "default" in settings_rows.inner_text()
    assert "gpu-2" in page.locator("#result_list").inner_text()
    # Daily usage can be filtered by key.
    browser.goto(gateway.url + reverse("admin:modelmgr_usagedaily_changelist"))
    page.click(f"#changelist-filter a:has-text('laptop ({operator_site.key.prefix})')")
    page.wait_for_url("**/usagedaily/?key=*")
    assert page.locator("#result_list tbody tr").count() == 3
    assert browser.errors == []
