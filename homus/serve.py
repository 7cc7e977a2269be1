"""``homus serve``: draw a symbol in a browser and see what the model reads; collect new samples.

A FastAPI app (``pip install 'homus[serve]'``) around :class:`classifier.inference.Predictor`:
the page at ``/``, the JSON API under ``/api``, the OpenAPI page at ``/docs`` (Swagger UI served
from the ``swagger-ui-bundle`` package, so it works offline). Every bad request
is answered with a 4xx and one readable message naming the field; the server keeps serving.

fastapi is imported inside :func:`create_app` so the rest of the command line starts without it
(and this module keeps real annotations: FastAPI reads them at runtime).
"""

import base64
import logging
import time
from pathlib import Path

import click

from .config import LOG_LEVELS, SERVE_RANGES, ConfigError, check_serve
from .options import SettingsFileError, note_unfinished, once, pick, with_config

#: Bodies above this are refused before any parsing (a symbol's strokes take a few kB).
MAX_BODY = 1_000_000
STATIC = Path(__file__).parent / "static"
log = logging.getLogger("homus.serve")


def png_data_url(img) -> str:
    """A uint8 image (grayscale, or BGR) as a ``data:image/png;base64,...`` URL."""
    import cv2

    ok, buf = cv2.imencode(".png", img)
    if not ok:
        raise ValueError("could not encode the image as PNG")
    return "data:image/png;base64," + base64.b64encode(buf.tobytes()).decode("ascii")


class BodyLimit:
    """ASGI middleware: a body over ``limit`` bytes is answered 413 before the app reads any of
    it (by its Content-Length, or while it streams in when it has none)."""

    def __init__(self, app, limit: int = MAX_BODY) -> None:
        self.app, self.limit = app, limit

    async def _refuse(self, send, status: int, message: str) -> None:
        import json

        body = json.dumps({"detail": message}).encode()
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                                (b"connection", b"close")]})
        await send({"type": "http.response.body", "body": body})

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        too_big = f"the body is over {self.limit:,} bytes; send one symbol's strokes per request"
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None:
            if not length.isdigit():
                return await self._refuse(send, 400, "Content-Length is not a number")
            if int(length) > self.limit:
                return await self._refuse(send, 413, too_big)
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return  # the client went away
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.limit:
                return await self._refuse(send, 413, too_big)
            chunks.append(chunk)
            if not message.get("more_body"):
                break
        body, replayed = b"".join(chunks), False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        return await self.app(scope, replay, send)


def _field(loc) -> str:
    parts = [str(p) for p in loc if p != "body"]
    return ".".join(parts) or "body"


#: What a JSON value that is not an object is, for the message that refuses it.
_JSON_KINDS = {list: "an array", str: "a string", int: "a number", float: "a number", bool: "true or false",
               type(None): "null"}
SEND_JSON = "send a JSON object with Content-Type: application/json"


def body_problem(error: dict, content_type: str) -> tuple[int, str]:
    """The status and message for a request whose body as a whole is unusable (a validation error
    at ``("body",)``): empty, sent without a JSON Content-Type, or JSON that is not an object."""
    value = error.get("input")
    if error.get("type") == "missing":
        return 400, f"the body is empty; {SEND_JSON}"
    if isinstance(value, (bytes, bytearray)):  # FastAPI parses JSON only when the Content-Type says so
        if not content_type:
            return 400, f"the request has no Content-Type, so its body is not read as JSON; {SEND_JSON}"
        return 400, f"the body is not JSON (Content-Type: {content_type}); {SEND_JSON}"
    kind = _JSON_KINDS.get(type(value), "not an object")
    return 422, f"body: the JSON is {kind}; expected an object with the fields of /docs"


def create_app(runs, collect_dir="collected", max_batch: int = 32, max_samples: int | None = None):
    """The web service for ``runs`` (one run, or several served as an ensemble), saving
    collected samples under ``collect_dir`` (refused once it holds ``max_samples``)."""
    from typing import Annotated

    from fastapi import FastAPI, Request
    from fastapi.exception_handlers import http_exception_handler
    from fastapi.exceptions import RequestValidationError
    from fastapi.openapi.docs import get_swagger_ui_html
    from fastapi.responses import FileResponse, JSONResponse
    from fastapi.staticfiles import StaticFiles
    from pydantic import BaseModel, ConfigDict, Field, Strict, StrictBool, StrictInt, field_validator
    from starlette.exceptions import HTTPException as StarletteHTTPException

    from classifier.explain import overlay
    from classifier.inference import Predictor
    from homus_render.channels import ink_index
    from homus_render.collect import (
        CollectFullError,
        CountsCache,
        SampleError,
        check_label,
        check_strokes,
        check_writer,
        save_sample,
    )
    from homus_render.errors import HomusError, PathError, describe
    from homus_render.labels import LABELS

    predictor = Predictor([Path(r) for r in runs], max_batch=max_batch)
    collect_dir = Path(collect_dir)
    n_classes = len(predictor.classes)
    # Strict scalars: a coordinate, top_k or flag sent as a string or a boolean is refused, not
    # silently read as a number ("3" -> 3, true -> 1.0).
    Coord = Annotated[float, Strict()]
    Strokes = Annotated[list[list[tuple[Coord, Coord]]], Field(
        description="The pen's strokes in the order drawn, each a list of [x, y] points in HOMUS tablet "
                    "units (the tablet is about 200 x 270 units): 1-64 strokes, at most 20,000 points, "
                    "|v| <= 100,000.",
        examples=[[[[10, 0], [10, 40], [11, 80]]]])]

    class PredictRequest(BaseModel):
        model_config = ConfigDict(extra="forbid")
        strokes: Strokes
        top_k: StrictInt = Field(5, ge=1, le=n_classes, description="How many classes to return, most probable first.")
        inputs: StrictBool = Field(False, description="Also return the images each model read, as PNG data URLs.")
        explain: StrictBool = Field(False, description="Also return each model's Grad-CAM saliency for the top class, "
                                                 "laid over its ink, as a PNG data URL.")

        @field_validator("strokes", mode="after")
        @classmethod
        def _strokes(cls, v):
            return check_strokes(v)

    class SampleRequest(BaseModel):
        model_config = ConfigDict(extra="forbid")
        label: str = Field(description="The symbol's true class, one of GET /api/labels.")
        strokes: Strokes
        writer: str = Field(description="Who drew it: a letter, then letters, digits or _ (at most 32).",
                            examples=["alice"])

        @field_validator("label", mode="after")
        @classmethod
        def _label(cls, v):
            return check_label(v)

        @field_validator("writer", mode="after")
        @classmethod
        def _writer(cls, v):
            return check_writer(v)

        @field_validator("strokes", mode="after")
        @classmethod
        def _strokes(cls, v):
            return check_strokes(v)

    class Guess(BaseModel):
        label: str
        probability: float

    class ModelAnswer(BaseModel):
        run: str
        channels: list[str]
        size: list[int]
        top: Guess
        images: list[str] | None = Field(None, description="What the model read, one PNG data URL per channel "
                                                           "(only when the request asks `inputs`).")
        saliency: str | None = Field(None, description="Grad-CAM of the ensemble's top class on this model's input, "
                                                       "over its ink (PNG data URL; only when the request asks "
                                                       "`explain`).")

    class PredictResponse(BaseModel):
        predictions: list[Guess]
        models: list[ModelAnswer]
        ms: float = Field(description="Server time for drawing the inputs and running the models.")

    class SampleResponse(BaseModel):
        path: str
        sample: str

    from swagger_ui_bundle import swagger_ui_path

    app = FastAPI(title="homus", version="1", summary="Draw a HOMUS music symbol, see what the model reads.",
                  description="Points are in HOMUS tablet units. Errors are `{\"detail\": message}` with a 4xx.",
                  docs_url=None, redoc_url=None)  # FastAPI's own pages load their scripts from a CDN
    app.state.predictor, app.state.collect_dir, app.state.max_samples = predictor, collect_dir, max_samples
    counts = CountsCache(collect_dir)  # each save re-reads its writer, not the whole folder

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError):
        errors = exc.errors()
        bad_json = next((e for e in errors if e.get("type") == "json_invalid"), None)
        if bad_json is not None:
            why = (bad_json.get("ctx") or {}).get("error", "")
            return JSONResponse({"detail": f"the body is not valid JSON ({why})".replace(" ()", "")}, 400)
        whole = next((e for e in errors if tuple(e.get("loc", ())) == ("body",)), None)
        if whole is not None:
            status, message = body_problem(whole, request.headers.get("content-type", ""))
            return JSONResponse({"detail": message, "errors": [{"field": "body", "message": message}]}, status)
        fields = []
        for e in errors[:10]:
            msg = str(e.get("msg", "invalid")).removeprefix("Value error, ")
            fields.append({"field": _field(e.get("loc", ())), "message": msg})
        detail = "; ".join(f"{f['field']}: {f['message']}" for f in fields)
        return JSONResponse({"detail": detail, "errors": fields}, 422)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException):
        if exc.status_code == 400 and exc.detail == "There was an error parsing the body":  # FastAPI's words
            cause = type(exc.__cause__).__name__ if exc.__cause__ else "unreadable"
            return JSONResponse({"detail": f"the body could not be read as JSON text ({cause}); send UTF-8 "
                                           f"JSON with Content-Type: application/json"}, 400)
        return await http_exception_handler(request, exc)

    @app.exception_handler(SampleError)
    async def _sample(request: Request, exc: SampleError):  # a full folder: a good sample, no room for it
        return JSONResponse({"detail": f"{exc.field}: {exc}", "errors": [{"field": exc.field, "message": str(exc)}]},
                            409 if isinstance(exc, CollectFullError) else 422)

    @app.exception_handler(HomusError)
    async def _homus(request: Request, exc: HomusError):  # a disk fault while saving is the server's, not the request's
        return JSONResponse({"detail": describe(exc) or str(exc)}, 500 if isinstance(exc, PathError) else 422)

    @app.exception_handler(Exception)
    async def _bug(request: Request, exc: Exception):  # a fault of the server, not of the request
        log.exception("%s %s failed", request.method, request.url.path)
        return JSONResponse({"detail": f"internal error ({type(exc).__name__}); the server keeps serving"}, 500)

    def get_and_head(path: str, **kw):
        """A GET route, answered to HEAD as well; HEAD stays out of the OpenAPI schema, where it would
        repeat the GET operation's id."""
        def add(fn):
            app.head(path, include_in_schema=False)(fn)
            return app.get(path, **kw)(fn)
        return add

    @get_and_head("/", include_in_schema=False)
    def index():
        return FileResponse(STATIC / "index.html")

    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    app.mount("/docs-assets", StaticFiles(directory=str(swagger_ui_path)), name="docs-assets")

    @get_and_head("/docs", include_in_schema=False)
    def docs():
        return get_swagger_ui_html(openapi_url=app.openapi_url, title="homus API", oauth2_redirect_url=None,
                                   swagger_js_url="/docs-assets/swagger-ui-bundle.js",
                                   swagger_css_url="/docs-assets/swagger-ui.css",
                                   swagger_favicon_url="/docs-assets/favicon-32x32.png")

    @app.middleware("http")
    async def revalidate(request: Request, call_next):
        """The page and its scripts are checked with the server on each load (a cheap 304), so a
        page cached from an older homus never runs against a newer API."""
        response = await call_next(request)
        if not request.url.path.startswith("/api/"):
            response.headers.setdefault("Cache-Control", "no-cache")
        return response

    @get_and_head("/api/labels", summary="The classes the models predict, in order.")
    def labels() -> dict:
        return {"labels": list(predictor.classes), "homus": list(LABELS)}

    @get_and_head("/api/health",
                  summary="The models loaded: their runs, input channels and render settings.")
    def health() -> dict:
        return {"status": "ok", "models": predictor.describe(), "classes": n_classes,
                "collect_dir": str(collect_dir)}

    @app.post("/api/predict", response_model=PredictResponse, response_model_exclude_none=True,
              summary="Name the symbol these strokes draw.")
    def predict(req: PredictRequest):
        start = time.perf_counter()
        p = predictor.predict(req.strokes)
        heat = predictor.saliency(p.images, int(p.probs.argmax())) if req.explain else [None] * len(p.images)
        ms = (time.perf_counter() - start) * 1000
        models = []
        for m, probs, img, h in zip(predictor.members, p.member_probs, p.images, heat, strict=True):
            i = int(probs.argmax())
            answer = {"run": m.name, "channels": list(m.channels), "size": [m.settings.width, m.settings.height],
                      "top": {"label": predictor.classes[i], "probability": float(probs[i])}}
            if req.inputs:
                answer["images"] = [png_data_url(c) for c in (img if img.ndim == 3 else img[None])]
            if h is not None:
                answer["saliency"] = png_data_url(overlay(img[ink_index(m.channels)] if img.ndim == 3 else img, h))
            models.append(answer)
        return {"predictions": [{"label": label, "probability": prob} for label, prob in p.top(req.top_k)],
                "models": models, "ms": round(ms, 3)}

    @app.post("/api/samples", status_code=201, response_model=SampleResponse,
              summary="Save a symbol as a HOMUS stroke file: <collect-dir>/<writer>/<writer>-<n>.txt.")
    def add_sample(req: SampleRequest):
        path = save_sample(collect_dir, req.writer, req.label, req.strokes, max_samples=max_samples)
        return {"path": str(path), "sample": path.stem}

    @get_and_head("/api/samples",
                  summary="How many samples the collect folder holds, per label and per writer.")
    def samples() -> dict:
        return counts()

    app.add_middleware(BodyLimit, limit=MAX_BODY)
    return app


def _check_address(host: str, port: int) -> int:
    """Open and close ``host:port`` the way uvicorn will (asyncio's ``create_server``), so a host
    that does not resolve, an address that is not this machine's, a port another program holds or
    one that needs root is a one-line error naming them, before any model loads. Returns the port
    (for port 0, the free one the system gave, which the server then takes)."""
    import asyncio
    import errno
    import socket

    from homus_render.errors import HomusError

    async def bind() -> int:
        server = await asyncio.get_running_loop().create_server(asyncio.Protocol, host=host, port=port)
        got = server.sockets[0].getsockname()[1]
        server.close()
        await server.wait_closed()
        return got

    where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    try:
        return asyncio.run(bind())
    except (socket.gaierror, UnicodeError) as e:  # UnicodeError: a label over 63 characters (idna)
        why = e.strerror if isinstance(e, socket.gaierror) else "not a valid host name"
        raise HomusError(f"--host {host}: no such host ({why}); use 127.0.0.1, 0.0.0.0 or a name of "
                         "this machine") from None
    except OSError as e:
        why = {errno.EADDRINUSE: "the port is in use by another program: choose another --port",
               errno.EADDRNOTAVAIL: "that address is not one of this machine's: choose another --host",
               errno.EACCES: "permission denied (ports below 1024 need privileges): choose another --port"}
        raise HomusError(f"{where}: cannot listen there; {why.get(e.errno, e.strerror or str(e))}") from None


@click.command()
@click.argument("runs", nargs=-1, required=True, type=click.Path(exists=True, file_okay=False))
@click.option("--host", help="Address to listen on; 0.0.0.0 opens it to the network.")
@click.option("--port", type=click.IntRange(*SERVE_RANGES["port"]), help="0: any free port.")
@click.option("--collect-dir", type=click.Path(file_okay=False),
              help="Where collected samples go, as <writer>/<writer>-<n>.txt.")
@click.option("--max-samples", type=click.IntRange(*SERVE_RANGES["max_samples"]),
              help="Refuse new samples once the collect folder holds this many.")
@click.option("--threads", type=click.IntRange(*SERVE_RANGES["threads"]),
              help="Torch CPU threads per forward pass (0: torch's default, all cores). Concurrent requests are "
                   "batched, so one thread keeps a small CPU busiest.")
@click.option("--max-batch", type=click.IntRange(*SERVE_RANGES["max_batch"]),
              help="Drawings read by one forward pass at most.")
@click.option("--log-level", type=click.Choice(LOG_LEVELS), help="How much uvicorn logs.")
@with_config
def serve(cfg, runs, host, port, collect_dir, max_samples, threads, max_batch, log_level) -> None:
    """Serve RUN's model (several runs: one ensemble) to a drawing page at http://HOST:PORT/ and a JSON
    API (/docs); collected samples go to --collect-dir. Defaults: the serve section of pipeline.yaml."""
    try:
        import uvicorn
    except ModuleNotFoundError as e:
        raise click.ClickException(f"homus serve needs the serve extra ({e.name} is missing): "
                                   "pip install 'homus[serve]'") from None
    import torch

    from homus_render.errors import PathError

    once(runs)  # one model twice would vote twice
    note_unfinished(runs)
    flags = {"host": host, "port": port, "collect_dir": collect_dir, "max_samples": max_samples,
             "threads": threads, "max_batch": max_batch, "log_level": log_level}
    s = {k: pick(flags.get(k), v) for k, v in cfg["serve"].items()}
    try:  # the flags pass the file's checks too: an empty --host would listen on every address
        check_serve(s, "flags")
    except ConfigError as e:
        raise SettingsFileError(str(e)) from None
    host, collect_dir = s["host"], Path(s["collect_dir"])
    if collect_dir.exists() and not collect_dir.is_dir():  # else every save would fail with a 500
        raise PathError(f"{collect_dir}: the collect folder is a file; name a folder with --collect-dir")
    port = _check_address(host, s["port"])  # before the models load: a taken port is one line, not uvicorn's log
    if s["threads"]:
        torch.set_num_threads(s["threads"])
    app = create_app(runs, collect_dir, max_batch=s["max_batch"], max_samples=s["max_samples"])
    log_level = s["log_level"]
    click.echo(f"homus: {len(runs)} model(s) at http://{host}:{port}/  (API: /docs; samples -> {collect_dir})")
    uvicorn.run(app, host=host, port=port, log_level=log_level, access_log=log_level in ("info", "debug"))
