"""homus as a user gets it: a wheel, installed into a fresh virtual environment, run from an empty
folder. The defaults must come from the wheel's own package data, not from a source checkout."""

from __future__ import annotations

import os
import shutil
import site
import subprocess
import sys
import venv
from pathlib import Path

import pytest
from conftest import write_handmade

REPO = Path(__file__).resolve().parents[1]
SOURCES = ("pyproject.toml", "README.md", "homus_render", "classifier", "homus")


def run(cmd: list[str], cwd: Path) -> subprocess.CompletedProcess:
    """``cmd`` in ``cwd``, without PYTHONPATH (which would put a checkout before the wheel)."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=300, env=env)


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """A fresh venv holding the homus wheel; the project's dependencies come from this interpreter's
    site-packages through a path file (no network, no index)."""
    root = tmp_path_factory.mktemp("wheel")
    src = root / "src"
    src.mkdir()
    for name in SOURCES:  # a copy, so the build leaves nothing in the checkout
        (shutil.copytree if (REPO / name).is_dir() else shutil.copy)(
            REPO / name, src / name, **({"ignore": shutil.ignore_patterns("__pycache__")}
                                         if (REPO / name).is_dir() else {}))
    built = run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "--no-index",
                 "-w", str(root / "dist"), str(src)], root)
    assert built.returncode == 0, built.stderr
    wheel = next((root / "dist").glob("homus-*.whl"))
    env = root / "env"
    venv.create(env, with_pip=False)
    py = env / "bin" / "python"
    purelib = run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], root).stdout.strip()
    deps = [p for p in site.getsitepackages() if Path(p).is_dir()]
    (Path(purelib) / "homus-test-deps.pth").write_text("\n".join(deps) + "\n")
    inst = run([sys.executable, "-m", "pip", "--python", str(py), "install", "-q", "--no-deps", "--no-index",
                "--ignore-installed", str(wheel)], root)
    assert inst.returncode == 0, inst.stderr
    return env


def test_wheel_ships_its_defaults_and_runs_from_an_empty_folder(installed: Path, tmp_path: Path):
    homus = installed / "bin" / "homus"
    work = tmp_path / "empty"
    work.mkdir()
    where = run([str(installed / "bin" / "python"), "-c",
                 "import homus, homus.config as c; print(homus.__file__); print(c.DEFAULTS_FILE)"], work)
    assert where.returncode == 0, where.stderr
    module, defaults = where.stdout.split()
    assert module.startswith(str(installed)), "homus was imported from the checkout, not from the wheel"
    assert defaults.startswith(str(installed)) and Path(defaults).is_file()
    page = run([str(installed / "bin" / "python"), "-c", "from homus.serve import STATIC; "
                "print(STATIC); print(*sorted(p.name for p in STATIC.iterdir()))"], work)
    assert page.returncode == 0, page.stderr
    static, files = page.stdout.splitlines()
    assert static.startswith(str(installed)) and files.split() == ["app.js", "index.html", "style.css"]

    helped = run([str(homus), "--help"], work)
    assert helped.returncode == 0 and "render" in helped.stdout and "train" in helped.stdout

    write_handmade(work / "raw", writers=("1", "2"))
    r = run([str(homus), "render", "--thickness", "2", "--size", "32", "--jobs", "1"], work)
    assert r.returncode == 0, r.stderr
    variant = work / "rendered" / "t2-s32"
    assert (variant / "variant.json").is_file() and (variant / "manifest.csv").is_file()
    assert len(list(variant.glob("*/*.png"))) == 8  # 4 hand-made symbols x 2 writers
    assert sorted(p.name for p in work.iterdir()) == ["raw", "rendered"]  # nothing else written


def test_a_users_pipeline_yaml_still_overrides_the_shipped_defaults(installed: Path, tmp_path: Path):
    work = tmp_path / "project"
    write_handmade(work / "raw", writers=("1",))
    (work / "pipeline.yaml").write_text("render:\n  size: [40]\n  thickness: [1]\n")
    r = run([str(installed / "bin" / "homus"), "render", "--jobs", "1"], work)
    assert r.returncode == 0, r.stderr
    assert (work / "rendered" / "t1-s40" / "variant.json").is_file()
    (work / "pipeline.yaml").write_text("render:\n  sise: [40]\n")
    bad = run([str(installed / "bin" / "homus"), "render", "--jobs", "1"], work)
    assert bad.returncode != 0 and "unknown key 'render.sise'" in bad.stderr and "Traceback" not in bad.stderr
