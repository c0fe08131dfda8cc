"""`pip install .` brings everything the code imports: no module of trainer/, index/ or service/ may import a
third-party package that pyproject.toml lists only in an extra (or not at all).

The imports are read with `ast` (nothing is imported), mapped to their distributions through the installed
metadata, and compared with `[project] dependencies`. A clean install that actually runs the commands is the
slow test at the end (`pytest -m slow tests/test_packaging.py`).
"""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
import time
from importlib.metadata import packages_distributions
from pathlib import Path

import pytest
import tomllib
from ports import free_port

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("trainer", "index", "service", "durable")
# declared runtime dependencies that no module imports by name, and why they are runtime dependencies anyway
USED_INDIRECTLY = {
    "python-multipart": "FastAPI parses the multipart upload forms (POST /search, POST /images) with it",
}


def _normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def runtime_dependencies(root: Path = ROOT) -> set[str]:
    deps = tomllib.loads((root / "pyproject.toml").read_text())["project"]["dependencies"]
    return {_normalise(re.split(r"[\s<>=!~;\[]", d, maxsplit=1)[0]) for d in deps}


def third_party_imports(root: Path = ROOT, packages: tuple[str, ...] = PACKAGES) -> dict[str, str]:
    """{top-level module: the first file importing it} over every absolute import in the packages, minus the
    standard library and the packages themselves."""
    found: dict[str, str] = {}
    for package in packages:
        for path in sorted((root / package).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
                if isinstance(node, ast.Import):
                    names = [alias.name for alias in node.names]
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    names = [node.module]
                else:
                    continue
                for name in names:
                    found.setdefault(name.split(".")[0], str(path.relative_to(root)))
    return {m: f for m, f in found.items() if m not in sys.stdlib_module_names and m not in packages}


def undeclared(imports: dict[str, str], owners: dict[str, list[str]], declared: set[str]) -> list[str]:
    """The imported modules whose distribution is not a declared dependency, each saying who imports it."""
    return [f"{module} ({'/'.join(owners.get(module, ['not installed']))}, imported by {where})"
            for module, where in sorted(imports.items())
            if not {_normalise(d) for d in owners.get(module, [])} & declared]


def test_every_imported_package_is_a_runtime_dependency():
    missing = undeclared(third_party_imports(), packages_distributions(), runtime_dependencies())
    assert not missing, "imported but not in [project] dependencies: " + ", ".join(missing)


def test_every_runtime_dependency_is_used():
    owners = packages_distributions()  # {top-level module: [distribution, ...]} of this environment
    imported = {_normalise(d) for m in third_party_imports() for d in owners.get(m, [])}
    unused = runtime_dependencies() - imported - set(USED_INDIRECTLY)
    assert not unused, f"[project] dependencies nothing imports (remove, or say why in USED_INDIRECTLY): {unused}"


def test_the_check_sees_a_dev_only_import(tmp_path):
    """The comparison fails on the very bug it exists for: a module importing a `[dev]`-only package."""
    (tmp_path / "service").mkdir()
    (tmp_path / "service" / "probe.py").write_text(
        "import pytest\nfrom yaml import safe_load\nimport json\nfrom . import app\nfrom service import cli\n")
    (tmp_path / "pyproject.toml").write_text('[project]\ndependencies = ["PyYAML>=6"]\n')
    imports = third_party_imports(tmp_path, ("service",))
    assert imports == {"pytest": "service/probe.py", "yaml": "service/probe.py"}
    missing = undeclared(imports, packages_distributions(), runtime_dependencies(tmp_path))
    assert missing == ["pytest (pytest, imported by service/probe.py)"]


# ------------------------------------------------------------------------------------------ a real install


def _run(cmd: list[str], **kw) -> subprocess.CompletedProcess:
    r = subprocess.run(cmd, capture_output=True, text=True, **kw)
    assert r.returncode == 0, f"{' '.join(cmd)} failed ({r.returncode}):\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    return r


def _wait_for(proc: subprocess.Popen, ready, what: str, timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"{what} exited with {proc.returncode}:\n{proc.stdout.read()[-3000:]}"
        if ready():
            return
        time.sleep(0.5)
    raise AssertionError(f"{what} did not come up within {timeout_s:.0f} s")


@pytest.mark.slow
def test_clean_venv_install_runs_every_command(tmp_path):
    """A fresh venv, torch and torchvision installed first (as a user with a GPU would), then `pip install .`
    without extras: `npid --help`, `npid serve` (answers /health) and `npid worker` (answers a Celery ping)."""
    import httpx
    import redis

    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", str(venv)])
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet"]
    _run([*pip, "torch==2.14.1", "torchvision==0.29.1"], timeout=1800)
    _run([*pip, str(ROOT)], timeout=900)
    npid = str(venv / "bin" / "npid")
    assert "serve" in _run([npid, "--help"], cwd=tmp_path).stdout

    redis_url = os.environ.get("NPID_TEST_REDIS_URL", "redis://127.0.0.1:6379/3")  # issue 13's db
    (tmp_path / "images").mkdir()
    (tmp_path / "artifacts").mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("NPID_") and k != "PYTHONPATH"}
    env.update(NPID_COLLECTION_ROOT=str(tmp_path / "images"), NPID_ARTIFACTS_DIR=str(tmp_path / "artifacts"),
               NPID_REDIS_URL=redis_url, NPID_API_KEY="k" * 24)
    port = free_port()
    serve = subprocess.Popen([npid, "serve", "--port", str(port)], cwd=tmp_path, env=env, text=True,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    worker = subprocess.Popen([npid, "worker"], cwd=tmp_path, env=env, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        def health() -> bool:
            try:
                return httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200
            except httpx.HTTPError:
                return False

        _wait_for(serve, health, "npid serve")
        from service.jobs.queue import make_celery

        celery = make_celery(redis_url)
        _wait_for(worker, lambda: bool(celery.control.ping(timeout=1)), "npid worker")
        assert redis.Redis.from_url(redis_url).ping()
    finally:
        for proc in (serve, worker):
            proc.terminate()
        for proc in (serve, worker):
            proc.wait(timeout=60)
