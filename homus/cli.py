"""``homus``: fetch, render, train, evaluate, predict. Each command reads ``--config`` (default
``./pipeline.yaml``) and its flags override the file."""

from __future__ import annotations

import json
import re
import signal
import sys
import threading
from pathlib import Path

import click

from classifier.settings import AMP_MODES, ARCHS, DEVICES, OPTIMIZERS, RASTERS, SCHEDULES, STEMS, WARP_KEYS, WHERE_KEYS
from classifier.splits import KINDS
from homus_render.channels import CHANNELS
from homus_render.distort import StrokeAugment
from homus_render.normalize import READS
from homus_render.render import FITS

from . import config as cfgmod
from .options import a_path, a_text, note_unfinished, once, pick, with_config

STROKE_KEYS = tuple(StrokeAugment.__dataclass_fields__)

def fail(message: str) -> None:
    click.secho(f"error: {message}", fg="red", err=True)
    sys.exit(1)


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised in the main thread like Ctrl-C, so that every ``finally`` runs: staging
    folders and temporaries are removed and worker pools are shut down before the process ends."""


#: Set when SIGTERM arrived: a library that catches the Terminated it raised and raises a plain
#: KeyboardInterrupt in its place (Ray's wait does) still ends the command as SIGTERM does.
_sigterm = threading.Event()


def _on_sigterm(signum, frame) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # one is enough: let the clean-up finish
    _sigterm.set()
    raise Terminated()


class UsageLine(click.UsageError):
    """A usage error (a bad flag or argument) shown as one line: the command, what is wrong and where
    to read more, in place of click's usage block. The exit code stays click's 2."""

    def __init__(self, message: str, ctx: click.Context | None, where: str) -> None:
        super().__init__(message, ctx)
        self.where = ctx.command_path if ctx else where

    def show(self, file=None) -> None:
        what = self.format_message().rstrip(".")
        click.secho(f"error: {self.where}: {what}; see '{self.where} --help'", fg="red", err=True)


def one_line(e: click.UsageError, where: str) -> UsageLine:
    """``e`` as a :class:`UsageLine`; ``where`` names the command when click's parser gave no context."""
    return e if isinstance(e, UsageLine) else UsageLine(e.format_message(), e.ctx, where)


class HomusGroup(click.Group):
    """The one place that reports expected failures: a :class:`HomusError` (or an OS error a user
    causes: full disk, read-only folder, missing path) becomes one line on stderr and exit code 1;
    a setting that cannot be (:class:`SettingsError`, from a flag or a settings file) exits with 2,
    as click's own usage errors do.
    Anything else is a bug in homus and keeps its traceback. SIGTERM stops a command as Ctrl-C
    does, cleaning up on the way (exit code 143)."""

    def make_context(self, info_name, args, parent=None, **extra) -> click.Context:
        try:
            return super().make_context(info_name, args, parent=parent, **extra)
        except click.UsageError as e:
            raise one_line(e, info_name or "homus") from None

    def invoke(self, ctx: click.Context):
        from homus_render.errors import SettingsError, describe

        main_thread = threading.current_thread() is threading.main_thread()
        previous = signal.signal(signal.SIGTERM, _on_sigterm) if main_thread else None
        _sigterm.clear()
        try:
            try:
                return super().invoke(ctx)
            except click.UsageError as e:
                raise one_line(e, " ".join(filter(None, (ctx.command_path, ctx.invoked_subcommand)))) from None
            except (click.exceptions.Exit, click.ClickException, click.exceptions.Abort):
                raise
            except Exception as e:
                if _sigterm.is_set():  # a consequence of the stop: loader workers the same SIGTERM killed
                    raise Terminated() from None
                line = describe(e)
                if line is None:
                    raise
                click.secho(f"error: {line}", fg="red", err=True)
                ctx.exit(2 if isinstance(e, SettingsError) else 1)  # a setting that cannot be: a usage error
        except KeyboardInterrupt as e:  # also SIGTERM arriving while an error above was being reported
            if not (isinstance(e, Terminated) or _sigterm.is_set()):
                raise  # Ctrl-C: click's "Aborted!"
            again = ("`homus train --resume RUN` continues a run from its last finished epoch (one stopped "
                     "before its first has no folder left: run the command again)"
                     if ctx.invoked_subcommand == "train" else "run the command again")
            click.secho(f"error: stopped by SIGTERM; what was half-made is removed; {again}", fg="red", err=True)
            ctx.exit(143)
        finally:
            if main_thread:
                signal.signal(signal.SIGTERM, previous)


@click.group("homus", cls=HomusGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="homus")
def main() -> None:
    """homus: HOMUS handwritten music symbols, from raw pen strokes to trained classifiers."""


@main.command()
@click.option("--version", "version", type=click.Choice(["v2", "v1"]), help="Dataset release.")
@click.option("--source", help="Local zip, folder or URL (else $HOMUS_SOURCE, else the official address).")
@click.option("--raw-dir", type=click.Path(file_okay=False), help="Where the stroke files go.")
@with_config
def fetch(cfg, version, source, raw_dir) -> None:
    """Download or copy the HOMUS dataset into RAW_DIR/<writer>/<writer>-<n>.txt."""
    from tqdm import tqdm

    from homus_render.fetch import fetch as do_fetch

    d = cfg["dataset"]
    bar = None

    def progress(done, total):
        nonlocal bar
        if bar is None:
            bar = tqdm(total=total, unit="B", unit_scale=True, desc="download")
        bar.update(done - bar.n)

    try:
        report = do_fetch(pick(raw_dir, d["raw_dir"]), pick(version, d["version"]),
                          pick(source, d["source"]), progress=progress)
    finally:
        if bar is not None:
            bar.close()
    click.echo(report.summary())


def render_settings(cfg: dict, thickness, size, fit, margin, antialias, staff_lines) -> list:
    """Every combination of thicknesses and sizes, with the other settings, as RenderSettings."""
    from homus_render.render import RenderSettings

    r = cfg["render"]
    thicknesses = cfgmod.as_list(pick(thickness, r["thickness"]))
    sizes = cfgmod.as_list(pick(size, r["size"]))
    for key, values in (("thickness", thicknesses), ("size", sizes)):
        if not values or any(v is None or v == "" for v in values):
            raise click.UsageError(f"{key}: give at least one value, e.g. --{key} "
                                   f"{'3 or 1,2,3' if key == 'thickness' else '96 or 64,96'}")
    out = []
    for t in thicknesses:
        if isinstance(t, bool) or not (isinstance(t, int) or re.fullmatch(r"\s*[0-9]+\s*", str(t))):
            raise click.UsageError(f"thickness {t!r}: expected whole pixels like 3 or 1,2,3")
        for size_value in sizes:
            w, h = cfgmod.parse_size(size_value)
            try:
                out.append(RenderSettings(
                    thickness=int(t), width=w, height=h, fit=pick(fit, r["fit"]),
                    margin=pick(margin, r["margin"]), antialias=pick(antialias, r["antialias"]),
                    staff_lines=pick(staff_lines, r["staff_lines"]), staff_spacing=r["staff_spacing"],
                    staff_offset=r["staff_offset"]))
            except ValueError as e:
                raise click.UsageError(f"render settings: {e}") from None
    return out


@main.command()
@click.option("--thickness", help="Stroke width(s) in output pixels, e.g. 3 or 1,2,3.")
@click.option("--size", help="Canvas size(s), e.g. 96, 64,96 or 128x64.")
@click.option("--fit", type=click.Choice(FITS), help="Fill the canvas, or keep tablet scale.")
@click.option("--margin", type=int, help="Blank pixels on every side.")
@click.option("--antialias/--no-antialias", default=None, help="Smooth stroke edges (default on).")
@click.option("--staff-lines/--no-staff-lines", default=None, help="Draw five staff lines behind.")
@click.option("--raw-dir", type=click.Path(file_okay=False))
@click.option("--writers", help="Only these writers, e.g. 1-5,9 (default: all).")
@click.option("--extra-raw", multiple=True, type=click.Path(file_okay=False),
              help="A folder of collected samples (homus serve --collect-dir) added as more writers; repeatable.")
@click.option("--rendered-dir", type=click.Path(file_okay=False))
@click.option("--jobs", type=int, help="Worker processes (-1: all cores).")
@click.option("--force", is_flag=True,
              help="Render again even when up to date, reading every raw file (not the stroke index).")
@click.option("--skip-invalid", is_flag=True, help="Render the good samples, list the bad ones.")
@with_config
def render(cfg, thickness, size, fit, margin, antialias, staff_lines, raw_dir, writers, extra_raw, rendered_dir,
           jobs, force, skip_invalid) -> None:
    """Render every raw sample into one variant folder per thickness x size."""
    from tqdm import tqdm

    from homus_render.dataset import parse_writers
    from homus_render.variants import render_variants

    variants = render_settings(cfg, thickness, size, fit, margin, antialias, staff_lines)
    try:
        subset = parse_writers(pick(writers, cfg["dataset"]["writers"]))
    except ValueError as e:
        raise click.UsageError(str(e)) from None
    raw = Path(pick(raw_dir, cfg["dataset"]["raw_dir"]))
    out = Path(pick(rendered_dir, cfg["render"]["rendered_dir"]))
    with tqdm(unit="sample", desc="render", disable=None) as bar:
        results = render_variants(raw, out, variants, jobs=pick(jobs, cfg["render"]["jobs"]),
                                  force=force, skip_invalid=skip_invalid, writers=subset,
                                  extra=list(extra_raw) or cfgmod.as_list(cfg["dataset"]["extra_raw"]),
                                  progress=bar.update, log=bar.write)
    for res in results:
        if res.skipped:
            click.secho(f"{res.path}: skipped {len(res.skipped)} bad sample(s), listed in "
                        f"{res.path / 'skipped.csv'}:", fg="yellow", err=True)
            for _, reason in res.skipped:
                click.echo(f"  {reason}", err=True)
        click.echo(f"{res.path}  {res.n_images:,} images  ({res.status})")


TRAIN_FLAGS = [
    click.option("--variant", "variants", multiple=True, help="Variant folder; repeat to train on a union."),
    click.option("--arch", type=click.Choice(ARCHS)),
    click.option("--stem", type=click.Choice(STEMS), help="Layers before the first block: imagenet (7x7 conv, "
                 "stride 2, max pool), small (3x3 conv, stride 1, max pool), cifar (3x3 conv alone)."),
    click.option("--weights", help="none | imagenet | path to a homus checkpoint to fine-tune."),
    click.option("--split", type=click.Choice(KINDS), help="Hold out writers, or samples."),
    click.option("--folds", type=int, help="k-fold cross-validation of the --split's writers or samples "
                 "(0: one split)."),
    click.option("--fold", type=int, help="The fold this run tests on (0 to folds-1)."),
    click.option("--seed", type=int, help="Seeds the model, the data order and (unless --split-seed) the split."),
    click.option("--split-seed", type=int, help="Seed of the split alone (default: --seed)."),
    click.option("--epochs", type=int),
    click.option("--batch-size", type=int),
    click.option("--lr", type=float, help="Peak learning rate."),
    click.option("--optimizer", type=click.Choice(OPTIMIZERS)),
    click.option("--momentum", type=float, help="SGD momentum, from 0 to below 1."),
    click.option("--schedule", type=click.Choice(SCHEDULES)),
    click.option("--weight-decay", type=float),
    click.option("--label-smoothing", type=float, help="From 0 to below 1."),
    click.option("--mixup-alpha", type=float, help="Blend each training batch with itself rolled by one "
                 "(mixup), weight ~ Beta(a, a), e.g. 0.2; 0: off."),
    click.option("--cutmix-alpha", type=float, help="Paste a box from the rolled batch (cutmix), area ~ "
                 "Beta(a, a), e.g. 1.0; 0: off. With --mixup-alpha too: one of the two per batch."),
    click.option("--ema", type=float, help="Decay of a moving average of the weights, updated every step, that "
                 "validation, best.pt and the test use (e.g. 0.999; 0: off)."),
    click.option("--no-augment", is_flag=True, default=None,
                 help="No augmentation at all (image warps, stroke distortions, mixup and cutmix off), "
                      "but for what a flag of its own sets."),
    click.option("--from-strokes/--from-images", default=None,
                 help="Draw training images afresh from the raw strokes every epoch, or read --variant folders."),
    click.option("--raw-dir", type=click.Path(file_okay=False), help="Stroke files (--from-strokes)."),
    click.option("--writers", help="Only these writers, e.g. 1-5 (--from-strokes)."),
    click.option("--extra-raw", multiple=True, type=click.Path(file_okay=False),
                 help="A folder of collected samples added as more writers (--from-strokes); repeatable."),
    click.option("--thickness", type=int, help="Pen width in pixels (--from-strokes)."),
    click.option("--size", help="Image size, e.g. 64 or 96x64 (--from-strokes)."),
    *[click.option(f"--stroke-{name}", type=float, help=text) for name, text in [  # one per StrokeAugment field
        ("thickness", "Pen width jitter, +- pixels."), ("scale", "Shrink by up to this fraction."),
        ("aspect", "Aspect jitter, exp(+-v)."), ("rotate", "Rotation, +- degrees."), ("shear", "Shear, +- degrees."),
        ("translate", "Shift, fraction of the canvas."), ("elastic", "Smooth bending, fraction of the symbol."),
        ("jitter", "Per-point noise, fraction of the symbol."), ("ends", "Chance to shorten each stroke end."),
        ("size", "Size read by the size channel, exp(+-v) times the tablet's."),
        ("redraw", "Chance a sample also comes as another tool draws it (the tablet's scale, another pen, binary "
                   "ink, a page that cuts it), read as predict's --read auto reads images from elsewhere: an extra "
                   "image in the batch, beside homus' own.")]],
    click.option("--channels", help=f"Input channels (--from-strokes) of {', '.join(CHANNELS)}, e.g. ink,time: "
                 "ink, time (the pen's "
                 "progress), stroke (each stroke's rank), size (the symbol's size on the tablet)."),
    click.option("--device", type=click.Choice(DEVICES)),
    click.option("--raster", type=click.Choice(RASTERS), help="Who draws training images from strokes: cpu "
                 "(homus_render in the loader), device (the torch rasterizer), auto (device on CUDA)."),
    click.option("--amp", type=click.Choice(AMP_MODES), help="Mixed precision: auto (bf16 or fp16 on CUDA, full "
                 "precision elsewhere), bf16 (CUDA or CPU), fp16 (CUDA), off."),
    click.option("--no-amp", "amp", flag_value="off", hidden=True, help="The same as --amp off."),
    click.option("--compile/--no-compile", default=None,
                 help="torch.compile the model (the first epoch compiles; mainly for GPUs)."),
    click.option("--workers", type=int, help="Data-loader worker processes."),
    click.option("--threads", type=int, help="Torch CPU threads (0: default)."),
    click.option("--runs-dir", type=click.Path(file_okay=False)),
    click.option("--name", help="Run folder name."),
]


def _settings_text(settings: dict, prefix: str = "") -> str:
    """A study arm's settings in one line, nested keys dotted: ``channels ink,size; strokes.thickness 1.0``."""
    parts = []
    for key, value in settings.items():
        if isinstance(value, dict):
            parts.append(_settings_text(value, f"{prefix}{key}."))
        else:
            parts.append(f"{prefix}{key} {','.join(map(str, value)) if isinstance(value, list) else value}")
    return "; ".join(parts)


def train_overrides(flags: dict) -> dict:
    """The train flags given, as train settings (``--stroke-rotate`` -> ``strokes.rotate``;
    ``--no-augment``: every stroke distortion, image warp and batch blend 0, unless a flag sets one)."""
    flags = dict(flags)
    over: dict = {}
    if flags.pop("no_augment", None):
        over["strokes"] = dict.fromkeys(STROKE_KEYS, 0.0)
        over["warp"] = dict.fromkeys(WARP_KEYS, 0.0)
        over.update(mixup_alpha=0.0, cutmix_alpha=0.0)
    if flags.get("variants") and flags.get("from_strokes") is None:  # --variant: train on that folder
        flags["from_strokes"] = False
    for k, v in flags.items():
        if v is None or v == ():
            continue
        if k.startswith("stroke_"):
            over.setdefault("strokes", {})[k[len("stroke_"):]] = v
        else:
            over[k] = list(v) if k in ("variants", "extra_raw") else v
    return over


#: The train flags ``--resume`` accepts: where the run goes on training (:data:`WHERE_KEYS` but the
#: folder's own path and name, which ``--resume`` gives). The data behind the paths is checked by hash.
RESUME_WHERE = tuple(k for k in WHERE_KEYS if k not in ("runs_dir", "name"))


def train_flags(f):
    for option in reversed(TRAIN_FLAGS):
        f = option(f)
    return f


@main.command()
@train_flags
@click.option("--resume", "resume_dir", type=click.Path(exists=True, file_okay=False),
              help="Continue the run in this folder from its last checkpoint, with its own settings; "
                   "only flags for where it trains (--device, --amp, --workers, ...) may be given.")
@with_config
def train(cfg, resume_dir, **flags) -> None:
    """Train a ResNet on rendered variants (or from the raw strokes); evaluate once on the test split."""
    from classifier.runfolder import RunFolder
    from classifier.settings import TrainConfig
    from classifier.train import train as do_train

    if resume_dir:  # the run's own settings, through the same check; flags may move it, not change it
        given = {k: v for k, v in flags.items() if v is not None and v != ()}
        if {"runs_dir", "name"} & set(given):
            raise click.UsageError(f"--resume {resume_dir} names the run's folder itself; drop --runs-dir and --name")
        learned = [k for k in given if k not in RESUME_WHERE]
        if learned:  # each flag as typed: a flag pair's second name when it was the one given
            named = [p.secondary_opts[0] if p.secondary_opts and given[p.name] is False else p.opts[0]
                     for p in click.get_current_context().command.params if p.name in learned]
            raise click.UsageError(
                f"--resume continues {resume_dir} with the settings it started with; {', '.join(named)} would "
                "change what it learns. Drop them, or train a new run (--name) with them. Only where it "
                f"trains may change: {', '.join('--' + k.replace('_', '-') for k in RESUME_WHERE)}")
        folder = RunFolder(resume_dir)
        settings = {**folder.config(), **train_overrides(given), "runs_dir": str(folder.path.parent),
                    "name": folder.name}
        tc = TrainConfig.from_dict(settings, folder.file("config.yaml"))
    else:
        tc = cfgmod.train_config(cfg, train_overrides(flags))
    run = do_train(tc, resume=bool(resume_dir), log=click.echo)
    metrics = RunFolder(run).metrics()
    click.echo(f"{run}: test accuracy {metrics['test_accuracy']:.4f} (macro F1 {metrics['macro_f1']:.4f}, "
               f"{metrics['n_test']:,} test images, {metrics['split']} split; best val "
               f"{metrics['val_accuracy']:.4f} at epoch {metrics['best_epoch']})")


@main.command()
@click.argument("runs", nargs=-1, required=True, type=click.Path(exists=True, file_okay=False))
@click.option("--variant", type=click.Path(exists=True, file_okay=False),
              help="Test on this variant's test split (default: the run's own variants).")
@click.option("--out", type=click.Path(dir_okay=False), callback=a_path,
              help="Several runs: where the ensemble's metrics go (default: "
                   "<first run's folder>/../ensemble-<run>+<run>.json, shortened with a hash for many runs; "
                   "a confusion matrix beside it).")
@click.option("--device", type=click.Choice(DEVICES), help="Where the models run.")
@with_config
def evaluate(cfg, runs, variant, out, device) -> None:
    """A run's best model on the test split of any variant; prints and saves the metrics.

    Several runs (trained on the same split) are scored as one ensemble: their class probabilities
    are averaged, each model reading the input it was trained on."""
    from classifier.evaluate import ensemble_name, evaluate_ensemble, evaluate_run
    from classifier.runfolder import check_not_a_run_file

    device = pick(device, cfg["evaluate"]["device"])
    once(runs)  # one model twice is no ensemble: it would be reported as one of two
    note_unfinished(runs)
    if len(runs) == 1 and out:
        raise click.UsageError(f"--out names an ensemble's file; one run's metrics go to {runs[0]}/eval-<variant>.json")
    if len(runs) > 1:
        on = f"-on-{Path(variant).name}" if variant else ""  # another variant's score never replaces the own
        out = Path(out) if out else Path(runs[0]).parent / f"{ensemble_name(runs)}{on}.json"
        check_not_a_run_file(out, runs)
        m = evaluate_ensemble(list(runs), out, variant, device)
    else:
        m = evaluate_run(runs[0], variant, device)
    if len(runs) > 1:
        for member in m["members"]:
            click.echo(f"  {member['run']} on {member['variant']}: test accuracy {member['test_accuracy']:.4f}")
        click.echo(f"ensemble of {len(runs)}: test accuracy {m['test_accuracy']:.4f}, macro F1 {m['macro_f1']:.4f}, "
                   f"{m['n_test']:,} images ({m['split']} split) -> {out}")
        return
    if m["missing_test_samples"]:  # a variant rendered from part of the data: say what the figure covers
        click.secho(f"note: {m['missing_test_samples']:,} of the run's {m['n_test'] + m['missing_test_samples']:,} "
                    f"test samples are not in {variant}; the figure covers the {m['n_test']:,} it holds",
                    fg="yellow", err=True)
    if m["trained_size"] != m["tested_size"]:
        click.secho(f"note: the model was trained on {'x'.join(map(str, m['trained_size']))} images and is tested on "
                    f"{'x'.join(map(str, m['tested_size']))}; ResNets do not carry over well across scales",
                    fg="yellow", err=True)
    click.echo(f"{m['run']} on {m['variant']}: test accuracy {m['test_accuracy']:.4f}, macro F1 "
               f"{m['macro_f1']:.4f}, {m['n_test']:,} images ({m['split']} split) -> "
               f"{Path(runs[0]) / ('eval-' + m['variant'] + '.json')}")


@main.command()
@click.argument("run", type=click.Path(exists=True, file_okay=False))
@click.argument("inputs", nargs=-1, required=True)
@click.option("--top-k", type=click.IntRange(1, 32), help="Classes listed per input.")
@click.option("--json", "as_json", is_flag=True, help="One JSON document for machines.")
@click.option("--read", type=click.Choice(READS),
              help="Images: fit the ink box to the canvas as it is; thicken (fit it and draw its centre line over it "
                   "at the model's pen); redraw (the centre line alone); auto redraws every image for a model "
                   "trained without --stroke-redraw, and for one trained with it fits ink as wide as the model's "
                   "pen that fitting does not enlarge and thickens the rest.")
@with_config
def predict(cfg, run, inputs, top_k, as_json, read) -> None:
    """Classify images (any size) or raw HOMUS .txt stroke files with a run's model."""
    note_unfinished([run])
    from classifier.predict import predict as do_predict

    top_k, read = pick(top_k, cfg["predict"]["top_k"]), pick(read, cfg["predict"]["read"])

    results = do_predict(run, list(inputs), top_k, read)
    if as_json:
        click.echo(json.dumps(results, indent=2))
    else:
        for r in results:
            if "error" in r:
                click.secho(f"{r['input']}: error: {r['error']}", fg="red", err=True)
            else:
                guesses = ", ".join(f"{t['label']} {t['probability']:.3f}" for t in r["top"])
                click.echo(f"{r['input']}: {guesses}")
    if any("error" in r for r in results):
        sys.exit(1)


@main.command("run")
@click.option("--dry-run", is_flag=True, help="Check the study and list its runs and ensembles; train nothing.")
@click.option("--parallel", type=click.IntRange(1, 256), default=None,
              help="Train up to N runs at once here: one per GPU, or a 1/N share of the CPU cores each. "
                   "[default: study.parallel]")
@click.option("--ray", "ray_address", default=None, metavar="auto|local|ADDRESS",
              help="Train the runs as tasks on a Ray cluster (needs homus[ray]): auto (the cluster this machine "
                   "joined), local (a private one here) or an address. [default: study.ray]")
@with_config
def run_cmd(cfg, cfg_path, dry_run, parallel, ray_address) -> None:
    """Run the study in the config: fetch, render, train, cross-evaluate, report."""
    from .study import check_made_as_planned, plan, run_study

    if parallel is not None:
        cfg["study"]["parallel"] = parallel
    if ray_address is not None:
        if not ray_address.strip():
            raise click.BadParameter("give auto, local or a cluster address", param_hint="--ray")
        cfg["study"]["ray"] = ray_address.strip()
    if cfg["study"]["ray"]:
        from .launch import check_ray_address

        check_ray_address(cfg["study"]["ray"])  # its form, before any fetch or render (reachability: when used)
    if cfg["study"]["ray"] and cfg["study"]["parallel"] > 1:
        raise click.UsageError("--parallel and --ray (or study.parallel and study.ray): choose one; on Ray, "
                               "study.run_cpus and study.run_gpus decide how many runs share a machine")

    if dry_run:
        p = plan(cfg, cfg_path)
        check_made_as_planned(p, cfg_path)
        click.echo(f"study {cfg['study']['name']} (runs in {p.runs_dir}); study.train: "
                   f"{_settings_text(cfg['study']['train']) or 'the train section as it is'}")
        for r in p.runs:
            tc = p.configs[r.name]
            what = f"from strokes at {tc.render.name}" if tc.from_strokes else f"on {', '.join(tc.variants)}"
            fold = f", fold {tc.fold} of {tc.folds}" if tc.folds else ""
            arm = f"; arm {r.arm}: {_settings_text(cfg['study']['arms'][r.arm])}" if r.arm else ""
            click.echo(f"{r.name}: {tc.arch} ({tc.stem} stem, amp {tc.amp}) {what}, channels {'+'.join(tc.channels)}, "
                       f"{tc.epochs} epochs, "
                       f"{tc.split} split{fold}, seed {tc.seed}, split seed {tc.split_rng_seed}{arm}")
        for e in p.ensembles:
            click.echo(f"ensemble {e.file[:-5]}: {' + '.join(e.runs)}")
        click.echo(f"{len(p.runs)} runs, {len(p.ensembles)} ensemble scores; nothing trained (--dry-run)")
        return
    out = run_study(cfg, log=click.echo, source=cfg_path)
    click.echo(f"report: {out / 'report.md'}")


@main.command()
@click.argument("runs", nargs=-1, required=True, type=click.Path(exists=True, file_okay=False))
@click.option("--out", type=click.Path(file_okay=False), callback=a_path,
              help="Where report.md, results.csv and comparison.png go.")
@click.option("--title", callback=a_text, help="The report's title.")
@with_config
def compare(cfg, runs, out, title) -> None:
    """Table and chart of finished runs, the settings that differ as columns, best first."""
    from .report import write_report

    out, title = pick(out, cfg["compare"]["out"]), pick(title, cfg["compare"]["title"])
    once(runs)  # a run given twice would count twice in its group's mean and spread

    result = write_report([Path(r) for r in runs], Path(out), title, command="homus compare " + " ".join(runs))
    keys = result["group_by"]
    click.echo(" | ".join(["test accuracy", *keys, "runs"]))
    for row in result["rows"]:
        acc = f"{row['mean']:.4f}" + (f" ± {row['std']:.4f}" if len(row["accuracies"]) > 1 else "")
        click.echo(" | ".join([acc, *(row["settings"][k] for k in keys), ",".join(row["runs"])]))
    click.echo(f"report: {Path(out) / 'report.md'}")


@main.command()
@click.argument("run", type=click.Path(exists=True, file_okay=False))
@click.argument("inputs", nargs=-1, required=True)
@click.option("--out", type=click.Path(file_okay=False), callback=a_path, help="Where the pictures go.")
@click.option("--filters", is_flag=True, help="Also the first convolution's filters and each stage's activations.")
@click.option("--top-k", type=click.IntRange(1, 32), help="Classes explained per input.")
@with_config
def explain(cfg, run, inputs, out, filters, top_k) -> None:
    """Grad-CAM pictures of why a run's model names each input (image or HOMUS .txt stroke file)."""
    note_unfinished([run])
    from classifier.explain import explain_inputs

    out, top_k = pick(out, cfg["explain"]["out"]), pick(top_k, cfg["explain"]["top_k"])

    if not explain_inputs(run, list(inputs), Path(out), filters, top_k, log=click.echo,
                          warn=lambda m: click.secho(m, fg="red", err=True)):
        sys.exit(1)


@main.command()
@click.argument("run", type=click.Path(exists=True, file_okay=False))
@click.option("--out", type=click.Path(dir_okay=False), callback=a_path, help="The ONNX file to write.")
@click.option("--check", type=click.IntRange(min=0), help="Test images onnxruntime must score as torch does "
                                                          "(0: no check).")
@with_config
def export(cfg, run, out, check) -> None:
    """The run's best model as ONNX (probabilities out, classes and settings in its metadata)."""
    note_unfinished([run])
    from classifier.export import export_run
    from classifier.runfolder import check_not_a_run_file

    out, check = pick(out, cfg["export"]["out"]), pick(check, cfg["export"]["check"])
    check_not_a_run_file(out, [run])

    r = export_run(run, out, check, log=lambda m: click.secho(m, fg="yellow", err=True))
    checked = (f"onnxruntime vs torch on {r['n']} test images: max |diff| {r['max_abs_diff']:.2e}, top-1 agrees "
               f"on {r['top1_agreement']:.1%}" if r["n"] else "not checked (--check 0)")
    click.echo(f"{out}: {r['bytes'] / 1e6:.1f} MB, opset {r['opset']} ({r['exporter']} exporter); {checked}")


from .serve import serve  # noqa: E402  (click alone at import; fastapi loads when the command runs)

main.add_command(serve)

if __name__ == "__main__":
    main()
