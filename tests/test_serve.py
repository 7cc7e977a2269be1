"""The web service's API with FastAPI's test client: the contract, agreement with `homus predict`,
every bad input answered 4xx with a message, and collected samples that parse and render."""

from __future__ import annotations

import base64
import json
import os
import shutil
import threading
import time

import cv2
import numpy as np
import pytest
import torch
from click.testing import CliRunner

pytest.importorskip("fastapi")
pytest.importorskip("httpx")
from fastapi.testclient import TestClient  # noqa: E402

from classifier import checkpoint  # noqa: E402
from classifier.inference import EnsembleError, Predictor  # noqa: E402
from homus.cli import main  # noqa: E402
from homus.serve import create_app  # noqa: E402
from homus_render.channels import render_plain  # noqa: E402
from homus_render.labels import LABELS  # noqa: E402
from homus_render.render import RenderSettings  # noqa: E402
from homus_render.strokes import parse_file  # noqa: E402

BARLINE = [[[10, 0], [10, 40], [11, 80]]]


@pytest.fixture(scope="module")
def run(tiny_homus_run):
    """A tiny model: 1 epoch at 32 px on three writers (its accuracy does not matter here)."""
    return tiny_homus_run


@pytest.fixture(scope="module")
def other_run(run, tmp_path_factory):
    """A second member: the same run's files, its weights perturbed and its pen made thinner, so
    it reads another image and answers otherwise."""
    other = tmp_path_factory.mktemp("serve-other") / "tiny-t1"
    shutil.copytree(run, other)
    ckpt = checkpoint.load(other / "best.pt")
    gen = torch.Generator().manual_seed(0)
    ckpt["model"] = {k: v + 0.05 * torch.randn(v.shape, generator=gen) if v.is_floating_point() else v
                     for k, v in ckpt["model"].items()}
    ckpt["render"] = {**ckpt["render"], "thickness": 1}
    checkpoint.save(other / "best.pt", {k: v for k, v in ckpt.items() if k != "format"})
    return other


@pytest.fixture(scope="module")
def client(run, tmp_path_factory):
    collect = tmp_path_factory.mktemp("collect") / "collected"
    with TestClient(create_app([run], collect)) as c:
        c.collect_dir = collect
        yield c


def test_predict_contract(client):
    r = client.post("/api/predict", json={"strokes": BARLINE, "top_k": 32})
    assert r.status_code == 200, r.text
    body = r.json()
    probs = [p["probability"] for p in body["predictions"]]
    assert sorted({p["label"] for p in body["predictions"]}) == sorted(LABELS)
    assert probs == sorted(probs, reverse=True)
    assert sum(probs) == pytest.approx(1.0, abs=1e-5)
    assert body["models"][0]["run"] == "tiny" and body["models"][0]["top"]["label"] == body["predictions"][0]["label"]
    assert body["ms"] > 0 and "images" not in body["models"][0]
    assert len(client.post("/api/predict", json={"strokes": BARLINE}).json()["predictions"]) == 5  # default top 5


def test_api_predict_equals_homus_predict(client, run, raw_full, tmp_path):
    """The same strokes, as a file for `homus predict` and as JSON for the API: the same labels and
    probabilities."""
    for rel in ("3/3-1.txt", "3/3-77.txt"):
        src = raw_full / rel
        r = CliRunner().invoke(main, ["predict", str(run), str(src), "--json", "--top-k", "32"])
        assert r.exit_code == 0, r.output
        cli = json.loads(r.output)[0]["top"]
        strokes = [s.tolist() for s in parse_file(src).strokes]
        api = client.post("/api/predict", json={"strokes": strokes, "top_k": 32}).json()["predictions"]
        assert [p["label"] for p in api][:5] == [p["label"] for p in cli][:5]
        by_label = {p["label"]: p["probability"] for p in api}
        for p in cli:  # the CLI rounds to 6 decimals
            assert by_label[p["label"]] == pytest.approx(p["probability"], abs=1e-6)


def test_inputs_are_the_images_the_model_read(client, run):
    body = client.post("/api/predict", json={"strokes": BARLINE, "inputs": True}).json()
    (url,) = body["models"][0]["images"]
    assert url.startswith("data:image/png;base64,")
    img = cv2.imdecode(np.frombuffer(base64.b64decode(url.split(",", 1)[1]), np.uint8), cv2.IMREAD_UNCHANGED)
    settings = RenderSettings.from_dict(checkpoint.load(run / "best.pt")["render"])
    expected = render_plain([np.array(s, float) for s in BARLINE], settings)
    assert img.shape == (32, 32) and np.array_equal(img, expected)


def test_grad_cam_while_other_requests_predict(run):
    """Saliency maps asked for while other threads predict with the same models: each map is the one
    a lone request gets (Captum's hooks on a shared model caught the others' forward passes, and a
    request failed with a 500 now and then)."""
    predictor = Predictor([run])
    strokes = [np.array(s, float) for s in BARLINE]
    images = predictor.images(strokes)
    alone = predictor.saliency(images, 3)[0]
    failures, stop = [], threading.Event()

    def predict():
        while not stop.is_set():
            predictor.predict(strokes)

    def explain():
        try:
            for _ in range(15):  # float noise only: a lone request's own repeats differ by about 5e-7
                diff = float(np.abs(predictor.saliency(images, 3)[0] - alone).max())
                assert diff < 1e-4, f"a map differs from the lone request's by {diff:.3g}"
        except Exception as e:  # noqa: BLE001  (reported below, with its kind)
            failures.append(repr(e))

    busy = [threading.Thread(target=predict) for _ in range(3)]
    askers = [threading.Thread(target=explain) for _ in range(2)]
    for t in busy + askers:
        t.start()
    for t in askers:
        t.join()
    stop.set()
    for t in busy:
        t.join()
    assert failures == []


def test_explain_lays_the_models_grad_cam_of_the_top_class_over_its_ink(client, run):
    from classifier.data import to_input
    from classifier.explain import gradcam, overlay

    body = client.post("/api/predict", json={"strokes": BARLINE, "explain": True}).json()
    (answer,) = body["models"]
    url = answer["saliency"]
    assert url.startswith("data:image/png;base64,") and "images" not in answer
    img = cv2.imdecode(np.frombuffer(base64.b64decode(url.split(",", 1)[1]), np.uint8), cv2.IMREAD_UNCHANGED)
    model, ckpt = checkpoint.load_model(run / "best.pt")
    ink = render_plain([np.array(s, float) for s in BARLINE], RenderSettings.from_dict(ckpt["render"]))
    top = list(ckpt["classes"]).index(body["predictions"][0]["label"])
    expected = overlay(ink, gradcam(model, to_input(ink[None]), [top])[0])
    assert img.shape == (32, 32, 3) and np.abs(img.astype(int) - expected).max() <= 1
    plain = client.post("/api/predict", json={"strokes": BARLINE}).json()
    assert "saliency" not in plain["models"][0]  # only when asked: Grad-CAM costs a backward pass
    assert plain["predictions"] == body["predictions"]


def _points(n: int) -> list:
    return [[i % 150, (i * 7) % 200] for i in range(n)]


BAD_PREDICT = [
    ("not JSON", b"{strokes: nope", 400, "not valid JSON"),
    ("JSON, not an object", b"[1, 2]", 422, "the JSON is an array"),
    ("JSON null", b"null", 422, "the JSON is null"),
    ("an empty body", b"", 400, "the body is empty"),
    ("not UTF-8", b'{"strokes": "\xe9"}', 400, "could not be read as JSON text"),
    ("no strokes field", b"{}", 422, "strokes"),
    ("no strokes", {"strokes": []}, 422, "no strokes"),
    ("an empty stroke", {"strokes": [[[1, 2]], []]}, 422, "stroke 1 is empty"),
    ("65 strokes", {"strokes": [[[1, 2]]] * 65}, 422, "65 strokes"),
    ("20,001 points", {"strokes": [_points(10_000), _points(10_001)]}, 422, "20,001 points"),
    ("NaN", b'{"strokes": [[[1, 2], [NaN, 3]]]}', 422, "not a finite number"),
    ("Infinity", b'{"strokes": [[[1, 2], [3, -Infinity]]]}', 422, "not a finite number"),
    ("1e400", b'{"strokes": [[[1e400, 2]]]}', 422, "not a finite number"),
    ("beyond the tablet", {"strokes": [[[1, 2], [100_001, 3]]]}, 422, "beyond any tablet"),
    ("a point of 3 values", {"strokes": [[[1, 2, 3]]]}, 422, "strokes.0.0"),
    ("a word for a number", {"strokes": [[["x", 2]]]}, 422, "strokes.0.0.0"),
    ("a number as a string", {"strokes": [[["10", 2]]]}, 422, "strokes.0.0.0: Input should be a valid number"),
    ("a boolean for a number", {"strokes": [[[True, 2]]]}, 422, "strokes.0.0.0: Input should be a valid number"),
    ("top_k as a string", {"strokes": BARLINE, "top_k": "3"}, 422, "top_k: Input should be a valid integer"),
    ("top_k 3.0", {"strokes": BARLINE, "top_k": 3.0}, 422, "top_k"),
    ("top_k true", {"strokes": BARLINE, "top_k": True}, 422, "top_k"),
    ("inputs as a string", {"strokes": BARLINE, "inputs": "yes"}, 422, "inputs: Input should be a valid boolean"),
    ("explain 1", {"strokes": BARLINE, "explain": 1}, 422, "explain"),
    ("top_k 0", {"strokes": BARLINE, "top_k": 0}, 422, "top_k"),
    ("top_k 33", {"strokes": BARLINE, "top_k": 33}, 422, "top_k"),
    ("an unknown field", {"strokes": BARLINE, "colour": "red"}, 422, "colour"),
]


@pytest.mark.parametrize("what,body,status,message", BAD_PREDICT, ids=[b[0] for b in BAD_PREDICT])
def test_bad_predict_requests_are_4xx_with_a_message(client, what, body, status, message):
    if isinstance(body, bytes):
        r = client.post("/api/predict", content=body, headers={"content-type": "application/json"})
    else:
        r = client.post("/api/predict", json=body)
    assert r.status_code == status, r.text
    assert message in r.json()["detail"]
    assert client.post("/api/predict", json={"strokes": BARLINE}).status_code == 200  # still serving


def test_bodies_over_1mb_and_not_json_are_refused(client):
    big = json.dumps({"strokes": [[[1, 2]] * 130_000]}).encode()
    assert len(big) > 1_000_000
    r = client.post("/api/predict", content=big, headers={"content-type": "application/json"})
    assert r.status_code == 413 and "1,000,000 bytes" in r.json()["detail"]

    def chunks():  # no Content-Length: counted while it streams in
        for _ in range(200):
            yield b" " * 10_000

    r = client.post("/api/predict", content=chunks(), headers={"content-type": "application/json"})
    assert r.status_code == 413
    r = client.post("/api/predict", content=b"strokes=1", headers={"content-type": "application/x-www-form-urlencoded"})
    assert r.status_code == 400 and "not JSON" in r.json()["detail"]
    r = client.post("/api/predict", content=json.dumps({"strokes": BARLINE}))  # JSON, but no Content-Type
    assert r.status_code == 400 and "no Content-Type" in r.json()["detail"], r.text
    assert client.post("/api/predict", json={"strokes": BARLINE}).status_code == 200


@pytest.mark.parametrize("field,value,message", [
    ("label", "Dots", "unknown label"),
    ("label", "", "unknown label"),
    ("writer", "../x", "writer"),
    ("writer", "a/b", "writer"),
    ("writer", "1", "writer"),
    ("writer", "", "writer"),
    ("writer", "a" * 33, "writer"),
    ("writer", "_x", "writer"),
    ("writer", "x.txt", "writer"),
    ("strokes", [[]], "stroke 0 is empty"),
])
def test_bad_samples_are_refused_and_write_nothing(client, field, value, message):
    before = sorted(p for p in client.collect_dir.parent.rglob("*"))
    body = {"label": "Dot", "writer": "alice", "strokes": [[[5, 5], [6, 6]]], field: value}
    r = client.post("/api/samples", json=body)
    assert r.status_code == 422, r.text
    assert message in r.json()["detail"] and field in r.json()["detail"]
    assert sorted(p for p in client.collect_dir.parent.rglob("*")) == before


def test_collected_samples_parse_and_render(client, tmp_path):
    drawn = [("Dot", [[[5, 5], [6, 5], [6, 6]]]), ("Barline", [[[10.5, 0], [10, 40], [11, 80.25]]])]
    saved = []
    for label, strokes in drawn:
        r = client.post("/api/samples", json={"label": label, "strokes": strokes, "writer": "rita_2"})
        assert r.status_code == 201, r.text
        saved.append(r.json())
    assert [s["sample"] for s in saved] == ["rita_2-1", "rita_2-2"]
    for (label, strokes), s in zip(drawn, saved, strict=True):
        path = client.collect_dir / "rita_2" / f"{s['sample']}.txt"
        assert s["path"] == str(path)
        sample = parse_file(path)
        assert (sample.id, sample.writer, sample.label) == (s["sample"], "rita_2", label)
        assert [st.tolist() for st in sample.strokes] == strokes
    counts = client.get("/api/samples").json()
    assert counts["writers"]["rita_2"] == {"Barline": 1, "Dot": 1}
    assert counts["labels"]["Dot"] >= 1
    r = CliRunner().invoke(main, ["render", "--raw-dir", str(client.collect_dir), "--rendered-dir", str(tmp_path),
                                  "--size", "32", "--jobs", "1"])
    assert r.exit_code == 0, r.output
    rendered = {p.stem: cv2.imread(str(p), cv2.IMREAD_GRAYSCALE) for p in tmp_path.rglob("rita_2-*.png")}
    assert sorted(rendered) == ["rita_2-1", "rita_2-2"]
    assert all(img.shape == (32, 32) and img.min() < 128 for img in rendered.values())  # ink on the page


def test_concurrent_saves_never_share_a_number(client):
    results, errors = [], []

    def save():
        try:
            r = client.post("/api/samples", json={"label": "Flat", "writer": "crowd", "strokes": [[[0, 0], [0, 60]]]})
            results.append(r.json()["sample"])
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=save) for _ in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert sorted(results, key=lambda s: int(s.split("-")[1])) == [f"crowd-{n}" for n in range(1, 13)]
    assert not [p for p in (client.collect_dir / "crowd").iterdir() if p.name.startswith(".")]


def test_health_labels_page_and_docs(client):
    health = client.get("/api/health").json()
    assert health["models"][0]["channels"] == ["ink"] and health["models"][0]["size"] == [32, 32]
    assert client.get("/api/labels").json()["labels"] == list(LABELS)
    page = client.get("/")
    assert page.status_code == 200 and 'id="pad"' in page.text
    assert "pointerdown" in client.get("/static/app.js").text
    import warnings

    client.app.openapi_schema = None  # made afresh here: HEAD routes once repeated their GET's operation id
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        assert "/api/predict" in client.get("/openapi.json").json()["paths"]
    assert not [w for w in seen if "Duplicate Operation ID" in str(w.message)]
    docs = client.get("/docs")
    assert docs.status_code == 200 and "/docs-assets/swagger-ui-bundle.js" in docs.text
    assert "http://" not in docs.text and "https://" not in docs.text  # the page works offline: no CDN
    for asset in ("/docs-assets/swagger-ui-bundle.js", "/docs-assets/swagger-ui.css"):
        assert client.get(asset).status_code == 200, asset
    assert client.get("/redoc").status_code == 404  # FastAPI's ReDoc page would load its script from a CDN
    assert page.headers["cache-control"] == "no-cache"  # an old app.js is never run against a new API
    assert client.get("/api/nothing").status_code == 404


def test_ensemble_averages_members_that_read_their_own_inputs(run, other_run):
    strokes = [np.array(s, float) for s in BARLINE]
    ensemble = Predictor([run, other_run])
    p = ensemble.predict(strokes)
    singles = [Predictor([r]).predict(strokes) for r in (run, other_run)]
    assert not np.array_equal(p.images[0], p.images[1])  # thickness 3 against 1
    for img, single in zip(p.images, singles, strict=True):
        assert np.array_equal(img, single.images[0])
    assert not np.allclose(singles[0].probs, singles[1].probs)
    assert np.allclose(p.probs, (singles[0].probs + singles[1].probs) / 2, atol=1e-6)
    with TestClient(create_app([run, other_run], "unused")) as c:
        body = c.post("/api/predict", json={"strokes": BARLINE, "top_k": 32}).json()
    assert [m["run"] for m in body["models"]] == ["tiny", "tiny-t1"]
    got = {g["label"]: g["probability"] for g in body["predictions"]}
    assert all(got[c] == pytest.approx(v, abs=1e-6) for c, v in zip(ensemble.classes, p.probs, strict=True))


def test_concurrent_predictions_are_each_their_own(run, raw_full):
    predictor = Predictor([run])
    symbols = [parse_file(raw_full / f"2/2-{n}.txt").strokes for n in range(1, 25)]
    serial = [predictor.predict(s).probs for s in symbols]
    got = [None] * len(symbols)

    def work(i):
        got[i] = predictor.predict(symbols[i]).probs

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(symbols))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for a, b in zip(serial, got, strict=True):
        assert np.allclose(a, b, atol=1e-5)


def test_runs_with_other_classes_are_refused(run, tmp_path):
    odd = tmp_path / "odd"
    shutil.copytree(run, odd)
    ckpt = checkpoint.load(odd / "best.pt")
    ckpt["classes"] = list(reversed(ckpt["classes"]))
    checkpoint.save(odd / "best.pt", {k: v for k, v in ckpt.items() if k != "format"})
    with pytest.raises(EnsembleError, match="other classes"):
        Predictor([run, odd])
    r = CliRunner().invoke(main, ["serve", str(run), str(odd), "--port", "1"])
    assert r.exit_code == 1 and "error:" in r.output and "other classes" in r.output
    r = CliRunner().invoke(main, ["serve", str(tmp_path)])
    assert r.exit_code == 1 and "not a homus run folder" in r.output


def test_a_collect_folder_that_cannot_be_written_is_the_servers_fault(run, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    with TestClient(create_app([run], blocker / "collected")) as c:
        r = c.post("/api/samples", json={"label": "Dot", "writer": "alice", "strokes": [[[5, 5]]]})
        assert r.status_code == 500 and "a-file" in r.json()["detail"]
        assert c.post("/api/predict", json={"strokes": BARLINE}).status_code == 200


def test_a_full_collect_folder_refuses_with_409_and_writes_nothing(run, tmp_path):
    collect = tmp_path / "collected"
    sample = {"label": "Dot", "strokes": [[[5, 5]]]}
    with TestClient(create_app([run], collect, max_samples=2)) as c:
        assert [c.post("/api/samples", json={**sample, "writer": w}).status_code for w in ("ann", "bob")] == [201, 201]
        r = c.post("/api/samples", json={**sample, "writer": "cy"})
        assert r.status_code == 409 and "holds 2 samples, its limit (--max-samples 2)" in r.json()["detail"], r.text
        assert c.get("/api/samples").json()["total"] == 2 and not (collect / "cy").exists()
        assert c.post("/api/predict", json={"strokes": BARLINE}).status_code == 200  # reading goes on


def test_writer_names_that_one_disk_would_merge_are_refused(client):
    sample = {"label": "Dot", "strokes": [[[5, 5]]]}
    assert client.post("/api/samples", json={**sample, "writer": "Dana"}).status_code == 201
    r = client.post("/api/samples", json={**sample, "writer": "dana"})
    assert r.status_code == 422 and "already has 'Dana', which differs only by case" in r.json()["detail"]
    assert not (client.collect_dir / "dana").exists()
    assert client.post("/api/samples", json={**sample, "writer": "Dana"}).status_code == 201  # the same name is fine
    for reserved in ("con", "NUL", "Com1"):
        r = client.post("/api/samples", json={**sample, "writer": reserved})
        assert r.status_code == 422 and "a device name on Windows" in r.json()["detail"]


def test_serve_takes_its_defaults_from_the_config_and_flags_over_them(run, tmp_path, monkeypatch):
    import uvicorn

    seen = {}
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: seen.update(app=app, **kw))
    monkeypatch.setattr(torch, "set_num_threads", lambda n: seen.update(threads=n))
    cfg = tmp_path / "mine.yaml"
    cfg.write_text(f"serve:\n  port: 0\n  collect_dir: {tmp_path / 'drawn'}\n  max_samples: 7\n  max_batch: 3\n"
                   "  log_level: warning\n  threads: 2\n")
    r = CliRunner().invoke(main, ["serve", str(run), "--config", str(cfg), "--max-samples", "5"])
    assert r.exit_code == 0, r.output
    app = seen["app"]
    assert (seen["host"], seen["log_level"], seen["threads"]) == ("127.0.0.1", "warning", 2)
    assert seen["port"] > 0 and f"http://127.0.0.1:{seen['port']}/" in r.output  # port 0: the one taken, shown
    assert app.state.collect_dir == tmp_path / "drawn" and app.state.max_samples == 5  # the flag over the file
    assert app.state.predictor._forward.max_batch == 3


@pytest.mark.parametrize("args, config, code, words", [
    (["--host", ""], "", 2, "flags: 'serve.host (--host)' must not be empty"),
    (["--collect-dir", " "], "", 2, "'serve.collect_dir (--collect-dir)' must not be empty"),
    (["--host", "a" * 70 + ".com", "--port", "0"], "", 1, "not a valid host name"),
    (["--threads", "5000"], "", 2, "5000 is not in the range 0<=x<=1024"),
    (["--max-samples", str(10**10)], "", 2, "--max-samples"),
    ([], "serve:\n  host: \"127.0.0.1\\0\"\n", 2, "'serve.host (--host)' holds a control character"),
    ([], "serve:\n  collect_dir: {afile}\n", 1, "the collect folder is a file"),
])
def test_bad_serve_settings_are_one_line_before_any_model_loads(run, tmp_path, monkeypatch, args, config, code, words):
    import uvicorn

    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: pytest.fail("the server started"))
    (tmp_path / "afile").write_text("not a folder")
    path = tmp_path / "serve.yaml"
    path.write_text(config.format(afile=tmp_path / "afile") or "serve: {}\n")
    r = CliRunner().invoke(main, ["serve", str(run), "--config", str(path), *args])
    assert r.exit_code == code and words in r.output and "Traceback" not in r.output, r.output
    assert len([ln for ln in r.output.splitlines() if ln.strip()]) == 1  # one line, flag or file


def test_head_requests_are_answered_where_get_is(client):
    """Uptime monitors and link checkers ask HEAD: 200 and no body, not 405."""
    for path in ("/", "/api/health", "/api/labels", "/api/samples", "/static/app.js"):
        r = client.head(path)
        assert r.status_code == 200 and r.content == b"", path


def test_the_counts_after_a_save_read_only_the_writer_that_changed(tmp_path, monkeypatch):
    """The page asks for the counts after every save; reading every file of a folder of 100,000
    samples took seconds. The cache reads a writer again only when its folder changed."""
    from homus_render import collect

    for writer, labels in (("alice", ["Barline", "Flat"]), ("bob", ["Flat"])):
        for label in labels:
            collect.save_sample(tmp_path, writer, label, [np.array([[0, 0], [5, 40.0]])])
    old = time.time() - 60
    for writer in ("alice", "bob"):
        os.utime(tmp_path / writer, (old, old))
    reads = []
    real = collect.writer_counts
    monkeypatch.setattr(collect, "writer_counts", lambda folder: reads.append(folder.name) or real(folder))
    cache = collect.CountsCache(tmp_path)
    first = cache()
    assert sorted(reads) == ["alice", "bob"] and first == collect.collected_counts(tmp_path)
    reads.clear()
    assert cache() == first and reads == []  # nothing changed: nothing read
    collect.save_sample(tmp_path, "bob", "Sharp", [np.array([[0, 0], [5, 40.0]])])
    after = cache()
    assert reads == ["bob"] and after == collect.collected_counts(tmp_path) and after["total"] == 4
    (tmp_path / "bob" / "bob-1.txt").unlink()
    assert cache()["writers"]["bob"] == {"Sharp": 1}
