"""The Dockerfile's promises, checked without a Docker engine: its build context holds every package,
what it installs from that context is the whole `maitred` command, and it runs as a non-root user."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tomllib
import zipfile

from helm_harness import REPO

DOCKERFILE = (REPO / "Dockerfile").read_text()


def allowed_context() -> list[str]:
    """The top-level paths .dockerignore lets in (it is an allow-list: `*`, then `!path`)."""
    lines = [line.strip() for line in (REPO / ".dockerignore").read_text().splitlines()]
    rules = [line for line in lines if line and not line.startswith("#")]
    assert rules[0] == "*", ".dockerignore should start by ignoring everything"
    return [rule[1:].rstrip("/") for rule in rules if rule.startswith("!")]


def test_the_build_context_has_every_package_folder():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())
    folders = {path.split("/")[0] for path in project["tool"]["setuptools"]["package-dir"].values()}
    assert folders | {"pyproject.toml", "README.md"} <= set(allowed_context())


def test_the_context_builds_a_wheel_with_the_maitred_command(tmp_path):
    context = tmp_path / "context"
    for name in allowed_context():
        source = REPO / name
        if source.is_dir():
            shutil.copytree(source, context / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            context.mkdir(exist_ok=True)
            shutil.copy(source, context / name)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps",
                    "-w", str(tmp_path / "dist"), str(context)], check=True, capture_output=True, timeout=300)
    wheel = next((tmp_path / "dist").glob("maitred-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    for module in ("maitred/cli/main.py", "maitred/operator/handlers.py", "maitred/router/app.py",
                   "maitred/router/balancing/__init__.py", "maitred/sim/app.py"):
        assert module in names
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    assert "maitred = maitred.cli.main:main" in zipfile.ZipFile(wheel).read(entry_points).decode()


def test_the_image_runs_maitred_as_a_numeric_non_root_user():
    assert re.search(r'^ENTRYPOINT \["maitred"\]$', DOCKERFILE, re.M)
    user = re.findall(r"^USER (\S+)$", DOCKERFILE, re.M)
    assert user and re.fullmatch(r"[1-9][0-9]*:[1-9][0-9]*", user[-1])  # runAsNonRoot can check a number


def test_the_base_image_is_pinned_to_a_python_release():
    base = re.search(r"^ARG PYTHON_IMAGE=(\S+)$", DOCKERFILE, re.M).group(1)
    assert re.fullmatch(r"python:3\.\d+\.\d+-slim-\w+(@sha256:[0-9a-f]{64})?", base), base
    assert all(line.split()[1] in ("${PYTHON_IMAGE}",) for line in DOCKERFILE.splitlines()
               if line.startswith("FROM "))


def test_the_images_two_install_steps_give_a_router_without_the_demos_sdk(tmp_path):
    """The Dockerfile's dependency layer (pyproject's runtime dependencies) and source layer (--no-deps),
    done in a fresh venv: the router and operator run, the OpenAI SDK is not there, the demo says why."""
    assert "--no-deps ." in DOCKERFILE and "-r /tmp/requirements.txt" in DOCKERFILE
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
    runtime = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    subprocess.run([*pip, *runtime], check=True, capture_output=True, timeout=600)
    subprocess.run([*pip, "--no-deps", str(REPO)], check=True, capture_output=True, timeout=300)
    maitred = str(venv / "bin" / "maitred")
    for command in (["router", "--help"], ["operator", "--help"], ["sim", "--help"]):
        assert subprocess.run([maitred, *command], capture_output=True, timeout=60).returncode == 0, command
    python = str(venv / "bin" / "python")
    assert subprocess.run([python, "-c", "import openai"], capture_output=True, timeout=60).returncode != 0
    demo = subprocess.run([maitred, "demo"], capture_output=True, text=True, timeout=60)
    assert demo.returncode == 1 and "maitred[demo]" in demo.stderr, demo.stderr
