#!/usr/bin/env bash
# Checks deploy/docker/Dockerfile without needing Docker:
#   1. hadolint lints the Dockerfile (every rule, failing on any finding).
#   2. The build context is materialised exactly as `docker build -f
#      deploy/docker/Dockerfile .` sends it: the working tree filtered by
#      deploy/docker/Dockerfile.dockerignore, with Docker's matching rules
#      (docker-py's implementation of them, as its own builds use). The
#      context must hold every file the Dockerfile COPYs, and none of .git,
#      target/ or node_modules/.
#   3. `cargo check --locked --offline --bin ssekify` runs inside that copy, so
#      a file the code needs at compile time (include_str!, a workspace member,
#      a bench named in Cargo.toml) that the ignore file leaves out fails here.
#      Dependencies are fetched first (`cargo fetch --locked`, a no-op when they
#      are in ~/.cargo already). The copy lives in target/docker-context/
#      (left out of the context itself, removed by `cargo clean`) and keeps
#      the files' timestamps, so reruns are incremental; it builds into the
#      repository's target directory, whose dependencies `cargo clippy` in
#      scripts/test.sh has already checked (only the crate itself is checked
#      again: seconds, not the ~45 s of checking every dependency). A path that
#      climbs three levels above the context's root would reach the checkout:
#      nothing in the tree does that.
#   4. Only when a Docker daemon answers (`docker info`): build the image, run
#      it, wait for its HEALTHCHECK to say healthy, GET /healthz from outside,
#      and check that it runs as uid 10001. Without a daemon this step is
#      skipped with a note (never a failure: CI has no daemon).
#
#   scripts/check-docker-context.sh
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
repo=$PWD

step() { printf '\n==> %s\n' "$*"; }

tools=$(scripts/deploy-tools.sh)

step "hadolint deploy/docker/Dockerfile"
"$tools/hadolint" --version
"$tools/hadolint" --failure-threshold info deploy/docker/Dockerfile
echo "hadolint: no findings"

step "materialising the build context (deploy/docker/Dockerfile.dockerignore)"
work="$repo/target/docker-context"
context="$work/context"
mkdir -p "$work"
"$tools/python" - "$repo" "$context" <<'PY'
import os, re, shutil, sys
from docker.utils.build import exclude_paths

root, dest = sys.argv[1], sys.argv[2]
dockerfile = "deploy/docker/Dockerfile"
# The ignore file is read as the Docker CLI reads one: a line per pattern,
# blank lines and lines starting with # skipped, whitespace trimmed.
with open(os.path.join(root, dockerfile + ".dockerignore")) as f:
    patterns = [l.strip() for l in f.read().splitlines()]
patterns = [p for p in patterns if p and not p.startswith("#")]
# exclude_paths adds "!<dockerfile>" (the CLI sends the Dockerfile along);
# BuildKit reads the Dockerfile separately, so it is left out again below.
kept = set(exclude_paths(root, patterns, dockerfile=dockerfile)) - {dockerfile}

# Rebuild the copy, keeping unchanged files (and their mtimes: cargo's
# fingerprints) and removing what is no longer in the context.
files = {p for p in kept if not os.path.isdir(os.path.join(root, p)) or os.path.islink(os.path.join(root, p))}
for dirpath, dirnames, filenames in os.walk(dest, topdown=False):
    for name in filenames:
        full = os.path.join(dirpath, name)
        if os.path.relpath(full, dest) not in files:
            os.remove(full)
    for name in dirnames:
        full = os.path.join(dirpath, name)
        if not os.listdir(full):
            os.rmdir(full)
size = 0
for rel in sorted(files):
    src, dst = os.path.join(root, rel), os.path.join(dest, rel)
    os.makedirs(os.path.dirname(dst), exist_ok=True)
    if os.path.islink(src):
        if os.path.lexists(dst):
            os.remove(dst)
        os.symlink(os.readlink(src), dst)
        continue
    st = os.stat(src)
    size += st.st_size
    try:
        same = os.stat(dst).st_mtime_ns == st.st_mtime_ns and os.stat(dst).st_size == st.st_size
    except FileNotFoundError:
        same = False
    if not same:
        shutil.copy2(src, dst)

problems = []
tops = sorted({p.split("/")[0] for p in files})
for banned in (".git", "target", "node_modules"):
    hits = [p for p in files if banned in p.split("/")]
    if hits:
        problems.append(f"{banned} is in the build context: {hits[:3]}")
# Every COPY from the context (no --from) names files that are there.
with open(os.path.join(root, dockerfile)) as f:
    text = f.read().replace("\\\n", " ")
for line in text.splitlines():
    words = line.split()
    if not words or words[0].upper() != "COPY" or any(w.startswith("--from") for w in words):
        continue
    sources = [w for w in words[1:] if not w.startswith("--")][:-1]
    for src in sources:
        if src in (".", "./"):
            continue
        if src.rstrip("/") not in files and not any(p.startswith(src.rstrip("/") + "/") for p in files):
            problems.append(f"the Dockerfile copies {src}, which is not in the build context")
# Every script a RUN line starts from the context is there; for
# scripts/build-pgo.sh (--build-arg PGO=1), so are the load scenarios it
# trains on and what they source.
needed = set()
for line in text.splitlines():
    if line.split()[:1] == ["RUN"]:
        needed.update(re.findall(r"(?<![\w/])(scripts/[\w.-]+)", line))
if "scripts/build-pgo.sh" in needed:
    with open(os.path.join(root, "scripts/build-pgo.sh")) as f:
        trained = re.findall(r"^train (\w+)", f.read(), re.M)
    needed.update(f"loadtest/scenarios/{name}.sh" for name in trained)
    needed.add("loadtest/scenarios/lib.sh")
for path in sorted(needed - files):
    problems.append(f"the Dockerfile runs {path} (or what it needs), which is not in the build context")
limit = 16 * 1024 * 1024
if size > limit:
    problems.append(f"the build context is {size} bytes (more than {limit}): does the ignore file miss something big?")
print(f"context: {len(files)} files, {size / 1024:.0f} KiB; top level: {' '.join(tops)}")
if problems:
    for p in problems:
        print(f"error: {p}", file=sys.stderr)
    sys.exit(1)
PY

step "cargo check --locked --offline --bin ssekify in the build context"
# Fetch in the repository (the context's Cargo.lock is the same file), then
# check offline in the copy: only what the context holds is used.
# SSEKIFY_COMMIT is set as the image build sets it: cargo hashes the copy as
# the same package as the repository (paths are relative to the workspace),
# so without it build.rs's `unknown` (the copy has no .git) would be kept
# for the repository's next builds too, and `--version` would say so.
cargo fetch --locked --quiet
(cd "$context" && SSEKIFY_COMMIT=context-check CARGO_TARGET_DIR="$repo/target" \
    cargo check --locked --offline --bin ssekify)

step "docker build and run (only with a Docker daemon)"
if ! command -v docker >/dev/null 2>&1 || ! docker info >/dev/null 2>&1; then
  echo "no Docker daemon here (docker info fails): the image build and run are SKIPPED;"
  echo "the lint and the check in the exact build context above are what ran"
  exit 0
fi
version=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)
image="ssekify:$version"
docker build -f deploy/docker/Dockerfile -t "$image" .
name="ssekify-check-$$"
key=$(od -An -N16 -tx1 /dev/urandom | tr -d ' \n')
docker run -d --rm --name "$name" -p 127.0.0.1::8080 -e SSEKIFY_API_KEY="$key" "$image" >/dev/null
trap 'docker rm -f "$name" >/dev/null 2>&1 || true' EXIT
for _ in $(seq 60); do
  health=$(docker inspect --format '{{.State.Health.Status}}' "$name")
  [ "$health" = healthy ] && break
  sleep 1
done
echo "HEALTHCHECK: $health"
[ "$health" = healthy ] || { docker logs "$name"; exit 1; }
port=$(docker port "$name" 8080/tcp | head -1 | sed 's/.*://')
curl -fsS "http://127.0.0.1:$port/healthz"
echo
uid=$(docker exec "$name" id -u)
[ "$uid" = 10001 ] || { echo "error: the container runs as uid $uid, not 10001" >&2; exit 1; }
echo "image $image builds, runs as uid $uid, and answers /healthz"
