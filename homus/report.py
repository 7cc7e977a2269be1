"""Tables and charts over finished runs: the study report and ``homus compare``.

Runs are grouped by the settings that differ between them (seeds aside), so several seeds of
one setting give a mean and a spread. Writes ``report.md``, ``results.csv``, ``comparison.png``
and, when runs were evaluated on several variants, ``matrix.png``.

A report is composed in a hidden staging folder inside ``--out`` and then moved into place, file by
file, ``report.md`` last: a report killed half-way leaves no ``report.md`` over pictures of other
runs, and a picture an earlier report drew that this one does not (``matrix.png``) is removed.
"""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import statistics
import textwrap
import time
from pathlib import Path

import numpy as np
import yaml

from classifier.plots import plot_confusion_matrix, plt, save_figure, tidy, tile_grid
from classifier.runfolder import RunError, RunFolder
from classifier.settings import learned_settings
from classifier.splits import split_seed_of
from homus_render.atomic import is_stale, write_bytes, write_text
from homus_render.errors import PathError, not_a_folder, user_os_error
from homus_render.strokes import parse_file
from homus_render.variants import read_variant_info

#: Every file a report may hold, in the order they are moved into place: what describes the rest last.
REPORT_FILES = ("results.csv", "comparison.png", "matrix.png", "confusion.png", "errors.png", "recall.png",
                "summary.json", "report.md")
IGNORED = {"name", "runs_dir", "seed", "split_seed", "fold", "device", "workers", "threads", "amp", "compile"}
#: Settings of training from strokes: shown only for runs that did.
STROKE_ONLY = {"from_strokes", "raw_dir", "writers", "render", "strokes"}


def _settings_or_none(variant: str) -> dict:
    """A variant's render settings, or none when its folder has gone since the run (the report still
    lists the run)."""
    try:
        return read_variant_info(variant)["settings"]
    except ValueError:
        return {}


def load_run(run: Path) -> dict:
    """A finished run's metrics, settings (train settings plus the variants' render settings) and
    cross evaluations."""
    folder = RunFolder(run)
    metrics, cfg = folder.metrics(), folder.config()
    strokes = bool(cfg.get("from_strokes"))
    settings = {k: v for k, v in cfg.items() if k not in IGNORED and k not in STROKE_ONLY and k != "warp"}
    settings.update({f"warp.{k}": v for k, v in cfg["warp"].items()})
    settings["from_strokes"] = strokes  # said either way: beside a run from strokes, False is a difference
    if strokes:  # the stroke settings matter; the variant folders it was not trained on do not
        settings.update({f"strokes.{k}": v for k, v in cfg["strokes"].items()})
        if "size" not in (cfg.get("channels") or ["ink"]):  # the size jitter moves no pixel of these runs
            settings.pop("strokes.size", None)
    settings["variants"] = "+".join(metrics["variants"])
    if strokes:
        renders = [cfg["render"]]
    else:
        renders = [_settings_or_none(v) for v in cfg["variants"]]
    for key in sorted({k for r in renders for k in r}):
        values = list(dict.fromkeys(str(r.get(key)) for r in renders))  # one value, or each variant's
        settings[f"render.{key}"] = "/".join(values)
    evals = folder.evaluations()
    # what makes the run's model what it is, data included: two runs alike in all of it are one model twice
    recipe = (json.dumps(learned_settings(cfg), sort_keys=True, default=str), folder.data().get("sha256"))
    return {"run": run, "name": run.name, "seed": cfg.get("seed"), "recipe": recipe,
            "fold": cfg["fold"] if cfg["folds"] else None,
            "split_seed": split_seed_of(cfg.get("seed"), cfg.get("split_seed")), "metrics": metrics,
            "settings": settings, "evals": evals}


def differing(runs: list[dict]) -> list[str]:
    keys = sorted({k for r in runs for k in r["settings"]}, key=lambda k: (k != "variants", k))
    return [k for k in keys if len({json.dumps(r["settings"].get(k)) for r in runs}) > 1]


def _fmt(values: list[float]) -> str:
    mean = statistics.fmean(values)
    return f"{mean:.2%} ± {statistics.stdev(values):.2%}" if len(values) > 1 else f"{mean:.2%}"


def summarize(runs: list[dict], group_by: list[str]) -> list[dict]:
    """One row per group of runs with equal ``group_by`` settings, sorted by mean test accuracy."""
    groups: dict[tuple, list[dict]] = {}
    for r in runs:
        groups.setdefault(tuple(str(r["settings"].get(k)) for k in group_by), []).append(r)
    rows = []
    for key, members in groups.items():
        seen: dict[tuple, str] = {}
        for m in members:  # one recipe trained twice is no second seed: it would read as a spread of 0
            if (twin := seen.setdefault(m["recipe"], m["name"])) != m["name"]:
                raise RunError(f"runs {twin} and {m['name']} have the same settings and seed {m['seed']}: one "
                               "model trained twice, which the report would count as two seeds; report one of them")
        acc = [m["metrics"]["test_accuracy"] for m in members]
        folds = fold_figures([(m["fold"], m["metrics"]["test_accuracy"], m["metrics"]["n_test"]) for m in members])
        rows.append({"group": " · ".join(key) or members[0]["name"], "settings": dict(zip(group_by, key, strict=True)),
                     "runs": [m["name"] for m in members], "seeds": [m["seed"] for m in members],
                     "accuracies": acc, "mean": statistics.fmean(acc),
                     "std": statistics.stdev(acc) if len(acc) > 1 else 0.0,
                     "macro_f1": statistics.fmean(m["metrics"]["macro_f1"] for m in members),
                     "minutes": statistics.fmean(m["metrics"]["train_seconds"] / 60 for m in members),
                     "evals": {v: [m["evals"][v] for m in members if v in m["evals"]]
                               for v in sorted({v for m in members for v in m["evals"]})}, **folds})
    return sorted(rows, key=lambda r: -r["mean"])


def fold_figures(results: list[tuple[int | None, float, int]]) -> dict:
    """``(fold, test accuracy, test images)`` of a group's runs -> the cross-validation figures:
    each fold's accuracy (the mean over its seeds), their mean and spread over folds, and the pooled
    accuracy (every test image of every run counted once). Empty when the runs are not folds."""
    if not results or any(fold is None for fold, _, _ in results):
        return {}
    by_fold: dict[int, list[float]] = {}
    for fold, acc, _ in results:
        by_fold.setdefault(fold, []).append(acc)
    means = [statistics.fmean(by_fold[f]) for f in sorted(by_fold)]
    return {"by_fold": {f: statistics.fmean(by_fold[f]) for f in sorted(by_fold)},
            "fold_mean": statistics.fmean(means), "fold_std": statistics.stdev(means) if len(means) > 1 else 0.0,
            "pooled": sum(a * n for _, a, n in results) / sum(n for _, _, n in results)}


def ensemble_rows(scored: list[dict]) -> list[dict]:
    """One row per ensemble and variant: its accuracy (on one split, or over folds as
    :func:`fold_figures`), best first."""
    groups: dict[tuple[str, str], list[dict]] = {}
    for e in scored:
        groups.setdefault((e["name"], e["variant"]), []).append(e)
    rows = []
    for (name, variant), es in groups.items():
        acc = [e["test_accuracy"] for e in es]
        rows.append({"name": name, "variant": variant, "members": len(es[0]["runs"]), "accuracies": acc,
                     "mean": statistics.fmean(acc),
                     **fold_figures([(e["fold"], e["test_accuracy"], e["n_test"]) for e in es])})
    return sorted(rows, key=lambda r: -r.get("pooled", r["mean"]))


def _bar_chart(rows: list[dict], path: Path, title: str) -> None:
    names = ["\n".join(textwrap.wrap(r["group"], 28)) for r in rows]  # long settings: lines, not one slant
    lines = max(n.count("\n") + 1 for n in names)
    fig, ax = plt.subplots(figsize=(max(5, (1.2 if lines == 1 else 2.4) * len(rows) + 2), 4.5 + 0.2 * lines))
    means = [100 * r["mean"] for r in rows]
    ax.bar(names, means, yerr=[100 * r["std"] for r in rows], capsize=5, color="#4477aa")
    for i, (mean, r) in enumerate(zip(means, rows, strict=True)):  # above the error bar, not on it
        ax.text(i, mean + 100 * r["std"] + 0.3, f"{mean:.2f}", ha="center", va="bottom", fontsize=8)
    low = min(100 * (r["mean"] - r["std"]) for r in rows)
    ax.set_ylim(max(0, low - (100 - low) * 0.5 - 1), 100)
    ax.set_ylabel("test accuracy (%), mean ± std over seeds")
    ax.set_title(title)
    if lines == 1:
        plt.setp(ax.get_xticklabels(), rotation=20, ha="right")
    tidy(fig)
    save_figure(fig, path)


def _matrix_chart(rows: list[dict], tests: list[str], path: Path) -> None:
    m = np.array([[100 * statistics.fmean(r["evals"][t]) if r["evals"].get(t) else np.nan for t in tests]
                  for r in rows])
    fig, ax = plt.subplots(figsize=(1.3 * len(tests) + 3, 0.6 * len(rows) + 2))
    im = ax.imshow(m, cmap="viridis")
    ax.set_xticks(range(len(tests)), tests, rotation=30, ha="right")
    ax.set_yticks(range(len(rows)), [r["group"] for r in rows])
    ax.set_xlabel("tested on")
    ax.set_ylabel("trained on")
    for i, j in np.ndindex(m.shape):
        if not np.isnan(m[i, j]):
            ax.text(j, i, f"{m[i, j]:.1f}", ha="center", va="center", color="w" if m[i, j] < np.nanmax(m) - 5 else "k")
    fig.colorbar(im, label="test accuracy (%)")
    ax.set_title("train variant x test variant")
    tidy(fig)
    save_figure(fig, path)


#: How many of the final ensemble's most confident errors the report draws.
CONFIDENT_ERRORS = 30


def error_analysis(scored: list[dict], rows: list[dict], raw_dirs: list[Path], out: Path) -> list[str]:
    """Where the best ensemble (first of ``rows``) errs, over every fold it was scored on: the pooled
    confusion matrix, its most confident errors drawn from their strokes, and each class's recall
    with its spread over folds. Writes ``confusion.png``, ``errors.png`` and ``recall.png`` into
    ``out``; returns the report's lines (none for scores saved without their errors)."""
    best = rows[0]
    scores = [json.loads(Path(e["file"]).read_text(encoding="utf-8")) for e in scored
              if e["name"] == best["name"] and e["variant"] == best["variant"] and e.get("file")]
    if not scores or any("errors" not in m for m in scores):
        return []
    classes = scores[0]["classes"]
    counts = np.sum([np.asarray(m["confusion"]) for m in scores], axis=0)
    where = f"{len(scores)} fold{'s' if len(scores) > 1 else ''}" if best.get("by_fold") else "its test split"
    plot_confusion_matrix(counts, classes, out / "confusion.png",
                          f"{best['name']} on {best['variant']}: {int(np.trace(counts))} of {int(counts.sum())} "
                          f"test images right, pooled over {where} (row-normalised)")
    errors = sorted((e for m in scores for e in m["errors"]), key=lambda e: -e["confidence"])
    shown = errors[:CONFIDENT_ERRORS]
    _error_sheet(shown, raw_dirs, out / "errors.png", len(errors))
    recalls = {c: [m["per_class"][c]["recall"] for m in scores] for c in classes}
    order = sorted(classes, key=lambda c: statistics.fmean(recalls[c]))
    _recall_chart(order, recalls, out / "recall.png")
    spread = "mean ± std over folds" if len(scores) > 1 else "on the test split"
    md = [f"## Where {best['name']} errs", "",
          f"The ensemble {best['name']} on {best['variant']}, over {where}: {len(errors)} of {int(counts.sum())} "
          "test images misread.", "",
          "![confusion, pooled](confusion.png)", "",
          f"Its {len(shown)} most confident errors, each drawn from its strokes (colour: the order of the "
          "strokes, a dot where each starts), captioned with the true class, the ensemble's answer and its "
          "probability:", "", "![most confident errors](errors.png)", "",
          f"Recall per class ({spread}), worst first:", "", "![recall per class](recall.png)", "",
          "| class | recall | test images |", "|---|---|---|"]
    for c in order:
        r = recalls[c]
        cell = f"{statistics.fmean(r):.2%}" + (f" ± {statistics.stdev(r):.2%}" if len(r) > 1 else "")
        md.append(f"| {c} | {cell} | {sum(m['per_class'][c]['support'] for m in scores)} |")
    return md + [""]


def _strokes_of(sample_id: str, raw_dirs: list[Path]):
    """A sample's strokes from the first raw folder that has its file, or None (the data has moved)."""
    writer = sample_id.rsplit("-", 1)[0]
    for d in raw_dirs:
        f = Path(d) / writer / f"{sample_id}.txt"
        if f.is_file():
            return parse_file(f).strokes
    return None


def _error_sheet(errors: list[dict], raw_dirs: list[Path], path: Path, total: int) -> None:
    fig, axes = tile_grid(len(errors), 6, (2.1, 2.4))
    for ax, e in zip(axes.flat, errors, strict=False):
        strokes = _strokes_of(e["id"], raw_dirs)
        if strokes is None:
            ax.text(0.5, 0.5, "strokes not found", ha="center", va="center", fontsize=7, transform=ax.transAxes)
        else:
            colours = plt.cm.viridis(np.linspace(0, 0.85, max(1, len(strokes))))
            for stroke, colour in zip(strokes, colours, strict=True):
                ax.plot(stroke[:, 0], stroke[:, 1], color=colour, lw=1.6, solid_capstyle="round")
                ax.plot(stroke[0, 0], stroke[0, 1], "o", color=colour, ms=3)
            ax.set_aspect("equal")
            ax.invert_yaxis()  # tablet rows grow downwards
        ax.set_title(f"{e['id']}\n{e['target']} → {e['pred']} ({e['confidence']:.2f})", fontsize=7,
                     color="darkred")
    if not errors:
        axes[0, 0].set_title("no test image was misread", fontsize=9)
    fig.suptitle(f"the {len(errors)} most confident of {total} errors", fontsize=10)
    tidy(fig)
    save_figure(fig, path)


def _recall_chart(order: list[str], recalls: dict[str, list[float]], path: Path) -> None:
    fig, ax = plt.subplots(figsize=(7, 0.28 * len(order) + 1.5))
    means = [100 * statistics.fmean(recalls[c]) for c in order]
    stds = [100 * statistics.stdev(recalls[c]) if len(recalls[c]) > 1 else 0.0 for c in order]
    ax.barh(range(len(order)), means, xerr=stds, capsize=2, color="#4477aa")
    ax.set_yticks(range(len(order)), order, fontsize=7)
    ax.set_xlim(max(0, min(m - s for m, s in zip(means, stds, strict=True)) - 5), 100.5)
    ax.set_xlabel("recall (%)" + (", mean ± std over folds" if any(stds) else ""))
    ax.set_title("recall per class, worst first")
    tidy(fig)
    save_figure(fig, path)


def write_report(run_dirs: list[Path], out: Path, title: str, **options) -> dict:
    """Compose the report of ``run_dirs`` (:func:`compose_report`, which takes ``options``) in a
    hidden staging folder inside ``out``, then move its files into place, ``report.md`` last."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise not_a_folder(out)
    made = not out.exists()  # removed again if the report fails before any file is in it
    for old in out.glob(".report.partial-*"):  # what a killed report left
        if is_stale(old.name):
            shutil.rmtree(old, ignore_errors=True)
    staging = out / f".report.partial-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    try:
        staging.mkdir(parents=True)
        try:
            result = compose_report(run_dirs, staging, title, **options)
        except OSError as e:  # name the file the user will look for, not its staging copy
            err = user_os_error(e)
            if err is None or err.filename is None or Path(err.filename).parent != staging:
                raise
            target = str(out / Path(err.filename).name)
            named = PathError(err.errno, err.args[1].replace(str(err.filename), target, 1))
            named.filename = target
            raise named from None
        unknown = sorted(set(os.listdir(staging)) - set(REPORT_FILES))
        assert not unknown, f"report files missing from REPORT_FILES: {unknown}"
        for name in ("report.md", "summary.json"):  # nothing describes a folder while it changes
            (out / name).unlink(missing_ok=True)
        for name in REPORT_FILES:
            if (staging / name).exists():
                os.replace(staging / name, out / name)
            else:
                (out / name).unlink(missing_ok=True)  # an earlier report's, of other runs
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        if made and out.is_dir() and not any(out.iterdir()):
            out.rmdir()
    return result


def compose_report(run_dirs: list[Path], out: Path, title: str, variants: list[str] | None = None,
                   settings: dict | None = None, command: str = "", group_by: list[str] | None = None,
                   extra: dict[str, dict] | None = None, ensembles: list[dict] | None = None,
                   raw_dirs: list[Path] | None = None) -> dict:
    """Write ``report.md``, ``results.csv``, ``comparison.png`` (and ``matrix.png``) into ``out``.
    Runs are grouped by ``group_by`` (default: every setting that differs, seeds aside); ``extra``
    adds settings by run name (a study's arm); ``ensembles``: scored ensembles (name, variant, fold,
    runs, test_accuracy, n_test, and the ``file`` of the score, whose errors the report draws from the
    strokes in ``raw_dirs``). A cross-validation's rows give the mean ± std over folds and the
    pooled accuracy. ``summary.json`` holds the figures for machines."""
    runs = [load_run(Path(r)) for r in run_dirs]
    for r in runs:
        r["settings"].update((extra or {}).get(r["name"], {}))
    if not runs:
        raise RunError("no runs to report on")
    splits: dict[tuple, set[str]] = {}  # runs of one split seed (and fold) must share one split
    for r in runs:
        splits.setdefault((r["split_seed"], r["fold"]), set()).add(json.dumps(RunFolder(r["run"]).split(),
                                                                              sort_keys=True))
    group_by = group_by or [k for k in differing(runs) if k not in IGNORED]
    rows = summarize(runs, group_by)
    tests = variants or sorted({v for r in runs for v in r["evals"]})

    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["run", "seed", *group_by, "test_variant", "test_accuracy", "macro_f1", "val_accuracy", "n_test",
                "train_seconds"])
    for r in sorted(runs, key=lambda r: r["name"]):
        m = r["metrics"]
        own = [r["settings"].get(k) for k in group_by]
        w.writerow([r["name"], r["seed"], *own, "own", f"{m['test_accuracy']:.6f}", f"{m['macro_f1']:.6f}",
                    f"{m['val_accuracy']:.6f}", m["n_test"], m["train_seconds"]])
        for v, acc in sorted(r["evals"].items()):
            w.writerow([r["name"], r["seed"], *own, v, f"{acc:.6f}", "", "", "", ""])
    write_bytes(out / "results.csv", buf.getvalue().encode())
    _bar_chart(rows, out / "comparison.png", title)
    has_matrix = bool(tests) and any(r["evals"] for r in rows)
    if has_matrix:
        _matrix_chart(rows, tests, out / "matrix.png")

    md = [f"# {title}", "", f"{len(runs)} runs, {time.strftime('%Y-%m-%d')}." + (f" Command: `{command}`" if command
                                                                                 else ""), ""]
    if any(len(found) > 1 for found in splits.values()):
        md += ["**Warning: runs with the same split seed (and fold) have different splits; the figures are not "
               "comparable.**", ""]
    setting = "trained on" if group_by == ["variants"] else "setting"
    folded = any("pooled" in r for r in rows)
    if folded:
        n = max(len(r["by_fold"]) for r in rows if "by_fold" in r)
        kind = runs[0]["metrics"]["split"]
        who = "writer" if kind == "writer" else "sample"
        md += [f"{n}-fold {kind} cross-validation: every {who} is tested exactly once. Mean ± std over the "
               "folds (each fold: the mean over its seeds), and the pooled accuracy over every test image of "
               "every run.", "",
               f"| rank | {setting} | mean ± std over folds | pooled | macro F1 | runs | train min |",
               "|---|---|---|---|---|---|---|"]
        for i, r in enumerate(rows, 1):
            md.append(f"| {i} | {r['group']} | {r['fold_mean']:.2%} ± {r['fold_std']:.2%} | {r['pooled']:.2%} | "
                      f"{r['macro_f1']:.4f} | {len(r['accuracies'])} | {r['minutes']:.1f} |")
    else:
        md += [f"| rank | {setting} | test accuracy | macro F1 | seeds | train min |", "|---|---|---|---|---|---|"]
        for i, r in enumerate(rows, 1):
            md.append(f"| {i} | {r['group']} | {_fmt(r['accuracies'])} | {r['macro_f1']:.4f} | "
                      f"{len(r['accuracies'])} | {r['minutes']:.1f} |")
    md += ["", "![comparison](comparison.png)", ""]
    erows = ensemble_rows(ensembles or [])
    if erows:
        md += ["## Ensembles", "", "Each ensemble's models vote on their shared test split (class probabilities "
               "averaged, each model reading the input it was trained on).", ""]
        if any("pooled" in e for e in erows):
            md += ["| ensemble | on | models | mean ± std over folds | pooled |", "|---|---|---|---|---|"]
            md += [f"| {e['name']} | {e['variant']} | {e['members']} | {e['fold_mean']:.2%} ± {e['fold_std']:.2%} | "
                   f"{e['pooled']:.2%} |" for e in erows]
        else:
            md += ["| ensemble | on | models | test accuracy |", "|---|---|---|---|"]
            md += [f"| {e['name']} | {e['variant']} | {e['members']} | {e['mean']:.2%} |" for e in erows]
        md.append("")
        md += error_analysis(ensembles, erows, raw_dirs or [], out)
    if has_matrix:
        md += ["## Train variant x test variant", "", "Mean test accuracy over seeds; rows: what the model was "
               "trained on, columns: the variant whose test split it read.", "",
               "| trained on | " + " | ".join(tests) + " |", "|---|" + "---|" * len(tests)]
        for r in rows:
            cells = [f"{statistics.fmean(r['evals'][t]):.2%}" if r["evals"].get(t) else "–" for t in tests]
            md.append(f"| {r['group']} | " + " | ".join(cells) + " |")
        md += ["", "![matrix](matrix.png)", ""]
    split = runs[0]["metrics"]["split"]
    shared = "of one split seed and fold" if any(r["fold"] is not None for r in runs) else "of one split seed"
    md += ["## Settings", "", f"Split: `{split}` (the same split for every run {shared}). "
           f"Rows group the runs by {', '.join(f'`{k}`' for k in group_by) or 'nothing'}.", ""]
    if settings:
        md += ["```yaml", yaml.safe_dump(settings, sort_keys=False).rstrip(), "```", ""]
    write_text(out / "report.md", "\n".join(md))
    summary = {"rows": [{k: v for k, v in r.items() if k != "evals"} for r in rows], "ensembles": erows}
    write_text(out / "summary.json", json.dumps(summary, indent=1, default=str))
    return {"rows": rows, "runs": runs, "group_by": group_by, "ensembles": erows}
