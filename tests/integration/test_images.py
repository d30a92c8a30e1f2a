"""deploy/docker's images, short of building them (no Docker engine here): hadolint passes on both
Dockerfiles; every RUN step runs a script that CI runs too; the bases are pinned and the user is not
root; the runtime packages (`scripts/install-deps --runtime`) provide every library the built
binaries link, and the worker image copies every library of the torch wheel they load."""
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

BIN = Path(os.environ["HERD_BIN"])
SRC = Path(os.environ["HERD_SOURCE_DIR"])
DOCKER = SRC / "deploy" / "docker"
IMAGES = {"coordinator": ["herd-coordinator"], "worker": ["herd", "herd-coordinator"]}
BASE = {"libc6", "libstdc++6", "libgcc-s1"}  # in every Debian image


def instructions(image):
    """(INSTRUCTION, arguments) of a Dockerfile, continuation lines joined, comments dropped."""
    text = (DOCKER / f"Dockerfile.{image}").read_text()
    text = re.sub(r"\\\n", " ", "\n".join(l for l in text.splitlines() if not l.lstrip().startswith("#")))
    return [tuple(l.split(None, 1)) for l in text.splitlines() if l.strip()]


def ci_scripts():
    """The scripts CI runs: .ci/run's, and theirs in turn."""
    seen, todo = set(), [".ci/run"]
    while todo:
        for name in re.findall(r"\bscripts/([\w-]+)", (SRC / todo.pop()).read_text()):
            if name not in seen:
                seen.add(name)
                todo.append(f"scripts/{name}")
    return seen


def test_the_documented_builds_are_of_these_dockerfiles():
    text = (SRC / "docs" / "deploy.md").read_text()
    builds = re.findall(r"^docker build -f deploy/docker/Dockerfile\.(\w+) -t \S+:\d+\.\d+\.\d+ \.$", text, re.M)
    assert sorted(builds) == sorted(IMAGES)


@pytest.mark.parametrize("image", IMAGES)
def test_hadolint_passes(image):
    out = subprocess.run([str(Path(sys.executable).parent / "hadolint"), str(DOCKER / f"Dockerfile.{image}")],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr


@pytest.mark.parametrize("image", IMAGES)
def test_every_step_is_a_script_ci_runs_and_the_image_is_pinned_and_not_root(image):
    steps = instructions(image)
    ci = ci_scripts()
    assert {"install-deps", "build"} <= ci, ci
    runs = [args for op, args in steps if op == "RUN"]
    assert runs
    for run in runs:
        # The one flag a step may have: the proxy's CA as a build secret, in no layer.
        flags = re.match(r"((?:--\S+\s+)*)", run).group(1).split()
        assert set(flags) <= {"--mount=type=secret,id=ca"}, run
        for command in run[len(" ".join(flags)):].split("&&"):
            m = re.fullmatch(r"\s*(?:/opt/herd/)?scripts/([\w-]+)(\s.*)?", command)
            assert m and m.group(1) in ci, command
    # The build stage installs the smallest tier that builds the image's programs.
    tier = {"coordinator": "--coordinator", "worker": "--cuda"}[image]
    assert f"--mount=type=secret,id=ca scripts/install-deps {tier} && scripts/build {' '.join(IMAGES[image])}" in runs
    for op, args in steps:
        if op == "FROM":
            ref = args.split()[0]
            assert "@sha256:" in ref or re.fullmatch(r"[\w./-]+:[\w.-]+", ref) and not ref.endswith(":latest"), ref
    [user] = [args for op, args in steps if op == "USER"]
    assert re.fullmatch(r"[1-9]\d*:[1-9]\d*", user), user
    final = steps[max(i for i, (op, _) in enumerate(steps) if op == "FROM"):]
    assert ("RUN", f"/opt/herd/scripts/install-deps --runtime {image}") in final


def packages_providing(binary):
    """Debian packages of the libraries `binary` loads (ldd: the whole tree), and the libraries that
    come from the torch wheel instead."""
    out = subprocess.run(["ldd", str(binary)], capture_output=True, text=True, check=True).stdout
    packages, wheel = set(), []
    for path in re.findall(r"=> (/\S+)", out):
        if ".venv/" in path:
            wheel.append(Path(path).resolve())
            continue
        owner = subprocess.run(["dpkg", "-S", str(Path(path).resolve())], capture_output=True, text=True)
        if owner.returncode != 0:
            owner = subprocess.run(["dpkg", "-S", path], capture_output=True, text=True)
        assert owner.returncode == 0, f"{binary}: {path} belongs to no Debian package"
        packages.add(owner.stdout.split(":")[0])
    return packages, wheel


def closure(packages):
    """The packages and everything they depend on (as installed here)."""
    seen, todo = set(), list(packages)
    while todo:
        p = todo.pop()
        if p in seen:
            continue
        seen.add(p)
        out = subprocess.run(["dpkg-query", "-W", "-f", "${Depends}, ${Pre-Depends}", p], capture_output=True,
                             text=True)
        for alternative in re.split(r"[,|]", out.stdout if out.returncode == 0 else ""):
            name = alternative.strip().split(" ")[0].split(":")[0]
            if name:
                todo.append(name)
    return seen


@pytest.mark.parametrize("image", IMAGES)
def test_the_runtime_packages_provide_what_the_binaries_link(image):
    listed = subprocess.run([str(SRC / "scripts" / "install-deps"), "--runtime", image, "--list"],
                            capture_output=True, text=True, check=True).stdout.split()
    provided = closure(listed) | BASE
    copied = [re.sub(r"^\$SITE", "/opt/herd/.venv/lib/python3.11/site-packages", args.split()[1])
              for op, args in instructions(image) if op == "COPY" and args.startswith("--from=build $SITE")]
    for name in IMAGES[image]:
        packages, wheel = packages_providing(BIN / name)
        assert packages - provided == set(), f"{name} links libraries of packages {image}'s runtime lacks"
        if name == "herd-coordinator":
            assert wheel == [], f"herd-coordinator links libtorch or CUDA: {wheel}"
        for lib in wheel:  # at the same path in the image, under a directory it copies
            site = str(lib)[str(lib).index("/site-packages/"):]
            assert any(site.startswith(c[c.index("/site-packages/"):] + "/") for c in copied), lib


def test_the_worker_image_has_the_gloo_module_and_the_libraries_it_loads():
    # herd finds libherd_gloo.so in ../lib beside its binary (worker/comm/gloo.cc): both files of
    # the build's lib/ are copied to /opt/herd/lib, beside /opt/herd/bin.
    built = sorted(p.name for p in (BIN.parent / "lib").glob("libherd_gloo*.so"))
    assert built == ["libherd_gloo.so", "libherd_gloo_core.so"]
    copied = [args.split()[1:] for op, args in instructions("worker") if op == "COPY" and args.startswith("--from=build")]
    assert [f"/opt/herd/build/lib/{name}" for name in built] + ["/opt/herd/lib/"] in copied
    # The module's copy of libgloo lists no dependencies; herd loads Debian libgloo's first.
    libgloo = re.search(r"libgloo\.so\.0 .*=> (\S+)", subprocess.run(["ldconfig", "-p"], capture_output=True,
                                                                      text=True).stdout).group(1)
    packages, _ = packages_providing(libgloo)
    listed = subprocess.run([str(SRC / "scripts" / "install-deps"), "--runtime", "worker", "--list"],
                            capture_output=True, text=True, check=True).stdout.split()
    assert packages - closure(listed) - BASE == set()
