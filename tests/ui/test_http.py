"""The dashboard over HTTP (Starlette's TestClient) on a local store, mongomock and MongoDB's
wire protocol with a ``read``-role user: every page and JSON endpoint, what they show, hostile
names escaped, GET only, and no write reaching the store."""

from __future__ import annotations

import json
import re

import pytest

from .conftest import HOSTILE, HOSTILE_CRITERION, HOSTILE_DATASET, require_ui_extra

require_ui_extra()

from starlette.testclient import TestClient  # noqa: E402

from dacapo_store.ui.app import create_app  # noqa: E402
from dacapo_store.ui.formatting import query_url  # noqa: E402

WRITE_COMMANDS = {"insert", "update", "delete", "findandmodify", "createindexes", "drop", "dropdatabase"}
PAGES = ["/", "/runs/rows", "/run?name=alpha", "/compare", "/compare?run=alpha&run=x&dataset=val&criterion=dice"]
ENDPOINTS = ["/api/runs", "/api/run?name=alpha", "/api/compare?run=alpha&run=x&dataset=val&criterion=dice"]
RAW_MARKUP = ("<script>alert", "<img src=x", "<b>bold</b>", "</td>'", "</pre><script>")


@pytest.fixture
def client(backend):
    with TestClient(create_app(backend.stores)) as client:
        yield client


def escaped(text: str) -> str:
    """``text`` as the pages' templates escape it."""
    from markupsafe import escape

    return str(escape(text))


def get(client: TestClient, url: str, status: int = 200):
    response = client.get(url)
    assert response.status_code == status, (url, response.text[:500])
    return response


def assert_no_raw_markup(text: str) -> None:
    for fragment in RAW_MARKUP:
        assert fragment not in text


def test_the_runs_endpoint_has_every_run_with_its_totals_and_best_scores(client, backend) -> None:
    data = get(client, "/api/runs").json()
    assert data["store"] == backend.stores.label
    runs = {row["name"]: row for row in data["runs"]}
    assert list(runs) == sorted(runs) == sorted(["alpha", HOSTILE, "stats-only"])
    alpha = runs["alpha"]
    assert (alpha["latest_iteration"], alpha["checkpoints"], alpha["bytes"]) == (30, 3, sum(backend.seeded.alpha_sizes.values()))
    assert [(b["dataset"], b["criterion"], b["iteration"], b["value"], b["higher_is_better"]) for b in alpha["best"]] == [
        ("val", "dice", 20, 0.9, True), ("val", "loss", 30, 0.2, False)
    ]
    assert runs["stats-only"] == {
        "name": "stats-only", "latest_iteration": None, "checkpoints": 0, "bytes": 0, "last_stored": None,
        "active": False, "best": [],
    }
    assert {(b["dataset"], b["criterion"]) for b in runs[HOSTILE]["best"]} == {(HOSTILE_DATASET, HOSTILE_CRITERION), ("val", "dice")}


@pytest.mark.parametrize("url", ["/", "/runs/rows"])
def test_the_runs_page_shows_every_run_escaped_with_links_to_its_page(client, url) -> None:
    page = get(client, url).text
    assert_no_raw_markup(page)
    assert escaped(HOSTILE) in page and escaped(HOSTILE_DATASET) in page
    assert escaped(query_url("/run", name=HOSTILE)) in page
    alpha = re.search(r'<tr class="run-row" data-name="alpha"[^>]*>(.*?)</tr>', page, re.S)
    assert 'data-latest="30"' in alpha.group(0) and 'data-checkpoints="3"' in alpha.group(0)
    assert "val / dice \u2191 <b>0.9</b>" in alpha.group(1) and "val / loss \u2193 <b>0.2</b>" in alpha.group(1)
    assert 'data-name="stats-only"' in page


def test_a_run_is_active_while_its_newest_checkpoint_is_younger_than_the_limit(backend) -> None:
    newest = max(total.last_stored for total in backend.stores.weights.run_totals() if total.run == "alpha")

    def alpha_active(minutes_later: float) -> bool:
        app = create_app(backend.stores, active_minutes=10, clock=lambda: newest + minutes_later * 60)
        with TestClient(app) as client:
            return next(row["active"] for row in client.get("/api/runs").json()["runs"] if row["name"] == "alpha")

    assert alpha_active(9.5) and not alpha_active(10.5)


def test_the_run_endpoint_has_curves_checkpoints_best_commands_and_config(client, backend) -> None:
    run = get(client, "/api/run?name=alpha").json()
    assert run["loss"]["iterations"] == list(range(31)) and run["loss"]["window"] == 10
    assert run["loss"]["mean"][0] == 1.0 and run["loss"]["mean"][30] == pytest.approx(sum(1 / (i + 1) for i in range(21, 31)) / 10)
    curves = {(c["dataset"], c["criterion"]): c for c in run["scores"]}
    assert curves["val", "dice"]["values"] == [0.5, 0.9, 0.8] and curves["val", "dice"]["best"]["iteration"] == 20
    assert curves["val", "loss"]["iterations"] == [20, 30]  # a NaN score has no point
    assert curves["val", "loss"]["values"] == [0.3, 0.2] and curves["val", "loss"]["higher_is_better"] is False
    assert [(c["iteration"], c["bytes"], c["kept_because"]) for c in run["checkpoints"]] == [
        (10, backend.seeded.alpha_sizes[10], []),
        (20, backend.seeded.alpha_sizes[20], ["best val/dice"]),
        (30, backend.seeded.alpha_sizes[30], ["best val/loss", "latest"]),
    ]
    assert all(part["digest"].startswith(("xxh3-128:", "sha256:")) for part in run["checkpoints"][0]["parts"].values())
    best = {b["criterion"]: b for b in run["best"]}
    label = backend.stores.label
    assert best["dice"]["commands"]["export"] == f"dacapo-store export --store {label_quoted(label)} -o ./alpha-20.pt -- alpha 20"
    assert best["dice"]["commands"]["best"] == f"dacapo-store best --store {label_quoted(label)} -- alpha val dice"
    assert run["config"] == {"name": "alpha", "learning_rate": 0.001, "note": "</pre><script>alert(1)</script>"}


def label_quoted(label: str) -> str:
    import shlex

    return shlex.quote(label)


def test_retention_rules_from_the_query_mark_what_they_keep(client) -> None:
    kept = get(client, "/api/run?name=alpha&keep_last=3").json()["checkpoints"]
    assert kept[0]["kept_because"] == ["last 3"]
    page = get(client, "/run?name=alpha&keep_every=10").text
    assert "keep: every 10" in page and "would be removed" not in page
    assert "dacapo-store prune --store" in page and "--dry-run --keep-every 10 -- alpha" in page
    assert "would be removed" in get(client, "/run?name=alpha").text


def test_the_run_page_shows_its_tables_config_and_plot_places(client) -> None:
    page = get(client, "/run?name=alpha").text
    assert 'id="loss-plot"' in page and 'id="score-plots"' in page
    assert 'data-api="/api/run?name=alpha"' in page
    assert "\u2191 higher is better" in page and "\u2193 lower is better" in page
    assert escaped("</pre><script>alert(1)</script>") in page
    assert_no_raw_markup(page)
    assert re.search(r'<script src="/static/plotly\.min\.js"></script>', page)


def test_a_hostile_run_is_escaped_on_its_page_and_in_json(client) -> None:
    page = get(client, query_url("/run", name=HOSTILE)).text
    assert_no_raw_markup(page)
    assert f'<h1 id="run-name">{escaped(HOSTILE)}</h1>' in page
    assert escaped(HOSTILE_DATASET) in page and escaped(HOSTILE_CRITERION) in page
    response = get(client, query_url("/api/run", name=HOSTILE))
    assert "<" not in response.text and ">" not in response.text and "&" not in response.text
    data = response.json()
    assert data["name"] == HOSTILE and data["config"] == {"name": HOSTILE, "value": HOSTILE}
    assert {(c["dataset"], c["criterion"]) for c in data["scores"]} == {(HOSTILE_DATASET, HOSTILE_CRITERION), ("val", "dice")}


def test_compare_puts_several_runs_on_one_curve(client) -> None:
    url = query_url("/api/compare", run=["alpha", HOSTILE, "stats-only"], dataset="val", criterion="dice")
    data = get(client, url).json()
    assert [(c["run"], c["iterations"], c["values"]) for c in data["runs"]] == [
        ("alpha", [10, 20, 30], [0.5, 0.9, 0.8]), (HOSTILE, [5], [0.7]), ("stats-only", [], []),
    ]
    assert data["runs"][0]["best"]["iteration"] == 20 and data["runs"][0]["higher_is_better"] is True
    page = get(client, query_url("/compare", run=["alpha", HOSTILE], dataset="val", criterion="dice")).text
    assert_no_raw_markup(page)
    assert 'id="compare-plot" data-api="/api/compare?' in page
    assert re.search(r'value="alpha" checked', page) and f'value="{escaped(HOSTILE)}" checked' in page
    assert '<option value="val" selected>val</option>' in page and f'<option value="{escaped(HOSTILE_DATASET)}">' in page


@pytest.mark.parametrize(
    "url, status",
    [
        ("/run?name=nobody", 404), ("/api/run?name=nobody", 404), ("/run", 400), ("/api/run", 400),
        ("/run?name=%24where", 400), ("/api/run?name=alpha&keep_last=0", 400), ("/run?name=alpha&keep_every=x", 400),
        ("/api/compare?run=alpha", 400), ("/api/compare?run=alpha&dataset=%24x&criterion=c", 400), ("/nowhere", 404),
    ],
)
def test_bad_requests_are_answered_with_a_status_and_a_message(client, url, status) -> None:
    response = get(client, url, status)
    if url.startswith("/api/"):
        assert response.headers["content-type"] == "application/json" and response.json()["error"]
    else:
        assert response.headers["content-type"].startswith("text/html") and f"<h1>{status}</h1>" in response.text


@pytest.mark.parametrize("method", ["POST", "PUT", "PATCH", "DELETE"])
def test_only_get_is_allowed(client, method) -> None:
    for url in PAGES + ENDPOINTS + ["/static/plotly.min.js", "/static/runs.js"]:
        assert client.request(method, url).status_code == 405, url


def test_every_page_and_endpoint_answers_with_safe_headers_and_no_outside_resource(client, backend) -> None:
    for url in PAGES + ENDPOINTS:
        response = get(client, url)
        assert "script-src 'self'" in response.headers["content-security-policy"]
        assert response.headers["x-content-type-options"] == "nosniff"
        assert not re.search(r'(src|href)="(https?:)?//', response.text), url


def test_plotly_and_the_page_scripts_come_from_the_installed_package(client) -> None:
    import plotly

    script = get(client, "/static/plotly.min.js")
    assert script.headers["content-type"].startswith("text/javascript")
    assert f"v{plotly.__version__}".encode() in script.content[:2000] or b"plotly.js" in script.content[:2000]
    for name in ("runs.js", "run.js", "compare.js", "plots.js", "dashboard.css"):
        get(client, f"/static/{name}")


def test_every_page_names_the_store_by_its_label(client, backend) -> None:
    for url in ["/", "/run?name=alpha", "/compare", "/nowhere"]:
        response = client.get(url)
        assert f'<span class="store" title="The store this dashboard reads (read-only)">{escaped(backend.stores.label)}</span>' in response.text


def test_over_the_wire_the_dashboard_only_reads(client, backend) -> None:
    if backend.wire is None:
        pytest.skip("the wire protocol's commands are recorded on the wire backend")
    assert backend.wire.role == "read"
    for url in PAGES + ENDPOINTS + [query_url("/run", name=HOSTILE)]:
        get(client, url)
    sent = {command.name.lower() for command in backend.wire.sent()}
    assert {"find", "aggregate"} <= sent and not sent & WRITE_COMMANDS


def test_the_runs_endpoint_asks_one_query_per_list_whatever_the_number_of_runs(client, backend) -> None:
    if backend.wire is None:
        pytest.skip("the wire protocol's commands are recorded on the wire backend")
    get(client, "/api/runs")
    reads = [(c.name.lower(), c.collection) for c in backend.wire.sent()]
    assert sorted(reads) == sorted([
        ("aggregate", "dacapo_store.checkpoints"), ("aggregate", "dacapo_store.validation_scores"),
        ("distinct", "dacapo_store.training_stats"), ("distinct", "dacapo_store.validation_scores"),
    ])


def test_json_escapes_markup_characters(client) -> None:
    text = get(client, query_url("/api/compare", run=[HOSTILE, "alpha"], dataset=HOSTILE_DATASET, criterion=HOSTILE_CRITERION)).text
    assert not set("<>&") & set(text)
    assert json.loads(text)["runs"][0]["values"] == [0.4]


def test_on_read_only_media_every_page_answers_and_nothing_changes(tmp_path) -> None:
    from dacapo_store import LocalStatsStore, LocalWeightsStore
    from dacapo_store.experiments.config_store import LocalRunConfigStore
    from dacapo_store.ui.queries import open_dashboard_stores

    from ..test_read_only_local import snapshot, unwritable
    from .conftest import seed

    directory = tmp_path / "store"
    writers = (LocalWeightsStore(directory), LocalStatsStore(directory), LocalRunConfigStore(directory))
    seed(*writers)
    for store in writers:
        store.catalog.connection().close()
    before = snapshot(directory)
    with unwritable(directory):
        stores = open_dashboard_stores(str(directory))
        with TestClient(create_app(stores)) as client:
            for url in PAGES + ENDPOINTS + [query_url("/run", name=HOSTILE)]:
                get(client, url)
        assert stores.weights.catalog.read_only
    assert snapshot(directory) == before


def test_a_store_that_cannot_answer_is_a_503_with_its_message(backend, monkeypatch) -> None:
    from dacapo_store import StoreConnectionError

    def unreachable() -> None:
        raise StoreConnectionError("MongoDB at mongodb://lab:***@db.example:27017/lab failed while listing runs")

    monkeypatch.setattr(backend.stores.weights, "run_totals", unreachable)
    with TestClient(create_app(backend.stores)) as client:
        page = get(client, "/", 503).text
        assert "the store could not answer: MongoDB at mongodb://lab:***@db.example:27017/lab failed" in page
        assert get(client, "/api/runs", 503).json()["error"].startswith("the store could not answer: ")
