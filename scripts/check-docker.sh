#!/usr/bin/env bash
# Static checks of docker/Dockerfile, docker/compose.yml and the monitoring files it mounts
# (docker/prometheus, docker/grafana) against the workspace. No Docker engine is needed: this
# parses the files (and the Cargo manifests) and fails with a message for each mismatch, e.g.
# a workspace member the image does not copy, a COPY of a path that does not exist, a compose
# env key missing, a bind mount of a missing file, or a dashboard query naming a metric that
# the Rust sources do not define.
#
# Needs only python3 (3.11+, for tomllib). YAML is read with PyYAML when it is installed, else
# with a small built-in parser for the subset these files use (CHECK_DOCKER_YAML=builtin forces
# it; with PyYAML present the two are also compared, so the fallback keeps working).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"

# With the compose plugin (not on CI machines), let it validate the file too.
if docker compose version >/dev/null 2>&1; then
    docker compose -f docker/compose.yml config --quiet
    echo "ok   docker compose config accepts docker/compose.yml"
fi

exec python3 - "$ROOT" <<'PY'
import fnmatch, json, os, re, shlex, sys
try:
    import tomllib
except ImportError:  # Python < 3.11
    tomllib = None
yaml = None
if os.environ.get("CHECK_DOCKER_YAML", "") != "builtin":
    try:
        import yaml
    except ImportError:
        yaml = None

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

# ------------------------------------------------------------------ YAML
# A parser for the YAML these files use: block mappings and sequences ("- key: v" items
# too), flow sequences/mappings of scalars, quoted and plain scalars (YAML 1.1 types, as
# PyYAML resolves them), comments. Anchors, tags, block scalars and multi-line flow
# collections are refused with an error rather than read wrongly.
class YamlError(Exception):
    pass

def _strip_comment(line):
    quote = None
    for i, c in enumerate(line):
        if quote:
            if c == quote:
                quote = None
        elif c in "\"'" and (i == 0 or line[i - 1] in " \t[{,:-"):
            quote = c
        elif c == "#" and (i == 0 or line[i - 1] in " \t"):
            return line[:i]
    return line

def _split_key(text):
    """'key: rest' -> (key, rest); None when text is not a mapping entry."""
    quote, depth = None, 0
    for i, c in enumerate(text):
        if quote:
            if c == quote:
                quote = None
        elif c in "\"'" and i == 0:
            quote = c
        elif c in "[{":
            depth += 1
        elif c in "]}":
            depth -= 1
        elif c == ":" and depth == 0 and (i + 1 == len(text) or text[i + 1] in " \t"):
            key = text[:i].strip()
            if not key:
                return None
            return _scalar(key) if key[0] in "\"'" else key, text[i + 1:].strip()
    return None

_INT = re.compile(r"[-+]?(0|[1-9][0-9_]*)$")
_SEXAGESIMAL = re.compile(r"[-+]?[1-9][0-9_]*(:[0-5]?[0-9])+$")
_FLOAT = re.compile(r"[-+]?([0-9][0-9_]*)?\.[0-9.]*([eE][-+][0-9]+)?$")

def _scalar(text):
    if text.startswith('"'):
        if len(text) < 2 or not text.endswith('"'):
            raise YamlError(f"unterminated string {text!r}")
        return json.loads(text)
    if text.startswith("'"):
        if len(text) < 2 or not text.endswith("'"):
            raise YamlError(f"unterminated string {text!r}")
        return text[1:-1].replace("''", "'")
    if text[:1] in ("&", "*", "!", "|", ">", "%", "@", "`"):
        raise YamlError(f"unsupported YAML construct {text!r}")
    if text in ("", "~", "null", "Null", "NULL"):
        return None
    if text in ("true", "True", "TRUE", "yes", "Yes", "YES", "on", "On", "ON"):
        return True
    if text in ("false", "False", "FALSE", "no", "No", "NO", "off", "Off", "OFF"):
        return False
    if _INT.match(text):
        return int(text.replace("_", ""))
    if _SEXAGESIMAL.match(text):
        sign = -1 if text.startswith("-") else 1
        value = 0
        for part in text.lstrip("+-").replace("_", "").split(":"):
            value = value * 60 + int(part)
        return sign * value
    if _FLOAT.match(text) and any(ch.isdigit() for ch in text):
        return float(text.replace("_", ""))
    return text

def _split_flow(inner):
    items, quote, depth, start = [], None, 0, 0
    for i, c in enumerate(inner):
        if quote:
            if c == quote:
                quote = None
        elif c in "\"'":
            quote = c
        elif c in "[{":
            depth += 1
        elif c in "]}":
            depth -= 1
        elif c == "," and depth == 0:
            items.append(inner[start:i].strip())
            start = i + 1
    last = inner[start:].strip()
    if last:
        items.append(last)
    return items

def _value(text):
    if text.startswith("["):
        if not text.endswith("]"):
            raise YamlError(f"multi-line or unterminated flow sequence {text!r}")
        return [_value(t) for t in _split_flow(text[1:-1])]
    if text.startswith("{"):
        if not text.endswith("}"):
            raise YamlError(f"multi-line or unterminated flow mapping {text!r}")
        out = {}
        for item in _split_flow(text[1:-1]):
            kv = _split_key(item)
            if kv is None:
                raise YamlError(f"flow mapping entry without a key: {item!r}")
            out[kv[0]] = _value(kv[1])
        return out
    return _scalar(text)

def mini_yaml(text):
    lines = []
    for n, raw in enumerate(text.splitlines(), 1):
        body = _strip_comment(raw).rstrip()
        if not body.strip() or body.strip() == "---":
            continue
        if body.strip() == "...":
            break
        indent = len(body) - len(body.lstrip(" "))
        if body[indent:indent + 1] == "\t":
            raise YamlError(f"line {n}: tab in indentation")
        lines.append([n, indent, body.strip()])
    pos = 0

    def is_item(t):
        return t == "-" or t.startswith("- ")

    def block(indent):
        return seq(indent) if is_item(lines[pos][2]) else mapping(indent)

    def mapping(indent):
        nonlocal pos
        out = {}
        while pos < len(lines) and lines[pos][1] == indent and not is_item(lines[pos][2]):
            n, _, t = lines[pos]
            kv = _split_key(t)
            if kv is None:
                raise YamlError(f"line {n}: expected 'key: value', got {t!r}")
            key, rest = kv
            if key in out:
                raise YamlError(f"line {n}: duplicate key {key!r}")
            pos += 1
            if rest:
                out[key] = _value(rest)
            elif pos < len(lines) and (lines[pos][1] > indent or
                                       (lines[pos][1] == indent and is_item(lines[pos][2]))):
                out[key] = block(lines[pos][1])
            else:
                out[key] = None
        if pos < len(lines) and lines[pos][1] > indent:
            raise YamlError(f"line {lines[pos][0]}: unexpected indentation")
        return out

    def seq(indent):
        nonlocal pos
        out = []
        while pos < len(lines) and lines[pos][1] == indent and is_item(lines[pos][2]):
            n, _, t = lines[pos]
            rest = t[1:].lstrip(" ")
            if not rest:
                pos += 1
                out.append(block(lines[pos][1]) if pos < len(lines) and lines[pos][1] > indent else None)
            elif _split_key(rest) is not None and rest[0] not in "[{":
                # "- key: value": a mapping whose keys sit at the column after "- ".
                lines[pos] = [n, indent + len(t) - len(rest), rest]
                out.append(mapping(lines[pos][1]))
            else:
                out.append(_value(rest))
                pos += 1
        if pos < len(lines) and lines[pos][1] > indent:
            raise YamlError(f"line {lines[pos][0]}: unexpected indentation")
        return out

    if not lines:
        return None
    doc = block(lines[0][1])
    if pos < len(lines):
        raise YamlError(f"line {lines[pos][0]}: unexpected content {lines[pos][2]!r}")
    return doc

yaml_docs = {}

def load_yaml(rel):
    """Parses a YAML file (None on failure, which is reported)."""
    if rel in yaml_docs:
        return yaml_docs[rel]
    doc = None
    try:
        text = open(path(rel), encoding="utf-8").read()
    except OSError as e:
        fail(f"{rel} is readable ({e})")
        yaml_docs[rel] = None
        return None
    parser = "PyYAML" if yaml else "built-in parser"
    try:
        doc = yaml.safe_load(text) if yaml else mini_yaml(text)
        ok(f"{rel} parses as YAML ({parser})")
    except Exception as e:  # yaml.YAMLError or YamlError
        fail(f"{rel} parses as YAML ({parser}): {e}")
    if yaml and doc is not None:
        try:
            same = mini_yaml(text) == doc
            why = "the built-in parser (used where PyYAML is missing) reads it differently"
        except YamlError as e:
            same, why = False, f"the built-in parser (used where PyYAML is missing) refuses it: {e}"
        check(same, f"{rel} reads the same without PyYAML", why)
    yaml_docs[rel] = doc
    return doc

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
compose = load_yaml(COMPOSE) or {}
services = compose.get("services", {}) or {}
for name in ("kafka", "postgres", "redis", "conveyor", "kafka-ui", "prometheus", "grafana"):
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

# ------------------------------------------------------------------ compose: volumes, images
def compose_rel(p):
    """A compose bind-mount source, relative to the repo root (compose paths are relative to docker/)."""
    return os.path.relpath(os.path.normpath(os.path.join(root, "docker", p)), root)

def mounts_of(svc):
    """(source, target, read_only, is_bind) for each volume of a service."""
    out = []
    for v in (services.get(svc) or {}).get("volumes", []) or []:
        if isinstance(v, dict):
            src, dst = v.get("source", ""), v.get("target", "")
            out.append((src, dst, bool(v.get("read_only")), v.get("type") == "bind"))
            continue
        parts = str(v).split(":")
        src, dst = parts[0], parts[1] if len(parts) > 1 else parts[0]
        mode = parts[2] if len(parts) > 2 else ""
        out.append((src, dst, "ro" in mode.split(","), src.startswith((".", "/", "~"))))
    return out

declared_volumes = set((compose.get("volumes") or {}).keys())
for svc in services:
    for src, dst, ro, bind in mounts_of(svc):
        if bind:
            check(os.path.exists(path(compose_rel(src))),
                  f"{svc} bind-mounts {src} (-> {compose_rel(src)}), which exists", "compose would mount nothing there")
        elif src:
            check(src in declared_volumes, f"{svc} volume {src} is declared under top-level volumes")
    for p in (services.get(svc) or {}).get("ports", []) or []:
        check(isinstance(p, str), f"{svc} port {p!r} is a quoted string",
              "unquoted host:container ports can be read as base-60 numbers by YAML 1.1")

def container_port(svc, default):
    for p in (services.get(svc) or {}).get("ports", []) or []:
        return str(p).split(":")[-1].split("/")[0]
    return default

def pinned(svc, pattern, what):
    img = (services.get(svc) or {}).get("image", "")
    check(re.fullmatch(pattern, img or "") is not None, f"{svc} image {img!r} is {what} with a pinned version tag",
          "use an explicit version, never latest")

pinned("prometheus", r"prom/prometheus:v\d+\.\d+\.\d+", "prom/prometheus")
pinned("grafana", r"grafana/grafana(-oss)?:\d+\.\d+\.\d+", "grafana/grafana")

conveyor_port = container_port("conveyor", "8000")
check(conveyor_port in expose, f"conveyor's container port {conveyor_port} is EXPOSEd by the Dockerfile", f"EXPOSE {expose}")

# ------------------------------------------------------------------ Prometheus
PROM_CONFIG = "docker/prometheus/prometheus.yml"
prom = services.get("prometheus") or {}
prom_cmd = prom.get("command") or []
if isinstance(prom_cmd, str):
    prom_cmd = shlex.split(prom_cmd)
config_flag = next((a.split("=", 1)[1] for a in prom_cmd if str(a).startswith("--config.file=")),
                   "/etc/prometheus/prometheus.yml")
prom_mount = [(s, d, ro) for s, d, ro, b in mounts_of("prometheus") if b and compose_rel(s) == PROM_CONFIG]
if check(bool(prom_mount), f"prometheus mounts {PROM_CONFIG}"):
    s_, d_, ro_ = prom_mount[0]
    check(d_ == config_flag, f"prometheus config is mounted where --config.file points ({config_flag})", f"mounted at {d_}")
    check(ro_, "prometheus config is mounted read-only")
check(any(str(p).endswith("9090:9090") for p in prom.get("ports", []) or []), "prometheus publishes 9090:9090")

promcfg = load_yaml(PROM_CONFIG) or {}
glob = promcfg.get("global") or {}
conveyor_jobs = []
for job in promcfg.get("scrape_configs") or []:
    targets = [t for sc in job.get("static_configs") or [] for t in sc.get("targets") or []]
    if any(str(t).split(":")[0] == "conveyor" for t in targets):
        conveyor_jobs.append((job, targets))
if check(len(conveyor_jobs) == 1, "prometheus.yml has one scrape job for the conveyor service"):
    job, targets = conveyor_jobs[0]
    want = f"conveyor:{conveyor_port}"
    check(want in targets, f"conveyor scrape target is {want} (the service's HTTP port)", f"targets {targets}")
    check(job.get("metrics_path", "/metrics") == "/metrics", "conveyor is scraped at /metrics",
          f"metrics_path {job.get('metrics_path')!r}")
    check(job.get("scheme", "http") == "http", "conveyor is scraped over http (the container serves plain HTTP)")
    interval = job.get("scrape_interval", glob.get("scrape_interval", "1m"))
    check(interval == "5s", "conveyor is scraped every 5s", f"scrape_interval {interval!r}")
    timeout = job.get("scrape_timeout", glob.get("scrape_timeout", "10s"))
    secs = lambda d: float(d[:-2]) / 1000 if d.endswith("ms") else float(d[:-1]) * {"s": 1, "m": 60, "h": 3600}[d[-1]]
    try:
        check(secs(str(timeout)) <= secs(str(interval)), f"scrape_timeout {timeout} <= scrape_interval {interval}",
              "Prometheus refuses such a config")
    except (ValueError, KeyError):
        fail(f"scrape_timeout {timeout!r} / scrape_interval {interval!r} are durations")

# ------------------------------------------------------------------ Grafana
graf = services.get("grafana") or {}
genv = env_of("grafana")
graf_mounts = [(compose_rel(s), d, ro) for s, d, ro, b in mounts_of("grafana") if b]
check(any(str(p).endswith("3000:3000") for p in graf.get("ports", []) or []), "grafana publishes 3000:3000")
check((genv.get("GF_AUTH_ANONYMOUS_ENABLED") or "").lower() == "true", "grafana allows anonymous viewers (local use)")
check(genv.get("GF_AUTH_ANONYMOUS_ORG_ROLE", "Viewer") == "Viewer", "anonymous grafana users are only Viewers",
      f"role {genv.get('GF_AUTH_ANONYMOUS_ORG_ROLE')!r}")
check(re.fullmatch(r"\$\{[A-Z_][A-Z0-9_]*:-[^}]+\}", genv.get("GF_SECURITY_ADMIN_PASSWORD") or "") is not None,
      "grafana admin password comes from an env var with a default (${VAR:-default})",
      f"got {genv.get('GF_SECURITY_ADMIN_PASSWORD')!r}")
prov_target = genv.get("GF_PATHS_PROVISIONING") or "/etc/grafana/provisioning"
prov = [(s, ro) for s, d, ro in graf_mounts if d == prov_target]
prov_dir = prov[0][0] if prov else None
check(bool(prov), f"grafana mounts a provisioning folder at {prov_target}", f"mounts {graf_mounts}")

def container_to_repo(p):
    """The repo file behind a path inside the grafana container, via its bind mounts."""
    for src, dst, _ in graf_mounts:
        if p == dst or p.startswith(dst.rstrip("/") + "/"):
            return os.path.normpath(os.path.join(src, os.path.relpath(p, dst)))
    return None

# Datasources.
DS_FILE = "docker/grafana/provisioning/datasources/prometheus.yml"
check(prov_dir is None or os.path.normpath(os.path.join(prov_dir, "datasources", "prometheus.yml")) == DS_FILE,
      f"{DS_FILE} is inside the mounted provisioning folder")
dsdoc = load_yaml(DS_FILE) or {}
check(dsdoc.get("apiVersion") == 1, f"{DS_FILE} has apiVersion: 1")
datasource_uids = set()
prom_ds = [d for d in dsdoc.get("datasources") or [] if d.get("type") == "prometheus"]
for d in dsdoc.get("datasources") or []:
    if d.get("uid"):
        datasource_uids.add(d["uid"])
if check(len(prom_ds) == 1, f"{DS_FILE} defines one Prometheus datasource"):
    d = prom_ds[0]
    check(d.get("uid") == "prometheus", "the Prometheus datasource has uid prometheus", f"uid {d.get('uid')!r}")
    url = str(d.get("url", ""))
    m = re.fullmatch(r"https?://([^:/]+)(?::(\d+))?/?", url)
    host, port = (m.group(1), m.group(2) or "80") if m else (None, None)
    check(host in services, f"datasource url {url} names a compose service", f"services {sorted(services)}")
    if host in services:
        check(port == container_port(host, "9090"), f"datasource url port {port} is {host}'s container port")
    check(d.get("access", "proxy") == "proxy", "datasource access is proxy (the browser cannot resolve compose names)")

# Dashboard providers.
PROVIDER_FILE = "docker/grafana/provisioning/dashboards/conveyor.yml"
check(prov_dir is None or os.path.normpath(os.path.join(prov_dir, "dashboards", "conveyor.yml")) == PROVIDER_FILE,
      f"{PROVIDER_FILE} is inside the mounted provisioning folder")
provdoc = load_yaml(PROVIDER_FILE) or {}
check(provdoc.get("apiVersion") == 1, f"{PROVIDER_FILE} has apiVersion: 1")
dashboard_files = []
for pr in provdoc.get("providers") or []:
    check(pr.get("type") == "file", f"dashboard provider {pr.get('name')!r} is a file provider")
    p = str((pr.get("options") or {}).get("path", ""))
    repo_dir = container_to_repo(p)
    if check(repo_dir is not None and os.path.isdir(path(repo_dir)),
             f"dashboard provider path {p} is a mounted folder ({repo_dir})", f"grafana mounts {graf_mounts}"):
        dashboard_files += [os.path.join(repo_dir, f) for f in sorted(os.listdir(path(repo_dir))) if f.endswith(".json")]
DASHBOARD = "docker/grafana/dashboards/conveyor.json"
check(DASHBOARD in dashboard_files, f"{DASHBOARD} is loaded by a dashboard provider", f"found {dashboard_files}")
home = genv.get("GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH")
if home:
    check(container_to_repo(home) in dashboard_files, f"grafana home dashboard {home} is a provisioned dashboard file")

# ------------------------------------------------------------------ metric names from the Rust sources
# The OpenTelemetry instruments (name constant + kind + unit) as the opentelemetry-prometheus
# exporter renders them: dots (any char outside [A-Za-z0-9_:]) -> "_", a unit suffix for
# known UCUM units ("{annotation}" units add none), "_total" for monotonic counters, and
# _bucket/_sum/_count for histograms.
PROM_UNITS = {
    "d": "days", "h": "hours", "min": "minutes", "s": "seconds", "ms": "milliseconds", "us": "microseconds",
    "ns": "nanoseconds", "By": "bytes", "KiBy": "kibibytes", "MiBy": "mebibytes", "GiBy": "gibibytes",
    "TiBy": "tibibytes", "KBy": "kilobytes", "MBy": "megabytes", "GBy": "gigabytes", "TBy": "terabytes",
    "B": "bytes", "KB": "kilobytes", "MB": "megabytes", "GB": "gigabytes", "TB": "terabytes", "m": "meters",
    "V": "volts", "A": "amperes", "J": "joules", "W": "watts", "g": "grams", "Cel": "celsius", "Hz": "hertz",
    "1": "ratio", "%": "percent",
}
PROM_PER_UNITS = {"s": "second", "m": "minute", "h": "hour", "d": "day", "w": "week", "mo": "month", "y": "year"}

def unit_suffix(unit):
    if not unit:
        return None
    if unit in PROM_UNITS:
        return PROM_UNITS[unit]
    if "/" in unit:
        first, second = unit.split("/", 1)
        per = PROM_PER_UNITS.get(second)
        if per and first in PROM_UNITS and first not in ("1", "d", "h", "min", "s", "ms", "us", "ns"):
            return f"{PROM_UNITS[first]}_per_{per}"
        return f"per_{per}" if per else None
    return None  # "{request}" and unknown units

def sanitize(name):
    name = re.sub(r"[^A-Za-z0-9_:]", "_", name)
    return "_" + name[1:] if name[:1].isdigit() else name

SOURCE_DIRS = [os.path.join(m, "src") for m in members if os.path.isdir(path(m, "src"))]
rust = {}
for d in SOURCE_DIRS:
    for dirpath, _, files in os.walk(path(d)):
        for f in files:
            if f.endswith(".rs"):
                rust[os.path.relpath(os.path.join(dirpath, f), root)] = open(os.path.join(dirpath, f), encoding="utf-8").read()
consts = {}  # NAME -> {file: value}
for rel, text in rust.items():
    for m in re.finditer(r'pub(?:\([a-z]+\))? const ([A-Z0-9_]+): &str = "([^"]+)";', text):
        consts.setdefault(m.group(1), {})[rel] = m.group(2)

def module_of(rel):
    stem = os.path.splitext(os.path.basename(rel))[0]
    return os.path.basename(os.path.dirname(rel)) if stem in ("mod", "lib") else stem

def resolve(ref, rel):
    """The string a constant (or literal) used in file rel stands for; None if unknown or ambiguous."""
    if ref.startswith('"'):
        return ref.strip('"')
    *qual, name = ref.split("::")
    cands = consts.get(name, {})
    if not qual and rel in cands:
        return cands[rel]
    if not qual:  # imported: `use crate::metrics::{.., NAME, ..}` or `use crate::metrics::NAME;`
        text = rust.get(rel, "")
        for m in re.finditer(r"use\s+([\w:]+)::\{([^}]*)\}|use\s+([\w:]+)::(\w+)\s*;", text):
            module, items = (m.group(1), m.group(2)) if m.group(1) else (m.group(3), m.group(4))
            if name in re.findall(r"\w+", items):
                qual = module.split("::")
                break
    if qual:
        cands = {f: v for f, v in cands.items() if module_of(f) == qual[-1]}
    vals = set(cands.values())
    return next(iter(vals)) if len(vals) == 1 else None

INSTRUMENT = re.compile(
    r'\.(u64|i64|f64)_(observable_)?(counter|up_down_counter|gauge|histogram)\(\s*((?:[A-Za-z_]+::)*[A-Z0-9_]+|"[^"]+")\s*\)'
    r'(.*?)\.build\(\)', re.S)
metric_names = {}  # prometheus name -> (dotted otel name, file)
instruments = []
for rel, text in sorted(rust.items()):
    for m in INSTRUMENT.finditer(text):
        kind, ref, chain = m.group(3), m.group(4), m.group(5)
        name = resolve(ref, rel)
        if name is None:
            fail(f"{rel}: instrument name {ref} resolves to one string constant")
            continue
        um = re.search(r'\.with_unit\(\s*"([^"]*)"\s*\)', chain)
        unit = um.group(1) if um else ""
        base = sanitize(name)
        suffix = unit_suffix(unit)
        if suffix:
            base += "_" + suffix
        if kind == "histogram":
            names = [base + "_bucket", base + "_sum", base + "_count"]
        elif kind == "counter":
            names = [base + "_total"]
        else:  # gauges and up-down counters are Prometheus gauges
            names = [base]
        instruments.append((name, unit, kind, names[0].removesuffix("_bucket")))
        for n in names:
            metric_names[n] = (name, rel)
check(len(instruments) >= 20, f"found {len(instruments)} OpenTelemetry instruments in {', '.join(SOURCE_DIRS)}")
# Series the exporter adds by itself.
metric_names["target_info"] = ("(exporter resource)", "opentelemetry-prometheus")

# Names read off a live /metrics (debug build, a few events, GETs, a registration, 429s):
# each must come out of the derivation above, or the rules above no longer match the exporter.
OBSERVED = """
conveyor_breaker_state conveyor_cache_hits_total conveyor_cache_misses_total conveyor_http_rate_limited_total
conveyor_ingest_accepted_total conveyor_ingest_rejected_total conveyor_loyalty_operations_total
conveyor_outbox_records_total conveyor_partition_in_flight conveyor_partition_lag
conveyor_partition_processing_duration_seconds_bucket conveyor_partition_records_processed_total
conveyor_saga_steps_total conveyor_store_query_duration_seconds_bucket http_server_active_requests
http_server_request_duration_seconds_bucket process_cpu_time_seconds_total process_memory_usage_bytes
process_thread_count process_uptime_seconds target_info
""".split()
missing = [n for n in OBSERVED if n not in metric_names]
check(not missing, "metric names seen on a live /metrics all follow from the Rust sources", f"not derived: {missing}")

# Label keys: string constants and literals passed to kv()/KeyValue::new(), plus the labels
# the exporter (otel_scope_name, le) and Prometheus (job, instance, static labels) add.
label_names = {"le", "otel_scope_name", "job", "instance", "quantile"}
for rel, text in rust.items():
    for m in re.finditer(r'\b(?:kv|KeyValue::new)\(\s*((?:[A-Za-z_]+::)*[A-Z0-9_]+|"[^"]+")\s*,', text):
        v = resolve(m.group(1), rel)
        if v:
            label_names.add(sanitize(v))
for job in promcfg.get("scrape_configs") or []:
    for sc in job.get("static_configs") or []:
        label_names.update((sc.get("labels") or {}).keys())

# ------------------------------------------------------------------ dashboard
PROMQL_KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or", "unless",
                   "offset", "atan2", "sum", "min", "max", "avg", "group", "stddev", "stdvar", "count",
                   "count_values", "bottomk", "topk", "quantile", "limitk", "limit_ratio", "inf", "nan", "Inf", "NaN"}

def promql_refs(expr):
    """(metric names, label names) an expression refers to."""
    e = re.sub(r"\$\{[^}]*\}|\$\w+", "", expr)              # Grafana variables
    labels = set()
    for block in re.findall(r"\{([^}]*)\}", re.sub(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'', '""', e)):
        labels.update(re.findall(r"([A-Za-z_][A-Za-z0-9_]*)\s*(?:=~|!~|!=|=)", block))
    e = re.sub(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`', '""', e)  # strings
    e = re.sub(r"\{[^}]*\}", " ", e)                         # label matchers
    e = re.sub(r"\[[^\]]*\]", " ", e)                        # range / subquery selectors
    for m in re.finditer(r"\b(by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)", e):
        labels.update(l.strip() for l in m.group(2).split(",") if l.strip())
    e = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", r" \1 ", e)
    names = set()
    for m in re.finditer(r"(?P<num>(?:0x[0-9a-fA-F]+|\d+(?:\.\d*)?(?:[eE][-+]?\d+)?)(?:ms|[smhdwy])?)"
                         r"|(?P<id>[A-Za-z_:][A-Za-z0-9_:]*)", e):
        ident = m.group("id")
        if not ident or ident in PROMQL_KEYWORDS:
            continue
        if re.match(r"\s*\(", e[m.end():]):                 # a function call
            continue
        names.add(ident)
    return names, labels

dash = None
try:
    dash = json.load(open(path(DASHBOARD), encoding="utf-8"))
    ok(f"{DASHBOARD} parses as JSON")
except (OSError, ValueError) as e:
    fail(f"{DASHBOARD} parses as JSON: {e}")
if dash is not None:
    check(dash.get("title") == "Conveyor", 'the dashboard is titled "Conveyor"', f"title {dash.get('title')!r}")
    check(bool(dash.get("uid")), "the dashboard has a fixed uid (stable links across restarts)")
    def all_panels(ps):
        for p in ps or []:
            yield p
            yield from all_panels(p.get("panels"))
    panels = list(all_panels(dash.get("panels")))
    ids = [p.get("id") for p in panels]
    check(len(ids) == len(set(ids)) and None not in ids, f"the dashboard's {len(ids)} panel ids are unique")
    queries = []  # (where, expr)
    for p in panels:
        if p.get("type") == "row":
            continue
        where = f"panel {p.get('title')!r}"
        check(bool(p.get("gridPos")), f"{where} has a gridPos")
        targets = p.get("targets") or []
        check(bool(targets), f"{where} has queries")
        for t in targets:
            uid = ((t.get("datasource") or p.get("datasource") or {}) or {}).get("uid")
            check(uid in datasource_uids, f"{where} query {t.get('refId')} uses a provisioned datasource",
                  f"uid {uid!r}, provisioned {sorted(datasource_uids)}")
            queries.append((f"{where} query {t.get('refId')}", t.get("expr", "")))
    for v in (dash.get("templating") or {}).get("list") or []:
        q = v.get("query")
        q = q.get("query") if isinstance(q, dict) else q
        if v.get("type") == "query" and q:
            m = re.fullmatch(r"\s*label_values\(\s*(.*?)\s*,\s*([A-Za-z_]\w*)\s*\)\s*", q)
            queries.append((f"variable ${v.get('name')}", m.group(1) if m else q))
            if m:
                check(m.group(2) in label_names, f"variable ${v.get('name')} reads a known label ({m.group(2)})")
    used = set()
    for where, expr in queries:
        if not check(bool(expr.strip()), f"{where} has an expression"):
            continue
        names, labels = promql_refs(expr)
        used |= names
        unknown = sorted(n for n in names if n not in metric_names)
        check(names and not unknown, f"{where} uses metrics defined in the sources ({', '.join(sorted(names))})",
              f"unknown: {unknown}" if unknown else "no metric name found")
        bad_labels = sorted(l for l in labels if l not in label_names)
        check(not bad_labels, f"{where} uses known labels", f"unknown: {bad_labels}")
    # Every instrument should be on the dashboard somewhere (process uptime is in a stat).
    unused = sorted({name for name, unit, kind, prom_name in instruments
                     if not any(n == prom_name or n.startswith(prom_name + "_") for n in used)})
    check(not unused, "every instrument in the sources is charted on the dashboard", f"not charted: {unused}")

if failures:
    print(f"\ncheck-docker: {len(failures)} problem(s):", file=sys.stderr)
    for f in failures:
        print(f"  - {f}", file=sys.stderr)
    sys.exit(1)
print("\ncheck-docker: all checks passed")
PY
