#!/usr/bin/env python3
"""Checks that the container images install every runtime library the built binaries need.

For each built binary (marlin-server, marlin-cli, marlin-loadgen; missing ones are skipped) it maps
every library `ldd` resolves to the Debian package that owns it (`dpkg -S`) and checks, against
deploy/docker/Dockerfile.cpu (Debian bookworm, the same distribution as CI):
  - every library the binary links directly (DT_NEEDED) is owned by a package the runtime stage
    installs explicitly, or by the C/C++ runtime of every base image (libc6, libgcc-s1, libstdc++6);
  - every library it loads at all is owned by one of those packages or by one of their
    dependencies (apt installs those);
  - deploy/docker/runtime-packages.sh, which the GPU Dockerfile uses to choose its runtime
    packages, names exactly the explicitly needed packages.
It also checks both Dockerfiles statically: multi-stage, a non-root USER, the three binaries only,
a CUDA architectures build argument, devel and runtime CUDA images of the same version.

Exit status: 0 passed, 1 failed, 77 no binary built yet (the static checks passed).
"""

import argparse
import os
import pathlib
import re
import subprocess
import sys

SYSTEM = {"libc6", "libgcc-s1", "libstdc++6"}
CUDA = re.compile(r"^(cuda-|libcu|libnv|libnccl)")
BINARIES = ("marlin-server", "marlin-cli", "marlin-loadgen")
SCRIPT = pathlib.Path(__file__).resolve().parents[2] / "deploy" / "docker" / "runtime-packages.sh"

failures = []
passed = 0


def check(ok, what):
    global passed
    if ok:
        passed += 1
    else:
        failures.append(what)
        print(f"FAIL: {what}")
    return ok


def run(*cmd):
    return subprocess.run(cmd, capture_output=True, text=True)


def owner(path):
    """The Debian package owning a library file, trying the /lib and /usr/lib spellings."""
    real = os.path.realpath(path)
    candidates = []
    for p in (path, real):
        candidates += [p, "/usr" + p if not p.startswith("/usr/") else p[4:]]
    for candidate in candidates:
        out = run("dpkg", "-S", candidate)
        if out.returncode == 0:
            return out.stdout.splitlines()[0].split(":")[0]
    return None


def libraries(binary):
    """{soname: resolved path or None} from ldd, and the sonames the binary names itself."""
    resolved = {}
    for line in run("ldd", str(binary)).stdout.splitlines():
        m = re.match(r"\s*(\S+) => (not found|\S+)", line)
        if m:
            resolved[m.group(1)] = None if m.group(2) == "not found" else m.group(2)
    needed = re.findall(r"^\s*NEEDED\s+(\S+)", run("objdump", "-p", str(binary)).stdout, re.M)
    return resolved, needed


def depends_closure(packages):
    """The installed packages reachable from `packages` through Depends and Pre-Depends."""
    seen, todo = set(), list(packages)
    while todo:
        pkg = todo.pop()
        if pkg in seen:
            continue
        seen.add(pkg)
        out = run("dpkg-query", "-W", "-f=${Depends}, ${Pre-Depends}", pkg)
        if out.returncode != 0:
            continue
        for alternative in re.split(r"[,|]", out.stdout):
            name = alternative.strip().split(" ")[0].split(":")[0]
            if name:
                todo.append(name)
    return seen


def stages(dockerfile):
    """[(FROM line, [instruction lines])], continuation lines joined, comments dropped."""
    text = re.sub(r"^\s*#.*\n", "", dockerfile.read_text(), flags=re.M)
    text = text.replace("\\\n", " ")
    result = []
    for line in text.splitlines():
        if re.match(r"FROM\s", line, re.I):
            result.append((line, []))
        elif result and line.strip():
            result[-1][1].append(line.strip())
    return result


def apt_installs(lines):
    """The package names given to `apt-get install` in RUN instructions."""
    packages = set()
    for line in lines:
        for m in re.finditer(r"apt-get install((?:\s+[^&|;\s]+)+)", line):
            packages.update(t for t in m.group(1).split() if not t.startswith("-"))
    return packages


def check_dockerfile(path, gpu):
    where = path.name
    st = stages(path)
    if not check(len(st) >= 2, f"{where}: multi-stage (build, then runtime)"):
        return set()
    runtime_from, runtime = st[-1]
    text = " ".join(runtime)
    user = [l for l in runtime if l.upper().startswith("USER ")]
    check(user and not re.match(r"USER\s+(root|0)\b", user[-1], re.I), f"{where}: non-root USER")
    copies = [l for l in runtime if l.upper().startswith("COPY --FROM")]
    check(copies and all(("/out/" in l) for l in copies),
          f"{where}: the runtime stage copies only the build's /out (the binaries)")
    build_text = " ".join(" ".join(lines) for _, lines in st[:-1])
    for b in BINARIES:
        check(f"--target marlin-server marlin-cli marlin-loadgen" in build_text
              and f"/build/bin/{b}" in build_text, f"{where}: builds and installs {b}")
    check(re.search(r"ldd .*not found", text) is not None,
          f"{where}: the image build fails on a missing library")
    check(not apt_installs(runtime) & {"cmake", "g++", "build-essential", "libgrpc++-dev"},
          f"{where}: no build tools in the runtime stage")
    if gpu:
        froms = [f for f, _ in st]
        check(re.search(r"nvidia/cuda:\$\{CUDA_VERSION\}-devel", froms[0]) is not None
              and re.search(r"nvidia/cuda:\$\{CUDA_VERSION\}-runtime", runtime_from) is not None,
              f"{where}: devel build stage and runtime stage of the same CUDA_VERSION")
        check(re.search(r"ARG CUDA_VERSION=13\.", path.read_text()) is not None,
              f"{where}: CUDA 13 by default")
        check("ARG CUDA_ARCHITECTURES" in build_text
              and "MARLIN_CUDA_ARCHITECTURES=\"${CUDA_ARCHITECTURES}\"" in build_text,
              f"{where}: a CUDA_ARCHITECTURES build argument reaches CMake")
        check("runtime-packages.sh" in build_text and "runtime-packages.txt" in text,
              f"{where}: installs the packages runtime-packages.sh derives from the binaries")
    else:
        check(re.search(r"debian:\$\{DEBIAN_VERSION\}", runtime_from) is not None
              and "ARG DEBIAN_VERSION=bookworm" in path.read_text(),
              f"{where}: a Debian bookworm base")
    return apt_installs(runtime)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dockerfile", action="append", type=pathlib.Path, required=True)
    parser.add_argument("binaries", nargs="*", type=pathlib.Path)
    args = parser.parse_args()

    listed = set()
    for dockerfile in args.dockerfile:
        gpu = dockerfile.name == "Dockerfile"
        packages = check_dockerfile(dockerfile, gpu)
        if not gpu:
            listed = packages

    built = [b for b in args.binaries if b.is_file()]
    for b in args.binaries:
        if not b.is_file():
            print(f"NOTE: {b} not built; skipped")
    if built:
        closure = depends_closure(listed | SYSTEM)
        direct = set()
        for binary in built:
            resolved, needed = libraries(binary)
            for soname, path in resolved.items():
                if soname.startswith("ld-linux") or (path or "").startswith("/usr/local/cuda"):
                    continue  # the loader (libc6); the toolkit's libraries (CUDA runtime image)
                if path is None:
                    check(False, f"{binary.name}: {soname} not found by ldd")
                    continue
                pkg = owner(path)
                if not check(pkg is not None, f"{binary.name}: {path} belongs to a package"):
                    continue
                if CUDA.match(pkg):
                    continue
                if soname in needed:
                    direct.add(pkg)
                    check(pkg in listed or pkg in SYSTEM,
                          f"{binary.name}: {soname} ({pkg}) is installed by Dockerfile.cpu")
                else:
                    check(pkg in closure,
                          f"{binary.name}: {soname} ({pkg}) comes with Dockerfile.cpu's packages")
        out = run(str(SCRIPT), *map(str, built))
        script_packages = set(out.stdout.split())
        check(out.returncode == 0 and script_packages == direct - SYSTEM,
              f"runtime-packages.sh names {sorted(script_packages)}, "
              f"expected {sorted(direct - SYSTEM)} ({out.stderr.strip()})")
        if {b.name for b in built} >= set(BINARIES):
            unused = listed - direct - {"ca-certificates"}
            check(not unused, f"Dockerfile.cpu installs only needed packages "
                  f"(unneeded: {sorted(unused)})")

    print(f"{passed} passed, {len(failures)} failed")
    if failures:
        return 1
    if not built:
        print("SKIP: no binary built yet; only the Dockerfiles were checked")
        return 77
    return 0


if __name__ == "__main__":
    sys.exit(main())
