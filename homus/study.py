"""A study: render every variant, train one model per variant, arm and seed (and on their union),
evaluate every model on every variant's test split, and write the report.

Arms (``study.arms``) are named sets of training settings tried on every variant: fixed images
against training from strokes, one augmentation against another. Without arms, one run per variant.

Everything is resumable: up-to-date variants are not rendered again, finished runs are not
trained again, saved evaluations are not recomputed. So a killed study continues where it
stopped, and a finished one reruns in seconds.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from pathlib import Path

from classifier.evaluate import evaluate_run
from classifier.train import TrainConfig, train
from homus_render.dataset import list_stroke_files, parse_writers
from homus_render.fetch import fetch
from homus_render.render import RenderSettings
from homus_render.variants import render_variants

from . import config as cfgmod
from .report import write_report


@dataclass
class StudyRun:
    name: str  # the run's folder name
    variant: str  # a variant name, or "union"
    seed: int
    variants: list[Path]  # what it trains on
    arm: str | None = None  # the arm's name, when the study has arms
    settings: RenderSettings | None = None  # the variant's render settings (not for a union)


def study_variants(cfg: dict) -> list[RenderSettings]:
    """The study's render settings: the explicit list, else the grid; other settings from ``render``."""
    s, r = cfg["study"], cfg["render"]
    base = {k: r[k] for k in ("margin", "antialias", "staff_spacing", "staff_offset")}
    if s["variants"]:
        items = [dict(v) for v in s["variants"]]
    else:
        items = [{"thickness": t, "size": z, "fit": f, "staff_lines": sl} for t, z, f, sl in itertools.product(
            cfgmod.as_list(s["thickness"]), cfgmod.as_list(s["size"]), cfgmod.as_list(s["fit"]),
            cfgmod.as_list(s["staff_lines"]))]
    out = []
    for i, item in enumerate(items):
        merged = {"fit": r["fit"], "staff_lines": r["staff_lines"], "thickness": 3, "size": 96, **base, **item}
        w, h = cfgmod.parse_size(merged.pop("size"))
        try:
            out.append(RenderSettings(width=w, height=h, **merged))
        except (TypeError, ValueError) as e:
            raise cfgmod.ConfigError(f"study variant {i + 1} ({item}): {e}") from None
    return list(dict.fromkeys(out))


def plan(cfg: dict) -> tuple[list[RenderSettings], list[StudyRun]]:
    s = cfg["study"]
    variants = study_variants(cfg)
    rendered = Path(cfg["render"]["rendered_dir"])
    runs = []
    arms = list((s["arms"] or {}).items()) or [(None, {})]
    for seed in cfgmod.as_list(s["seeds"]):
        for v in variants:
            for arm, _ in arms:
                name = f"{v.name}-{arm}-seed{seed}" if arm else f"{v.name}-seed{seed}"
                runs.append(StudyRun(name, v.name, int(seed), [rendered / v.name], arm, v))
        if s["union"] and len(variants) > 1 and len({v.size for v in variants}) == 1:
            if cfgmod.as_list({**cfg["train"], **s["train"]}.get("channels", ["ink"])) != ["ink"]:
                raise cfgmod.ConfigError("study.union trains on rendered folders, which hold ink alone: set "
                                         "study.union: false to study channels other than ink")
            runs.append(StudyRun(f"union-seed{seed}", "union", int(seed), [rendered / v.name for v in variants]))
    return variants, runs


def run_study(cfg: dict, log=print) -> Path:
    """Do the whole study ``cfg`` describes; returns the report folder."""
    s, d = cfg["study"], cfg["dataset"]
    variants, runs = plan(cfg)  # bad settings fail here, before any download
    raw = Path(d["raw_dir"])
    if not raw.is_dir() or not list_stroke_files(raw):
        log(f"{raw} is empty: fetching HOMUS {d['version']}")
        log(fetch(raw, d["version"], d["source"]).summary())
    for res in render_variants(raw, cfg["render"]["rendered_dir"], variants, jobs=cfg["render"]["jobs"],
                               writers=parse_writers(d["writers"]), log=log):
        log(f"{res.path}: {res.status}")
    runs_dir = Path(cfg["train"]["runs_dir"]) / s["name"]
    shared = {**cfg["train"], **s["train"], "runs_dir": str(runs_dir)}
    for r in runs:
        folder = runs_dir / r.name
        if (folder / "metrics.json").exists():
            log(f"{folder}: finished, not trained again")
            continue
        settings = {**shared, **(s["overrides"] or {}).get(r.variant, {}), **(s["arms"] or {}).get(r.arm, {}),
                    "seed": r.seed, "name": r.name, "variants": [str(p) for p in r.variants]}
        if r.settings is None:  # a union: several renderings, read from their folders
            settings["from_strokes"] = False
        settings = cfgmod.train_settings(cfg, settings)
        if r.settings is not None:
            settings["render"] = r.settings.to_dict()
        tc = TrainConfig.from_dict(settings)
        log(f"training {folder} ({'continuing' if folder.exists() else 'new'})")
        train(tc, resume=folder.exists(), log=log)
    for r in runs:  # every model on every variant's test split: the cross matrix
        folder = runs_dir / r.name
        for v in variants:
            if not (folder / f"eval-{v.name}.json").exists():
                m = evaluate_run(folder, Path(cfg["render"]["rendered_dir"]) / v.name, device=shared["device"])
                log(f"{r.name} on {v.name}: test accuracy {m['test_accuracy']:.4f}")
    out = Path(s["reports_dir"]) / s["name"]
    group_by = ["arm", "variants"] if s["arms"] else ["variants"]
    if s["arms"] and len(variants) == 1 and not any(r.variant == "union" for r in runs):
        group_by = ["arm"]
    write_report([runs_dir / r.name for r in runs], out, title=f"study {s['name']}",
                 variants=[v.name for v in variants], settings=cfg, command="homus run", group_by=group_by,
                 extra={r.name: {"arm": r.arm or "-"} for r in runs})
    return out

