"""What the deploy tests need from the host, made when missing: a Docker engine, base images, package sources.

- An engine: the one `docker info` reaches, or `dockerd` started here as root (and stopped afterwards).
- Base images: the Dockerfile's upstream defaults when Docker Hub answers; otherwise local stand-ins from
  Debian's packages: a minimal bookworm (debootstrap + `docker import`, with python3, python3-venv and this
  host's CA certificates) for CUDA_BASE and CPU_BASE, and a Redis image with Debian's redis-server.
- Package sources: PyPI and PyTorch's CPU wheel index when reachable; otherwise the local indexes pip on this
  host is configured with (`file://.../simple`), served over HTTP to the build on the docker bridge.

Everything is handed to compose the way a user would: as variables in .env (CPU_BASE, REDIS_IMAGE,
PIP_INDEX_URL, ...), so the Dockerfile and the compose files stay the same on every host.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

CACHE = Path(os.environ.get("NPID_DEPLOY_CACHE", "~/.cache/npid-search/deploy")).expanduser()
LOCAL_BASE = "npid-local/bookworm:latest"
LOCAL_REDIS = "npid-local/redis:bookworm"
DEBIAN_MIRROR = "http://deb.debian.org/debian"
PYTORCH_CPU_INDEX = "https://download.pytorch.org/whl/cpu/"
HOST_CA_DIR = Path("/usr/local/share/ca-certificates")
# a fixed port: the URLs are build args, part of the layer cache's key, so they must not change between runs
INDEX_PORT = 8765
REDIS_DOCKERFILE = f"""FROM {LOCAL_BASE}
RUN apt-get update && apt-get install -y --no-install-recommends redis-server redis-tools \\
 && rm -rf /var/lib/apt/lists/* && mkdir -p /data
WORKDIR /data
CMD ["redis-server"]
"""

Say = Callable[[str], None]


def run(cmd: list[str], timeout: float = 600, **kw) -> subprocess.CompletedProcess:
    """Run a command; on failure raise with its output (the tail: builds print a lot)."""
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, **kw)
    if r.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({r.returncode}):\n{r.stdout[-4000:]}\n{r.stderr[-4000:]}")
    return r


def docker_answers() -> bool:
    try:
        return subprocess.run(["docker", "info"], capture_output=True, timeout=30).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


@contextlib.contextmanager
def docker_engine(say: Say, logs: Path) -> Iterator[None]:
    """Use the engine that answers, or start dockerd (root only) for the duration and stop it afterwards."""
    if docker_answers():
        say("a Docker engine answers: using it")
        yield
        return
    if os.geteuid() != 0 or shutil.which("dockerd") is None:
        raise RuntimeError("no Docker engine answers, and dockerd cannot be started here (needs root and "
                           "Debian's docker.io: apt-get install docker.io)")
    log = logs / "dockerd.log"
    say(f"no Docker engine answered: starting dockerd as root (log: {log}); it is stopped again at the end")
    with log.open("ab") as out:
        proc = subprocess.Popen(["dockerd"], stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 90
        while not docker_answers():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"dockerd did not come up (exit {proc.poll()}); see {log}")
            time.sleep(1)
        yield
    finally:
        say("stopping the dockerd started here")
        proc.terminate()  # dockerd stops its containers and its containerd
        try:
            proc.wait(timeout=120)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def image_exists(image: str) -> bool:
    return subprocess.run(["docker", "image", "inspect", image], capture_output=True).returncode == 0


def can_pull(image: str) -> bool:
    if image_exists(image):
        return True
    try:
        return subprocess.run(["docker", "pull", image], capture_output=True, timeout=120).returncode == 0
    except subprocess.TimeoutExpired:
        return False


def local_base_images(say: Say, upstream_probe: str = "ubuntu:24.04") -> dict[str, str]:
    """{} when Docker Hub serves the upstream images; else .env entries naming local Debian-built ones."""
    if can_pull(upstream_probe):
        say(f"{upstream_probe} pulls: the Dockerfile's upstream base images are used")
        return {}
    say(f"{upstream_probe} cannot be pulled: using local base images built from Debian's packages")
    if not image_exists(LOCAL_BASE):
        rootfs = CACHE / "bookworm-rootfs"
        shutil.rmtree(rootfs, ignore_errors=True)
        rootfs.mkdir(parents=True)
        say(f"debootstrap bookworm (python3, python3-venv) into {rootfs}")
        run(["nice", "-n", "10", "debootstrap", "--variant=minbase", "--include=python3,python3-venv,ca-certificates",
             "bookworm", str(rootfs), DEBIAN_MIRROR], timeout=1800)
        for ca in sorted(HOST_CA_DIR.glob("*.crt")):  # this host's TLS interception, if any, trusted in builds too
            shutil.copy(ca, rootfs / "usr/local/share/ca-certificates" / ca.name)
        run(["chroot", str(rootfs), "update-ca-certificates"])
        tar = subprocess.Popen(["tar", "-C", str(rootfs), "-c", "."], stdout=subprocess.PIPE)
        run(["docker", "import", "--change", 'CMD ["/bin/bash"]',
             "--change", "ENV PIP_CERT=/etc/ssl/certs/ca-certificates.crt", "-", LOCAL_BASE], stdin=tar.stdout)
        tar.wait()
        shutil.rmtree(rootfs)
    if not image_exists(LOCAL_REDIS):
        say(f"building {LOCAL_REDIS} (Debian's redis-server)")
        run(["nice", "-n", "10", "docker", "build", "-t", LOCAL_REDIS, "-"], input=REDIS_DOCKERFILE, timeout=900)
    return {"CUDA_BASE": LOCAL_BASE, "CPU_BASE": LOCAL_BASE, "REDIS_IMAGE": LOCAL_REDIS}


def reachable(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=15):
            return True
    except (urllib.error.URLError, OSError):
        return False


def pip_local_indexes() -> list[Path]:
    """The `file://` package indexes of this host's pip configuration (folders holding simple/<name>/)."""
    r = subprocess.run([sys.executable, "-m", "pip", "config", "list"], capture_output=True, text=True)
    found = []
    for line in r.stdout.splitlines():
        if "index-url" in line:
            for word in line.split("=", 1)[1].strip("'\" ").split():
                if word.startswith("file://") and Path(word[7:]).name == "simple":
                    found.append(Path(word[7:]).parent)
    return found


def bridge_gateway() -> str:
    """The host's address on Docker's default bridge: where a build's RUN step reaches the host."""
    out = run(["docker", "network", "inspect", "bridge"]).stdout
    config = json.loads(out)[0]["IPAM"]["Config"][0]
    if "Gateway" in config:
        return config["Gateway"]
    # newer engines may list only the subnet: the bridge takes its first address (172.17.0.1 by default)
    return str(next(ipaddress.ip_network(config["Subnet"]).hosts()))


@contextlib.contextmanager
def package_sources(say: Say, logs: Path) -> Iterator[dict[str, str]]:
    """{} when PyPI and PyTorch's CPU index answer; else .env entries for the local indexes, served meanwhile."""
    if reachable(PYTORCH_CPU_INDEX):
        say("PyTorch's CPU wheel index answers: the Dockerfile's package sources are used")
        yield {}
        return
    indexes = pip_local_indexes()
    with_torch = [i for i in indexes if (i / "simple" / "torch").is_dir()]
    if not with_torch:
        raise RuntimeError(f"{PYTORCH_CPU_INDEX} is unreachable and pip has no local index holding torch")
    root = CACHE / "served-indexes"
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    for index in indexes:
        (root / index.name).symlink_to(index)
    host, port = bridge_gateway(), INDEX_PORT
    say(f"{PYTORCH_CPU_INDEX} is unreachable: serving pip's local indexes {[str(i) for i in indexes]} "
        f"to the build at http://{host}:{port}/")
    with (logs / "index-server.log").open("ab") as out:
        server = subprocess.Popen([sys.executable, "-m", "http.server", str(port), "--bind", host,
                                   "--directory", str(root)], stdout=out, stderr=subprocess.STDOUT)
    urls = {i: f"http://{host}:{port}/{i.name}/simple" for i in indexes}
    torch_index = urls[with_torch[0]]
    try:
        deadline = time.monotonic() + 20
        while not reachable(torch_index + "/torch/"):
            if server.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the index server did not start (see {logs / 'index-server.log'})")
            time.sleep(0.2)
        # local first (pip takes the first of equal candidates), PyPI for what they lack
        others = [u for i, u in urls.items() if i != with_torch[0]]
        yield {"PIP_INDEX_URL": torch_index, "PIP_EXTRA_INDEX_URL": " ".join([*others, "https://pypi.org/simple"]),
               "PIP_TRUSTED_HOST": host, "TORCH_INDEX_URL": torch_index}
    finally:
        server.terminate()
        server.wait(timeout=30)
