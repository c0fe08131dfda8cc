"""The compose stack, built and run for real (`bash scripts/test.sh -m docker`; as root where dockerd must be
started). Long: minutes for a first build, then the layer cache; docs/deploy-test.md keeps a full run.

It follows the README's deploy steps on a copy of the repository (`cp .env.example .env`, the API key, the
uploads folder, the CPU override, `docker compose up -d --build`), with docker_host.py's local base images and
package sources added to .env where the upstream ones are unreachable. Then, on the CPU image: a first job on
an empty folder fails with a one-line reason; a first version trained on a generated collection through
POST /jobs/train; search; upload; redis restarted (job records survive); api restarted (same version);
rollback; worker SIGKILLed mid-job (the job fails as documented, "worker lost", and the api keeps answering);
`down -v`. Each step's time is printed. The GPU image is built and imports torch and faiss on the CPU
(marker docker_gpu).
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import ports
import pytest
import synthetic
from docker_host import docker_engine, local_base_images, package_sources, run

ROOT = Path(__file__).resolve().parents[1]
APP_UID = 1000  # .env.example's APP_UID / APP_GID
LOCK_TTL_S = 20  # NPID_JOBS_LOCK_TTL_S for this stack: a killed worker's job fails this long after its last beat
BUILD_TIMEOUT_S = 3600

pytestmark = pytest.mark.timeout(7200)


class Steps:
    """Prints each step's wall time as it ends, and a table at the end, past pytest's output capture (a run
    that takes many minutes says what it is doing)."""

    def __init__(self, config: pytest.Config) -> None:
        self.times: list[tuple[str, float]] = []
        self.capture = config.pluginmanager.getplugin("capturemanager")

    def say(self, line: str) -> None:
        with self.capture.global_and_fixture_disabled():
            print(f"[deploy] {line}", flush=True)

    def __call__(self, name: str, body: Callable[[], object]) -> object:
        self.say(f"{name} ...")
        t0 = time.monotonic()
        result = body()
        self.times.append((name, time.monotonic() - t0))
        self.say(f"{name}: {self.times[-1][1]:.1f} s")
        return result

    def table(self) -> str:
        width = max(len(n) for n, _ in self.times)
        rows = [f"  {n:<{width}}  {t:8.1f} s" for n, t in self.times]
        return "\n".join(["step times:", *rows, f"  {'total':<{width}}  {sum(t for _, t in self.times):8.1f} s"])


def compose_binary() -> list[str]:
    """`docker compose` (v2) where the plugin exists, else Debian's docker-compose 1.29."""
    if subprocess.run(["docker", "compose", "version"], capture_output=True).returncode == 0:
        return ["docker", "compose"]
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    pytest.skip("neither `docker compose` nor docker-compose is installed (apt-get install docker-compose)")


def children(pid: int) -> list[int]:
    """The host pids whose parent is pid (from /proc/*/stat: field 4 after the parenthesised name)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:  # the process ended meanwhile
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


def checkout(dest: Path) -> Path:
    """The repository's tracked files, as a user's clone would have them."""
    files = run(["git", "ls-files", "-z"], cwd=ROOT).stdout.split("\0")
    for name in filter(None, files):
        if (ROOT / name).is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, dest / name)
    return dest


def readme_setup(project: Path, extra_env: dict[str, str]) -> dict[str, str]:
    """The README's steps before `up`: .env from the example with a key and the CPU override, the uploads
    folder owned by the containers' user; then this host's settings. Returns the .env's added values."""
    env_text = (project / ".env.example").read_text()
    override = "# COMPOSE_FILE=docker-compose.yml:docker-compose.cpu.yml"
    assert override in env_text, ".env.example no longer shows the CPU override the README tells users to uncomment"
    env_text = env_text.replace(override, override[2:])
    added = {"NPID_API_KEY": secrets.token_hex(24), "API_PORT": str(ports.free_port()),
             "NPID_JOBS_LOCK_TTL_S": str(LOCK_TTL_S), "NPID_JOBS_HEARTBEAT_S": "3", "NPID_POLL_INTERVAL_S": "1",
             "NPID_RATE_LIMIT_PER_MINUTE": "0", "NPID_CPU_TRAIN_MINUTES": "0.5", **extra_env}
    (project / ".env").write_text(env_text + "\n" + "".join(f"{k}={v}\n" for k, v in added.items()))
    uploads = project / "images" / "uploads"
    uploads.mkdir(parents=True)
    os.chown(uploads, APP_UID, APP_UID)
    return added


class Stack:
    def __init__(self, project: Path, compose: list[str], key: str, port: str) -> None:
        self.project, self.key = project, key
        self.base = f"http://127.0.0.1:{port}"
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("COMPOSE_")}
        self.env["COMPOSE_PROJECT_NAME"] = f"npiddeploy{os.getpid()}"
        self.compose = compose

    def __call__(self, *args: str, timeout: float = 600) -> str:
        return run([*self.compose, *args], cwd=self.project, env=self.env, timeout=timeout).stdout

    def get(self, path: str, **kw) -> httpx.Response:
        return httpx.get(self.base + path, timeout=30, **kw)

    def post(self, path: str, **kw) -> httpx.Response:
        return httpx.post(self.base + path, headers={"X-API-Key": self.key}, timeout=60, **kw)

    def container(self, service: str) -> str:
        return self("ps", "-q", service).strip()

    def wait(self, what: str, ok: Callable[[], bool], timeout_s: float = 300) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                if ok():
                    return
            except httpx.HTTPError:
                pass
            time.sleep(1)
        logs = subprocess.run([*self.compose, "logs", "--tail", "40"], cwd=self.project, env=self.env,
                              capture_output=True, text=True).stdout
        raise AssertionError(f"{what}: not within {timeout_s:.0f} s\n{logs}")

    def worker_answers(self) -> bool:
        r = subprocess.run([*self.compose, "exec", "-T", "worker-cpu", "python", "/app/healthcheck.py", "worker"],
                           cwd=self.project, env=self.env, capture_output=True, text=True, timeout=60)
        return r.returncode == 0

    def job(self, job_id: str) -> dict:
        return self.get(f"/jobs/{job_id}").json()

    def finished_job(self, job_id: str, timeout_s: float = 900) -> dict:
        self.wait(f"job {job_id} ends",
                  lambda: self.job(job_id)["state"] in ("succeeded", "failed", "cancelled"), timeout_s)
        return self.job(job_id)

    def version(self) -> str | None:
        r = self.get("/ready")
        return r.json()["version"] if r.status_code == 200 else None

    def search(self, image: Path) -> dict:
        r = self.post("/search", params={"k": 5},
                      files={"file": (image.name, image.read_bytes(), "application/octet-stream")})
        assert r.status_code == 200, r.text
        return r.json()


@pytest.fixture(scope="module")
def docker_host(tmp_path_factory, pytestconfig):
    """(say, .env entries for this host) with an engine up for the module's duration."""
    steps = Steps(pytestconfig)
    logs = tmp_path_factory.mktemp("docker-host-logs")
    with docker_engine(steps.say, logs):
        bases = local_base_images(steps.say)
        with package_sources(steps.say, logs) as sources:
            yield steps, {**bases, **sources}


@pytest.mark.docker
def test_compose_stack_end_to_end(docker_host, tmp_path):
    steps, host_env = docker_host
    steps.times.clear()
    compose = compose_binary()
    steps.say(f"compose: {' '.join(compose)} ({run([*compose, 'version']).stdout.splitlines()[0].strip()})")
    project = checkout(tmp_path / "npid-search")
    added = readme_setup(project, host_env)
    stack = Stack(project, compose, added["NPID_API_KEY"], added["API_PORT"])
    try:
        _walk_through(stack, steps, project)
    finally:
        steps("down -v (containers, network and volumes removed)", lambda: stack("down", "-v", "--remove-orphans"))
        left = run(["docker", "volume", "ls", "-q", "--filter", f"label=com.docker.compose.project="
                                                                 f"{stack.env['COMPOSE_PROJECT_NAME']}"]).stdout
        steps.say(steps.table())
    assert left.strip() == "", f"volumes left behind: {left}"


def _walk_through(stack: Stack, steps: Steps, project: Path) -> None:
    steps("build the CPU image (docker compose build)", lambda: stack("build", "--force-rm", timeout=BUILD_TIMEOUT_S))
    # the watcher joins last (watched_folder): until then the folder changes only through the API, so the versions
    # the walk-through expects are the ones it makes
    steps("up -d", lambda: stack("up", "-d", "--scale", "watcher=0"))
    steps("api /health answers", lambda: stack.wait("api /health", lambda: stack.get("/health").status_code == 200))
    assert stack.get("/ready").status_code == 503  # no version yet: unhealthy until the first job publishes
    steps("worker answers a ping", lambda: stack.wait("worker ping", stack.worker_answers))

    def empty_folder_job() -> None:
        r = stack.post("/jobs/train")
        if r.status_code >= 400:  # refused up front is as good as a failed job, if it says why in one line
            assert 400 <= r.status_code < 500 and "\n" not in r.json()["detail"], r.text
            return
        job = stack.finished_job(r.json()["job_id"], 300)
        assert job["state"] == "failed" and "no images" in job["error"], job
        assert "\n" not in job["error"] and "Traceback" not in job["error"], job["error"]
        steps.say(f"empty folder: the job failed with: {job['error']}")

    steps("first job on an empty folder: a one-line reason", empty_folder_job)

    images = project / "images" / "shapes"
    synthetic.make_folder(images, per_class=12, size=32)
    query = images / "checker" / "0003.png"

    def train() -> dict:
        r = stack.post("/jobs/train", json={"epochs": 2, "image_size": 32})
        assert r.status_code == 202, r.text
        job = stack.finished_job(r.json()["job_id"])
        assert job["state"] == "succeeded", f"the job {job['state']}: {job['error']}"
        stack.wait("the api serves the new version", lambda: stack.version() == job["version"], 60)
        return job

    first_job = steps("train a first version (POST /jobs/train)", train)
    first = first_job["version"]

    def search() -> None:
        hits = stack.search(query)["results"]
        assert hits[0]["path"] == "shapes/checker/0003.png" and hits[0]["score"] > 0.99, hits

    steps("search", search)
    upload = project / "new.png"  # outside the image folder: a file put there is the watcher's to index
    synthetic.make_folder(project / "gen", per_class=1, size=32, seed=99)
    shutil.move(project / "gen" / "disc" / "0000.png", upload)

    def add() -> str:
        r = stack.post("/images", files={"file": ("new.png", upload.read_bytes(), "image/png")})
        assert r.status_code == 201, r.text
        added = r.json()
        stack.wait("the upload's version is served", lambda: stack.version() == added["version"], 60)
        hits = stack.search(upload)["results"]
        assert hits[0]["id"] == added["id"] and hits[0]["path"].startswith("uploads/"), hits
        return added["version"]

    second = steps("upload (POST /images)", add)
    assert second != first

    def restart_redis() -> None:
        stack("restart", "redis")
        stack.wait("the job record after the restart", lambda: stack.job(first_job["id"])["state"] == "succeeded")
        assert stack.job(first_job["id"]) == first_job

    steps("restart redis: job records survive", restart_redis)

    def restart_api() -> None:
        stack("restart", "api")
        stack.wait("the api after its restart", lambda: stack.version() is not None)
        assert stack.version() == second

    steps("restart the api: the same version is served", restart_api)

    def rollback() -> None:
        out = stack("exec", "-T", "api", "npid", "index", "rollback", "--store", "/data/artifacts")
        steps.say(f"rollback: {out.strip()}")
        stack.wait("the rolled-back version is served", lambda: stack.version() == first, 60)
        search()

    steps("roll back to the first version", rollback)

    def kill_worker_mid_job() -> None:
        r = stack.post("/jobs/train", json={"epochs": 500, "image_size": 32})
        assert r.status_code == 202, r.text
        job_id = r.json()["job_id"]
        stack.wait("the job trains", lambda: stack.job(job_id)["progress"].get("phase") == "training", 300)
        container = stack.container("worker-cpu")
        init_pid = run(["docker", "inspect", "-f", "{{.State.Pid}}", container]).stdout.strip()
        (celery_pid,) = children(int(init_pid))  # docker-init's one child: `npid worker`, i.e. Celery's main process
        os.kill(int(celery_pid), 9)  # what the OOM killer does; the container exits and Docker restarts it
        steps.say(f"SIGKILLed the worker (host pid {celery_pid}) of job {job_id}")
        t0 = time.monotonic()
        while (job := stack.job(job_id))["state"] == "running":
            search()  # the api keeps answering meanwhile
            assert time.monotonic() - t0 < LOCK_TTL_S + 120, job
            time.sleep(2)
        assert job["state"] == "failed" and job["error"].startswith("worker lost"), job
        assert stack.version() == first  # nothing half-done was published
        stack.wait("the restarted worker answers", stack.worker_answers)

    steps("SIGKILL the worker mid-job: the job fails (worker lost), the api answers", kill_worker_mid_job)

    def watched_folder() -> None:
        stack("up", "-d", "--scale", "watcher=1")
        synthetic.make_folder(project / "gen-dropped", per_class=1, size=32, seed=7)
        dropped = images.parent / "dropped" / "0000.png"
        dropped.parent.mkdir()
        shutil.move(project / "gen-dropped" / "disc" / "0000.png", dropped)
        stack.wait("the watcher indexes a file dropped into the folder",
                   lambda: stack.search(dropped)["results"][0]["path"] == "dropped/0000.png", 180)

    steps("the watcher service: a file copied into the folder is found by /search", watched_folder)


@pytest.mark.docker_gpu
def test_gpu_image_builds_and_imports_torch_and_faiss_on_the_cpu(docker_host, tmp_path):
    steps, host_env = docker_host
    steps.times.clear()
    project = checkout(tmp_path / "npid-search")
    args = [a for k, v in host_env.items() if k != "REDIS_IMAGE" for a in ("--build-arg", f"{k}={v}")]
    steps("build the GPU image", lambda: run(["nice", "-n", "10", "docker", "build", "-f", "docker/Dockerfile",
                                              "-t", "npid-search:gpu", *args, "."], cwd=project,
                                             timeout=BUILD_TIMEOUT_S))
    check = ("import faiss, torch; print('torch', torch.__version__, 'cuda build', torch.version.cuda, "
             "'faiss', faiss.__version__, 'gpus seen', faiss.get_num_gpus(), torch.cuda.is_available())")
    out = steps("import torch and faiss in it (CPU only)",
                lambda: run(["docker", "run", "--rm", "npid-search:gpu", "python", "-c", check]).stdout)
    steps.say(out.strip())
    assert "cuda build 13" in out and "faiss 1." in out
    steps.say(steps.table())
