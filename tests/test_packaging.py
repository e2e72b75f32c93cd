"""Packaging: the library never imports the entry points' packages, and a non-editable install
(library, callbacks, eval, configs) works from any folder."""
import ast
import os
import shutil
import subprocess
import sys
import sysconfig
import venv
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
ENTRY_POINT_PACKAGES = {"callbacks", "eval"}


def _imported_top_level_names(path):
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def test_the_library_never_imports_callbacks_or_eval():
    files = sorted((ROOT / "reangle").rglob("*.py"))
    assert len(files) > 20
    offenders = {str(f.relative_to(ROOT)): sorted(_imported_top_level_names(f) & ENTRY_POINT_PACKAGES)
                 for f in files}
    assert {f: names for f, names in offenders.items() if names} == {}


@pytest.mark.slow
def test_non_editable_install_runs_from_another_folder(tmp_path):
    source = tmp_path / "source"  # a clean copy: the build leaves nothing in the checkout
    source.mkdir()
    for name in ("setup.cfg", "pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    for name in ("reangle", "callbacks", "eval", "configs"):
        if (ROOT / name).is_dir():
            shutil.copytree(ROOT / name, source / name, ignore=shutil.ignore_patterns("__pycache__"))
    # a new environment that sees this one's packages (a .pth line adds its site-packages to sys.path
    # without running the .pth files there, so the editable install of this checkout stays out)
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=False)
    python = str(env_dir / "bin" / "python")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    target = subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                            env=env, capture_output=True, text=True, check=True).stdout.strip()
    here = {sysconfig.get_paths()[k] for k in ("purelib", "platlib")}
    (Path(target) / "parent.pth").write_text("\n".join(sorted(here)) + "\n")
    # built and installed by this environment's pip and setuptools, offline
    dist = tmp_path / "dist"
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
                            "--quiet", "-w", str(dist), str(source)], env=env, capture_output=True, text=True,
                           timeout=300)
    assert build.returncode == 0, build.stderr[-3000:]
    wheel, = dist.glob("reangle-*.whl")
    install = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-index", "--quiet",
                              "--target", target, str(wheel)], env=env, capture_output=True, text=True, timeout=300)
    assert install.returncode == 0, install.stderr[-3000:]

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    imports = subprocess.run(
        [python, "-c", "import callbacks.video_sampling, callbacks.lora_export, reangle.training.build, "
                       "reangle.config as c; print(callbacks.__file__); print(c.BASE_CONFIG)"],
        cwd=elsewhere, env=env, capture_output=True, text=True, timeout=300)
    assert imports.returncode == 0, imports.stderr[-3000:]
    site = str(env_dir.resolve())
    assert all(line.startswith(site) for line in imports.stdout.split()), imports.stdout

    # the repository's train.py run from another folder against the installed packages (-P: the
    # script's folder is not put on sys.path): its imports and configs/base.yaml come from the install
    run = subprocess.run([python, "-P", str(ROOT / "train.py"), "--config", str(ROOT / "configs/presets/tiny.yaml"),
                          "no_such.key=1"], cwd=elsewhere, env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 1 and "unknown config key 'no_such'" in run.stderr, run.stderr[-3000:]
