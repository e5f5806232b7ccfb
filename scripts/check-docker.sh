#!/usr/bin/env bash
# Static checks of docker/Dockerfile and docker/compose.yml against the workspace.
# No Docker engine is needed: this parses the files (and the Cargo manifests) and
# fails with a message for each mismatch, e.g. a workspace member the image does
# not copy, a COPY of a path that does not exist, or a compose env key missing.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"

if ! python3 -c 'import yaml' 2>/dev/null; then
    echo "check-docker: PyYAML missing; installing it with pip" >&2
    python3 -m pip install --quiet pyyaml >&2
fi

# With the compose plugin (not on CI machines), let it validate the file too.
if docker compose version >/dev/null 2>&1; then
    docker compose -f docker/compose.yml config --quiet
    echo "ok   docker compose config accepts docker/compose.yml"
fi

exec python3 - "$ROOT" <<'PY'
import fnmatch, os, re, shlex, sys
import yaml
try:
    import tomllib
except ImportError:  # Python < 3.11
    tomllib = None

root = sys.argv[1]
failures = []

def ok(msg):
    print(f"ok   {msg}")

def fail(msg):
    print(f"FAIL {msg}")
    failures.append(msg)

def check(cond, msg, why=""):
    if cond:
        ok(msg)
    else:
        fail(msg + (f": {why}" if why else ""))
    return cond

def path(*p):
    return os.path.join(root, *p)

def load_toml(rel):
    text = open(path(rel), encoding="utf-8").read()
    if tomllib:
        return tomllib.loads(text)
    raise SystemExit("check-docker: needs Python 3.11+ (tomllib)")

# ------------------------------------------------------------------ workspace
ws = load_toml("Cargo.toml")
members = ws.get("workspace", {}).get("members", [])
rust_version = ws.get("workspace", {}).get("package", {}).get("rust-version")
packages = {}  # package name -> (member dir, manifest)
for m in members:
    manifest_path = os.path.join(m, "Cargo.toml")
    if not os.path.isfile(path(manifest_path)):
        fail(f"workspace member {m} has no {manifest_path}")
        continue
    manifest = load_toml(manifest_path)
    name = manifest.get("package", {}).get("name")
    if name:
        packages[name] = (m, manifest)

def bin_names(member, manifest):
    bins = [b["name"] for b in manifest.get("bin", []) if "name" in b]
    if not bins and os.path.isfile(path(member, "src", "main.rs")):
        bins = [manifest["package"]["name"]]
    return bins

# ------------------------------------------------------------------ Dockerfile
DOCKERFILE = "docker/Dockerfile"
instructions = []  # (stage index, keyword, args)
stages = []        # (image, alias)
buf = ""
for raw in open(path(DOCKERFILE), encoding="utf-8"):
    line = raw.rstrip("\n")
    if not buf and (not line.strip() or line.lstrip().startswith("#")):
        continue
    if line.rstrip().endswith("\\"):
        buf += line.rstrip()[:-1] + " "
        continue
    buf += line
    kw, _, args = buf.strip().partition(" ")
    kw = kw.upper()
    args = args.strip()
    buf = ""
    if kw == "FROM":
        parts = args.split()
        alias = parts[2] if len(parts) >= 3 and parts[1].upper() == "AS" else None
        stages.append((parts[0], alias))
    instructions.append((len(stages) - 1, kw, args))

final = len(stages) - 1
check(len(stages) >= 2, "Dockerfile is multi-stage", f"{len(stages)} FROM line(s)")
aliases = {a for _, a in stages if a}

def final_stage(kw):
    return [a for s, k, a in instructions if s == final and k == kw]

# Builder toolchain new enough for the workspace's rust-version, same Debian release as runtime.
builder_image = stages[0][0] if stages else ""
m = re.match(r"rust:(\d+)\.(\d+)", builder_image)
if rust_version and m:
    want = tuple(int(x) for x in rust_version.split(".")[:2])
    check((int(m[1]), int(m[2])) >= want, f"builder {builder_image} satisfies rust-version {rust_version}")
else:
    fail(f"builder image {builder_image!r} is not a versioned rust:X.Y image")
if stages:
    runtime_image = stages[final][0]
    suite = lambda img: next((s for s in ("bookworm", "bullseye", "trixie") if s in img), None)
    check(suite(builder_image) and suite(builder_image) == suite(runtime_image),
          f"builder and runtime share a Debian release ({builder_image} / {runtime_image})",
          "the binary would be linked against another glibc/libssl")

# COPY sources from the build context exist, and are not excluded by .dockerignore.
ignore = []
if os.path.isfile(path(".dockerignore")):
    ignore = [l.strip().rstrip("/") for l in open(path(".dockerignore")) if l.strip() and not l.startswith("#")]
copied = set()
copy_from_builder = []
for stage, kw, args in instructions:
    if kw not in ("COPY", "ADD"):
        continue
    words = shlex.split(args)
    flags = [w for w in words if w.startswith("--")]
    rest = [w for w in words if not w.startswith("--")]
    srcs, dest = rest[:-1], rest[-1]
    from_flag = next((f.split("=", 1)[1] for f in flags if f.startswith("--from=")), None)
    if from_flag:
        copy_from_builder.append((from_flag, srcs, dest))
        continue
    for src in srcs:
        norm = os.path.normpath(src)
        copied.add(norm)
        check(os.path.exists(path(norm)), f"COPY source {src} exists in the repo",
              "it is missing, so docker build would fail")
        for pat in ignore:
            if fnmatch.fnmatch(norm, pat) or norm.startswith(pat + "/"):
                fail(f"COPY source {src} is excluded by .dockerignore pattern {pat!r}")

for f in ("Cargo.toml", "Cargo.lock"):
    check(f in copied or "." in copied, f"Dockerfile copies {f}")
for mem in members:
    check(os.path.normpath(mem) in copied or "." in copied,
          f"Dockerfile copies workspace member {mem}", "cargo cannot load the workspace without it")

# The cargo build: --locked, a package that exists, and the binary it makes.
runs = " ".join(a for _, k, a in instructions if k == "RUN")
build = re.search(r"cargo build([^&;|]*)", runs)
pkg = None
if check(build is not None, "Dockerfile runs cargo build"):
    flags = build.group(1)
    check("--locked" in flags, "cargo build uses --locked")
    check("--release" in flags, "cargo build uses --release")
    pm = re.search(r"(?:-p|--package)[ =](\S+)", flags)
    if check(pm is not None, "cargo build names a package with -p"):
        pkg = pm.group(1)
        check(pkg in packages, f"package {pkg} is a workspace member",
              f"members define {sorted(packages)}")
bins = bin_names(*packages[pkg]) if pkg in packages else []
entry = " ".join(final_stage("ENTRYPOINT"))
entry_words = re.findall(r'"([^"]+)"', entry) or entry.split()
binary_copies = [(f, s, d) for f, s, d in copy_from_builder if f in aliases or f.isdigit()]
if check(len(binary_copies) >= 1, "runtime stage copies the binary from the builder stage"):
    for f, srcs, dest in binary_copies:
        for src in srcs:
            name = os.path.basename(src)
            check(name in bins, f"copied binary {src} is built by package {pkg}", f"its bins are {bins}")
            check(name == "conveyor", f"copied binary is named conveyor ({name})")
            check("/release/" in src, f"copied binary {src} is the release build")
        check(dest.rstrip("/").endswith("/conveyor") or dest.endswith("/bin/") or dest.endswith("/bin"),
              f"binary installed as {dest}")
check(entry_words[:1] == ["conveyor"], "ENTRYPOINT runs conveyor", f"ENTRYPOINT is {entry!r}")

# Config file copied where CMD points.
cmd = " ".join(final_stage("CMD"))
cm = re.search(r'"--config",\s*"([^"]+)"', cmd)
config_dests = [shlex.split(a)[-1] for s, k, a in instructions
                if s == final and k == "COPY" and "config.toml" in a and "--from" not in a]
if check(cm is not None, "CMD passes --config"):
    check(cm.group(1) in config_dests, f"--config {cm.group(1)} is the config.toml COPY destination",
          f"config.toml is copied to {config_dests}")

# Runtime hygiene.
hc = final_stage("HEALTHCHECK")
check(bool(hc) and not hc[-1].upper().startswith("NONE"), "runtime stage has a HEALTHCHECK")
expose = " ".join(final_stage("EXPOSE")).split()
check("8000" in [e.split("/")[0] for e in expose], "runtime stage EXPOSEs 8000")
users = final_stage("USER")
if check(bool(users), "runtime stage sets USER"):
    user = users[-1].split(":")[0]
    if user.isdigit():
        uid = int(user)
    else:
        um = re.search(r"useradd[^&;]*--uid[ =](\d+)[^&;]*\s" + re.escape(user) + r"\b", runs)
        uid = int(um.group(1)) if um else (0 if user == "root" else None)
    check(uid is not None and uid != 0, f"USER {users[-1]} is a non-root uid ({uid})")
    if uid:
        check(re.search(rf"useradd[^&;]*--uid[ =]{uid}\b", runs) is not None,
              f"uid {uid} is created with useradd in the image")

# ------------------------------------------------------------------ compose.yml
COMPOSE = "docker/compose.yml"
compose = yaml.safe_load(open(path(COMPOSE), encoding="utf-8"))
services = compose.get("services", {}) or {}
for name in ("kafka", "postgres", "redis", "conveyor", "kafka-ui"):
    check(name in services, f"compose defines service {name}")
images = {"kafka": "apache/kafka:", "postgres": "postgres:", "redis": "redis:", "kafka-ui": "provectuslabs/kafka-ui"}
for name, prefix in images.items():
    img = (services.get(name) or {}).get("image", "")
    check(img.startswith(prefix), f"{name} uses image {prefix}*", f"got {img!r}")

def env_of(svc):
    env = (services.get(svc) or {}).get("environment", {}) or {}
    if isinstance(env, list):
        env = dict(e.split("=", 1) if "=" in e else (e, None) for e in env)
    return {k: (None if v is None else str(v)) for k, v in env.items()}

conv = services.get("conveyor") or {}
build_cfg = conv.get("build") or {}
if isinstance(build_cfg, str):
    build_cfg = {"context": build_cfg}
context = os.path.normpath(os.path.join(root, "docker", build_cfg.get("context", ".")))
check(context == os.path.normpath(root), "conveyor build context is the repo root", f"got {context}")
dockerfile = build_cfg.get("dockerfile", "Dockerfile")
check(os.path.normpath(dockerfile) == DOCKERFILE, f"conveyor build uses {DOCKERFILE}", f"got {dockerfile!r}")
check(os.path.isfile(os.path.join(context, dockerfile)), f"{dockerfile} exists in the build context")

env = env_of("conveyor")
expected_env = {
    "CONVEYOR_LOG__BACKEND": "kafka",
    "CONVEYOR_LOG__KAFKA__BROKERS": "kafka:9092",
    "CONVEYOR_STORE__URL": "postgres://conveyor:conveyor@postgres:5432/conveyor",
    "CONVEYOR_CACHE__URL": "redis://redis:6379",
    "CONVEYOR_AUTH__JWT_SECRET": None,  # any non-empty value
}
for key, want in expected_env.items():
    got = env.get(key)
    if want is None:
        check(bool(got), f"conveyor env {key} is set")
    else:
        check(got == want, f"conveyor env {key}={want}", f"got {got!r}")

ports = [str(p) for p in conv.get("ports", [])]
check(any(p.endswith("8000:8000") for p in ports), "conveyor publishes 8000:8000", f"ports {ports}")
deps = conv.get("depends_on") or {}
for dep in ("kafka", "postgres", "redis"):
    cond = deps.get(dep, {}).get("condition") if isinstance(deps, dict) else None
    check(cond == "service_healthy", f"conveyor depends_on {dep} (service_healthy)", f"got {cond!r}")
    check(bool((services.get(dep) or {}).get("healthcheck")), f"{dep} has a healthcheck")

kenv = env_of("kafka")
check("broker" in (kenv.get("KAFKA_PROCESS_ROLES") or "") and "controller" in (kenv.get("KAFKA_PROCESS_ROLES") or ""),
      "kafka runs KRaft as broker+controller")
adv = kenv.get("KAFKA_ADVERTISED_LISTENERS") or ""
check("PLAINTEXT://kafka:9092" in adv, "kafka advertises PLAINTEXT://kafka:9092 to containers", adv)
check("EXTERNAL://localhost:9094" in adv, "kafka advertises EXTERNAL://localhost:9094 to the host", adv)
check(any(str(p).endswith("9094:9094") for p in services.get("kafka", {}).get("ports", [])),
      "kafka publishes 9094")
penv = env_of("postgres")
check(all(penv.get(k) == "conveyor" for k in ("POSTGRES_USER", "POSTGRES_PASSWORD", "POSTGRES_DB")),
      "postgres user/password/db are conveyor")
uenv = env_of("kafka-ui")
check(uenv.get("KAFKA_CLUSTERS_0_BOOTSTRAPSERVERS") == "kafka:9092", "kafka-ui points at kafka:9092")
check(any(str(p).endswith("8080:8080") for p in services.get("kafka-ui", {}).get("ports", [])),
      "kafka-ui publishes 8080")

if failures:
    print(f"\ncheck-docker: {len(failures)} problem(s):", file=sys.stderr)
    for f in failures:
        print(f"  - {f}", file=sys.stderr)
    sys.exit(1)
print("\ncheck-docker: all checks passed")
PY
