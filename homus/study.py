"""A study: render every variant, train one model per variant, arm and seed (and on their union),
evaluate every model on every variant's test split, and write the report.

Arms (``study.arms``) are named sets of training settings tried on every variant: fixed images
against training from strokes, one augmentation against another. Without arms, one run per variant.
``study.split_seed`` puts every seed on one split; ``study.folds: k`` trains every fold of a k-fold
cross-validation (each writer, or each sample on a random split, tested exactly once);
``study.ensembles`` names groups of runs scored together on each variant and fold.
docs/studies.md describes the schema.

Everything is resumable: up-to-date variants are not rendered again, finished runs are not
trained again, saved evaluations are not recomputed. So a killed study continues where it
stopped, and a finished one reruns in seconds. The runs train here one after another, several at
once (``study.parallel``) or on a Ray cluster (``study.ray``): :mod:`homus.launch`.
"""

from __future__ import annotations

import itertools
import json
from dataclasses import dataclass
from pathlib import Path

from classifier.data import dataset_sha256, variant_info
from classifier.evaluate import evaluate_ensemble, evaluate_run
from classifier.runfolder import CONFIG, RunFolder, raw_identity, same_data
from classifier.settings import TrainConfig, run_folder_name, setting_differences
from classifier.train import init_checkpoint
from homus_render.dataset import FETCH_IN_PROGRESS, list_stroke_files, parse_writers
from homus_render.errors import SettingsError
from homus_render.fetch import fetch
from homus_render.render import RenderSettings
from homus_render.variants import render_variants

from . import config as cfgmod
from .launch import Job, train_jobs
from .report import write_report


@dataclass
class StudyRun:
    name: str  # the run's folder name
    variant: str  # a variant name, or "union"
    seed: int
    variants: list[Path]  # what it trains on
    arm: str | None = None  # the arm's name, when the study has arms
    settings: RenderSettings | None = None  # the variant's render settings (not for a union)
    fold: int | None = None  # the fold it tests on, in a cross-validation


@dataclass
class StudyEnsemble:
    name: str  # the ensemble's name in study.ensembles
    variant: str
    fold: int | None
    runs: list[str]  # its members' run names

    @property
    def file(self) -> str:
        """Where its metrics go, in the study's runs folder."""
        fold = "" if self.fold is None else f"-fold{self.fold}"
        return f"ensemble-{self.name}-{self.variant}{fold}.json"


@dataclass
class StudyPlan:
    variants: list[RenderSettings]
    runs: list[StudyRun]
    configs: dict[str, TrainConfig]  # each run's settings, by run name
    ensembles: list[StudyEnsemble]
    runs_dir: Path  # where the runs live: train.runs_dir / study.name


def study_variants(cfg: dict) -> list[RenderSettings]:
    """The study's render settings: the explicit list, else the grid; other settings from ``render``
    (a variant that leaves out its thickness or size takes the train section's)."""
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
        merged = {"fit": r["fit"], "staff_lines": r["staff_lines"], "thickness": cfg["train"]["thickness"],
                  "size": cfg["train"]["size"], **base, **item}
        w, h = cfgmod.parse_size(merged.pop("size"))
        try:
            out.append(RenderSettings(width=w, height=h, **merged))
        except (TypeError, ValueError) as e:
            raise cfgmod.ConfigError(f"study variant {i + 1} ({item}): {e}") from None
    return list(dict.fromkeys(out))


def plan(cfg: dict, source: str | Path = "the study") -> StudyPlan:
    """Every run of the study with its settings, and every ensemble: built (and so checked) before
    anything is fetched, rendered or trained. A setting the study asks for that cannot be is a
    :class:`~homus.config.ConfigError` naming the file."""
    try:
        return _plan(cfg, source)
    except SettingsError as e:  # a run's or a variant's settings: the study file asked for them
        raise cfgmod.blame(e, source) from None


def _plan(cfg: dict, source: str | Path) -> StudyPlan:
    s = cfg["study"]
    variants = study_variants(cfg)
    rendered = Path(cfg["render"]["rendered_dir"])
    runs = []
    arms = list((s["arms"] or {}).items()) or [(None, {})]
    folds = list(range(s["folds"])) if s["folds"] else [None]
    for fold in folds:
        for seed in cfgmod.as_list(s["seeds"]):
            for v in variants:
                for arm, _ in arms:
                    name = run_folder_name([v.name, arm] if arm else [v.name], fold, seed)
                    runs.append(StudyRun(name, v.name, int(seed), [rendered / v.name], arm, v, fold))
            if s["union"] and len(variants) > 1 and len({v.size for v in variants}) == 1:
                runs.append(StudyRun(run_folder_name(["union"], fold, seed), "union", int(seed),
                                     [rendered / v.name for v in variants], fold=fold))
    names = {r.variant for r in runs}  # the variants' names, and "union" where the study has one
    unknown = sorted(set(s["overrides"] or {}) - names)
    if unknown:  # a name mistyped (or one that leaves out -m2) would train with the settings it meant to change
        raise cfgmod.ConfigError(f"{source}: 'study.overrides.{unknown[0]}': the study has no variant of that name; "
                                 f"its variants: {', '.join(sorted(names))}")
    runs_dir = Path(cfg["train"]["runs_dir"]) / s["name"]
    configs = {r.name: run_config(cfg, r, runs_dir, source) for r in runs}
    checked = set()
    for tc in configs.values():  # a checkpoint to fine-tune from: there and fitting, before hours of work
        key = (tc.weights, tc.arch, tc.stem, tuple(tc.channels))
        if key not in checked:
            checked.add(key)
            init_checkpoint(tc)
    ensembles = []
    for name, spec in (s["ensembles"] or {}).items():
        for v in variants:
            for fold in folds:
                members = [r.name for r in runs if r.variant == v.name and r.fold == fold
                           and r.seed in spec.get("seeds", [r.seed]) and r.arm in spec.get("arms", [r.arm])]
                if len(members) < 2:
                    raise cfgmod.ConfigError(f"{source}: 'study.ensembles.{name}' has {len(members)} run(s) on "
                                             f"{v.name}; an ensemble needs at least 2")
                splits = {(configs[m].split, configs[m].split_rng_seed, configs[m].folds) for m in members}
                if len(splits) > 1:  # found after hours of training otherwise
                    kinds = ", ".join(f"{k} split seed {seed}" for k, seed, _ in sorted(splits))
                    raise cfgmod.ConfigError(f"{source}: 'study.ensembles.{name}' votes runs tested on different "
                                             f"splits ({kinds}); an ensemble needs one shared test split: give "
                                             "its arms the same split")
                ensembles.append(StudyEnsemble(name, v.name, fold, members))
    return StudyPlan(variants, runs, configs, ensembles, runs_dir)


def run_config(cfg: dict, r: StudyRun, runs_dir: Path, source: str | Path) -> TrainConfig:
    """One study run's settings, through the one settings path: the train section, the study's
    train settings, the variant's overrides, the arm's, then what the study fixes for this run."""
    s = cfg["study"]
    fixed: dict = {"seed": r.seed, "name": r.name, "variants": [str(p) for p in r.variants],
                   "runs_dir": str(runs_dir)}
    if s["split_seed"] is not None:
        fixed["split_seed"] = s["split_seed"]
    if r.fold is not None:
        fixed.update(folds=s["folds"], fold=r.fold)
    if r.settings is None:  # a union: several renderings, read from their folders
        fixed["from_strokes"] = False
    layers = [s["train"], (s["overrides"] or {}).get(r.variant, {}), (s["arms"] or {}).get(r.arm, {}), fixed]
    channels = next((layer["channels"] for layer in reversed(layers) if "channels" in layer), cfg["train"]["channels"])
    if r.settings is None and cfgmod.as_list(channels) != ["ink"]:
        raise cfgmod.ConfigError(f"{source}: study.union trains on rendered folders, which hold ink alone: set "
                                 "study.union: false to study channels other than ink")
    return cfgmod.train_config(cfg, layers, render=r.settings, source=source)


def check_made_as_planned(p: StudyPlan, source: str | Path) -> None:
    """Refuse a study whose run folders were made with other settings than it now asks for: a
    finished one would be reported under settings it was not trained with, and a stopped one would
    continue with a mix of both. Where the runs train (device, workers, paths...) may change."""
    changed = []
    for r in p.runs:
        folder = p.runs_dir / r.name
        if (folder / CONFIG).is_file():
            if diff := setting_differences(RunFolder(folder).config(), p.configs[r.name].to_dict()):
                changed.append((folder, diff))
    if changed:
        folder, diff = changed[0]
        what = "; ".join(f"{k} {a!r} where the study asks for {b!r}" for k, a, b in diff)
        _refuse(source, f"{folder} was trained with other settings ({what})", len(changed))


def check_same_data(p: StudyPlan, source: str | Path) -> None:
    """Refuse a study whose finished runs were trained on other data than it now reads (another raw
    folder, collected writers added, files changed, a variant rendered again from other strokes): their
    figures would be reported as this data's. Runs that recorded no identity are not checked."""
    raws: dict[tuple, dict] = {}  # each raw folder is hashed once, however many runs read it
    changed = []
    for r in p.runs:
        folder = RunFolder(p.runs_dir / r.name)
        if not folder.complete:  # a stopped run is checked when it continues (train)
            continue
        recorded, c = folder.data(), p.configs[r.name]
        if c.from_strokes and recorded.get("sha256"):
            key = (str(Path(c.raw_dir).resolve()), str(c.writers), tuple(c.extra_raw))
            if key not in raws:
                raws[key] = raw_identity(c.raw_dir, c.writers, c.extra_raw)
            now = raws[key]
            if not same_data(recorded, now):
                changed.append(f"{folder.path} was trained on {recorded['files']:,} stroke files in "
                               f"{recorded['raw_dir']} (content {recorded['sha256'][:12]}), the study reads "
                               f"{now['files']:,} in {now['raw_dir']} (content {now['sha256'][:12]})")
        elif not c.from_strokes and all(v.get("sha256") for v in recorded.get("variants") or [{}]):
            if not same_data(recorded, {"variants": [{"sha256": dataset_sha256(variant_info(v))} for v in c.variants]}):
                changed.append(f"{folder.path} was trained on variants rendered from other strokes than "
                               f"{', '.join(c.variants)} now hold")
    if changed:
        _refuse(source, changed[0], len(changed))


def _refuse(source: str | Path, first: str, count: int) -> None:
    others = f", and {count - 1} more of its runs differ" if count > 1 else ""
    raise cfgmod.ConfigError(f"{source}: {first}{others}; give the study another name, or move the old runs "
                             "away to train them again")


def _saved(path: Path) -> dict:
    """A saved score or evaluation, or ``{}`` where there is none or it cannot be read as one (it is
    then made again)."""
    try:
        saved = json.loads(path.read_text(encoding="utf-8"))
    except (FileNotFoundError, UnicodeDecodeError, ValueError):
        return {}
    return saved if isinstance(saved, dict) else {}


def scored_as_planned(saved: dict, runs_dir: Path, runs: list[str]) -> bool:
    """Whether a saved ensemble score is of these very runs as they are now: the same members, each
    the same finished training (a member trained again, or an ensemble given other members, is scored
    again), and kept with its errors (scores saved before they kept them are scored again)."""
    members = saved.get("members")
    if "errors" not in saved or not isinstance(members, list):
        return False
    recorded = [(Path(str(m.get("run"))).name, m.get("fingerprint")) if isinstance(m, dict) else None for m in members]
    return recorded == [(n, RunFolder(runs_dir / n).fingerprint()) for n in runs]


def evaluated_as_planned(saved: dict, run: Path, variant: Path) -> bool:
    """Whether a saved cross evaluation is of this very training on this very rendering of the variant."""
    return (saved.get("fingerprint") == RunFolder(run).fingerprint()
            and saved.get("variant_sha256") == dataset_sha256(variant_info(variant)))


def run_study(cfg: dict, log=print, source: str | Path = "the study") -> Path:
    """Do the whole study ``cfg`` describes; returns the report folder."""
    s, d = cfg["study"], cfg["dataset"]
    p = plan(cfg, source)  # bad settings fail here, before any download
    runs_dir = p.runs_dir
    check_made_as_planned(p, source)
    raw = Path(d["raw_dir"])
    if not raw.is_dir() or (raw / FETCH_IN_PROGRESS).exists() or not list_stroke_files(raw):
        log(f"{raw} is empty or half-fetched: fetching HOMUS {d['version']}")
        log(fetch(raw, d["version"], d["source"]).summary())
    for res in render_variants(raw, cfg["render"]["rendered_dir"], p.variants, jobs=cfg["render"]["jobs"],
                               writers=parse_writers(d["writers"]), log=log):
        log(f"{res.path}: {res.status}")
    device = next(iter(p.configs.values())).device
    check_same_data(p, source)
    jobs = []
    for r in p.runs:
        folder = runs_dir / r.name
        if (folder / "metrics.json").exists():
            log(f"{folder}: finished, not trained again")
        else:
            jobs.append(Job(p.configs[r.name], resume=folder.exists()))
    train_jobs(jobs, parallel=s["parallel"], ray=s["ray"], run_cpus=s["run_cpus"], run_gpus=s["run_gpus"], log=log)
    for r in p.runs if len(p.variants) > 1 else []:  # every model on every variant's test split: the cross matrix
        folder = runs_dir / r.name
        for v in p.variants:
            variant = Path(cfg["render"]["rendered_dir"]) / v.name
            if not evaluated_as_planned(_saved(folder / f"eval-{v.name}.json"), folder, variant):
                m = evaluate_run(folder, variant, device=device)
                log(f"{r.name} on {v.name}: test accuracy {m['test_accuracy']:.4f}")
    scored = []
    for e in p.ensembles:
        out = runs_dir / e.file
        m = _saved(out)
        if not scored_as_planned(m, runs_dir, e.runs):
            m = evaluate_ensemble([runs_dir / n for n in e.runs], out, device=device)
            log(f"ensemble {e.name} on {e.variant}{'' if e.fold is None else f' fold {e.fold}'}: "
                f"test accuracy {m['test_accuracy']:.4f}")
        scored.append({"name": e.name, "variant": e.variant, "fold": e.fold, "runs": e.runs,
                       "test_accuracy": m["test_accuracy"], "n_test": m["n_test"], "file": out})
    out = Path(s["reports_dir"]) / s["name"]
    group_by = ["arm", "variants"] if s["arms"] else ["variants"]
    if s["arms"] and len(p.variants) == 1 and not any(r.variant == "union" for r in p.runs):
        group_by = ["arm"]
    write_report([runs_dir / r.name for r in p.runs], out, title=f"study {s['name']}",
                 variants=[v.name for v in p.variants], settings=cfg, command=f"homus run --config {source}",
                 group_by=group_by, extra={r.name: {"arm": r.arm or "-"} for r in p.runs}, ensembles=scored,
                 raw_dirs=[raw, *map(Path, cfgmod.as_list(d["extra_raw"]))])
    return out
