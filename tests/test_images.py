"""The container images: hadolint-clean, multi-stage, non-root, labelled, from the lock file.

No Docker needed: the Dockerfiles are linted and read as text, and `make images`
runs against a PATH without docker/podman or with a stand-in engine that records
its arguments.
"""

import ast
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DOCKERFILES = {"cuda": REPO / "images" / "Dockerfile.cuda", "cpu": REPO / "images" / "Dockerfile.cpu"}
OCI_LABELS = {
    "org.opencontainers.image.title",
    "org.opencontainers.image.description",
    "org.opencontainers.image.source",
    "org.opencontainers.image.version",
    "org.opencontainers.image.revision",
    "org.opencontainers.image.licenses",
}


def _tool(name: str) -> str:
    """The venv's copy of a test tool (next to sys.executable), else the one on PATH."""
    beside = Path(sys.executable).parent / name
    found = str(beside) if beside.exists() else shutil.which(name)
    if found is None:
        pytest.fail(f"{name} is not installed; run `make setup` (it comes with the dev extras)")
    return found


def _instructions(dockerfile: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, comments dropped and continuation lines joined."""
    joined, pending = [], ""
    for line in dockerfile.read_text().splitlines():
        if line.lstrip().startswith("#") or not line.strip():
            continue
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        joined.append(pending + line)
        pending = ""
    return [(text.split(None, 1)[0].upper(), text.split(None, 1)[1].strip()) for text in joined]


def _stages(dockerfile: Path) -> list[list[tuple[str, str]]]:
    """The instructions of each build stage, in order; ARGs before the first FROM are dropped."""
    stages: list[list[tuple[str, str]]] = []
    for instruction in _instructions(dockerfile):
        if instruction[0] == "FROM":
            stages.append([])
        if stages:
            stages[-1].append(instruction)
    return stages


def _label_keys(stage: list[tuple[str, str]]) -> set[str]:
    return {key for op, args in stage if op == "LABEL" for key in re.findall(r"([\w.\-]+)=", args)}


@pytest.mark.parametrize("flavour", sorted(DOCKERFILES))
def test_hadolint_reports_nothing(flavour):
    dockerfile = DOCKERFILES[flavour]
    result = subprocess.run(
        [_tool("hadolint"), "--format", "json", str(dockerfile)], capture_output=True, text=True, timeout=60
    )
    findings = json.loads(result.stdout or "[]")
    assert findings == [], "\n".join(f"{f['line']}: {f['code']} {f['message']}" for f in findings)
    assert result.returncode == 0, result.stderr
    # The lint passes honestly: no rule is switched off inside the file.
    assert "hadolint ignore" not in dockerfile.read_text()


def test_hadolint_does_find_problems(tmp_path):
    """Guards the test above: an empty finding list means a clean file, not a silent linter."""
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python\nRUN pip install torch\n")
    result = subprocess.run([_tool("hadolint"), "--format", "json", str(bad)], capture_output=True, text=True)
    codes = {finding["code"] for finding in json.loads(result.stdout)}
    assert {"DL3006", "DL3013"} <= codes


@pytest.mark.parametrize("flavour", sorted(DOCKERFILES))
def test_multi_stage_from_one_base_argument(flavour):
    dockerfile = DOCKERFILES[flavour]
    stages = _stages(dockerfile)
    assert len(stages) >= 2, "a builder stage and a final stage"
    assert all(stage[0][1].split()[0] == "${BASE_IMAGE}" for stage in stages), "every stage FROM ${BASE_IMAGE}"
    default = re.search(r"^ARG BASE_IMAGE=(\S+)$", dockerfile.read_text(), re.MULTILINE)
    assert default, "BASE_IMAGE is a build argument with a default"
    assert ":" in default.group(1) and not default.group(1).endswith(":latest")


@pytest.mark.parametrize("flavour", sorted(DOCKERFILES))
def test_final_stage_is_lean_non_root_and_labelled(flavour):
    final = _stages(DOCKERFILES[flavour])[-1]
    ops = [op for op, _ in final]
    users = [args for op, args in final if op == "USER"]
    assert users, "the final stage sets USER"
    uid = users[-1].split(":")[0]
    assert uid.isdigit() and int(uid) != 0, "a numeric, non-root UID (Kubernetes runAsNonRoot can check it)"
    assert OCI_LABELS <= _label_keys(final)
    assert "ENTRYPOINT" not in ops and "CMD" not in ops, "KFP sets the command"
    runs = " ".join(args for op, args in final if op == "RUN")
    assert not re.search(r"pip install|apt-get install|build-essential|gcc", runs), runs
    copies = [args for op, args in final if op == "COPY"]
    assert copies == ["--from=builder /opt/venv /opt/venv"], "only the venv (app included) leaves the builder"
    env = " ".join(args for op, args in final if op == "ENV")
    for setting in ("HF_HOME=/cache/huggingface", "TORCH_HOME=/cache/torch", "PYTHONUNBUFFERED=1"):
        assert setting in env


@pytest.mark.parametrize("flavour", sorted(DOCKERFILES))
def test_every_pip_install_uses_the_lock_file(flavour):
    runs = [args for op, args in _stages(DOCKERFILES[flavour])[0] if op == "RUN"]
    installs = [cmd for run in runs for cmd in run.split("&&") if "pip install" in cmd]
    assert len(installs) >= 2, "dependencies, then the app"
    assert all(re.search(r"(^|\s)-c constraints\.txt(\s|$)", cmd) for cmd in installs), installs
    assert all("--no-cache-dir" in cmd for cmd in installs), installs


def test_cpu_image_takes_torch_from_the_cpu_index_only():
    runs = [args for op, args in _stages(DOCKERFILES["cpu"])[0] if op == "RUN"]
    installs = [cmd for run in runs for cmd in run.split("&&") if "pip install" in cmd]
    from_cpu_index = [cmd for cmd in installs if "download.pytorch.org/whl/cpu" in cmd]
    assert len(from_cpu_index) == 1
    assert "--index-url" in from_cpu_index[0] and "--no-deps" in from_cpu_index[0]
    assert from_cpu_index[0].split()[-2:] == ["torch", "torchvision"]
    assert from_cpu_index[0] == installs[0], "torch is in place before anything that depends on it"
    assert "download.pytorch.org" not in DOCKERFILES["cuda"].read_text()


def test_lock_pin_accepts_the_cpu_build():
    """PEP 440: a pin without a local label matches 2.15.0+cpu, so one lock serves both images."""
    from packaging.specifiers import SpecifierSet

    pins = dict(
        line.split("==", 1) for line in (REPO / "constraints.txt").read_text().splitlines() if "==" in line
    )
    for package in ("torch", "torchvision"):
        assert f"{pins[package]}+cpu" in SpecifierSet(f"=={pins[package]}")


def _make_images(tmp_path: Path, engine: str | None, *variables: str) -> subprocess.CompletedProcess:
    """`make images` with a PATH holding only the tools the Makefile reads, plus an optional engine."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("cat", "sha256sum", "cut", "sed", "git"):
        if found := shutil.which(tool):
            (bin_dir / tool).symlink_to(found)
    if engine:
        fake = bin_dir / engine
        fake.write_text(f'#!/bin/sh\necho "$*" >> "{tmp_path}/engine-calls"\n')
        fake.chmod(0o755)
    env = {"PATH": str(bin_dir), "HOME": str(tmp_path)}
    return subprocess.run(
        [shutil.which("make"), "--no-print-directory", "images", *variables],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=60,
    )


def test_make_images_says_clearly_when_no_engine_is_installed(tmp_path):
    result = _make_images(tmp_path, engine=None)
    assert result.returncode != 0
    message = [line for line in result.stderr.splitlines() if "neither docker nor podman" in line]
    assert len(message) == 1, result.stderr
    assert "docker build -f images/Dockerfile.cuda -t ghcr.io/trainflow/trainflow:0.1.0 ." in message[0]
    assert "images/Dockerfile.cpu" in message[0]


def _component_default_image() -> str:
    """The image components use unless TRAINFLOW_IMAGE is set, read without importing kfp."""
    tree = ast.parse((REPO / "components" / "component_defaults.py").read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "get" and node.args:
            if isinstance(node.args[0], ast.Constant) and node.args[0].value == "TRAINFLOW_IMAGE":
                return node.args[1].value
    raise AssertionError("components/component_defaults.py no longer reads TRAINFLOW_IMAGE")


@pytest.mark.parametrize("engine", ["docker", "podman"])
def test_make_images_builds_both_with_whichever_engine_exists(tmp_path, engine):
    result = _make_images(tmp_path, engine=engine)
    assert result.returncode == 0, result.stderr
    calls = (tmp_path / "engine-calls").read_text().splitlines()
    assert len(calls) == 2
    cuda, cpu = (call.split() for call in calls)
    assert cuda[:3] == ["build", "-f", "images/Dockerfile.cuda"] and cuda[-1] == "."
    assert cpu[:3] == ["build", "-f", "images/Dockerfile.cpu"] and cpu[-1] == "."
    assert cuda[cuda.index("-t") + 1] == _component_default_image() == "ghcr.io/trainflow/trainflow:0.1.0"
    assert cpu[cpu.index("-t") + 1] == "ghcr.io/trainflow/trainflow:0.1.0-cpu"
    assert "VERSION=0.1.0" in cuda and "VERSION=0.1.0" in cpu


def test_make_images_tags_follow_registry_and_tag_variables(tmp_path):
    result = _make_images(tmp_path, "docker", "IMAGE_REGISTRY=registry.example.org/ml", "IMAGE_TAG=2.0.0")
    assert result.returncode == 0, result.stderr
    tags = [call.split()[call.split().index("-t") + 1] for call in (tmp_path / "engine-calls").read_text().splitlines()]
    assert tags == ["registry.example.org/ml/trainflow:2.0.0", "registry.example.org/ml/trainflow:2.0.0-cpu"]


def test_build_context_leaves_local_state_out():
    ignored = {line.strip() for line in (REPO / ".dockerignore").read_text().splitlines()}
    assert {".venv", ".trainflow", "build", ".git"} <= ignored
    # What the images COPY must stay in the context.
    assert not ignored & {"shared", "pipelines", "components", "pyproject.toml", "constraints.txt", "README.md"}

