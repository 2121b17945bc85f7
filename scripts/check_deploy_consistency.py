"""Checks that the deploy kit's files agree with each other and with the binary.

Run by scripts/check-deploy.sh (with the deploy-tools venv's Python, which has
PyYAML) as:  check_deploy_consistency.py REPO SSEKIFY_BINARY

Schema validity is checked elsewhere (kubernetes-validate, check-jsonschema,
hadolint); this checks the numbers and names that no schema knows:
- every SSEKIFY_* variable set in the manifests, compose file and systemd
  example is an env var that `ssekify --help` lists (a typo would be ignored);
- the image tag is ssekify:<Cargo.toml version> in the Kubernetes Deployment,
  the compose file, the Dockerfile's and the deploy README's build commands;
- Kubernetes: terminationGracePeriodSeconds > preStop sleep + shutdown grace
  + 2 s (ssekify's drain deadline); the preStop hook and the Docker
  HEALTHCHECK call the probe the Dockerfile installs; readiness on /readyz and
  liveness on /healthz; --pin-cores off; the PDB, HPA and Services select the
  Deployment's pods; SSEKIFY_REDIS names the Redis Service and port;
- compose: stop_grace_period > grace + 2 s, nginx's mounted files exist, its
  upstream names the ssekify services;
- systemd: TimeoutStopSec > grace + 2 s;
- sysctl (scripts/check-sysctl.sh checks each value against the kernel):
  net.core.somaxconn >= --backlog's default (listen() backlogs are clamped to
  it), fs.nr_open >= the unit's LimitNOFILE and <= fs.file-max, and
  net.ipv4.ip_local_reserved_ports holds the default --listen and
  --api-listen ports.
"""

import re
import subprocess
import sys
from pathlib import Path

import yaml

repo = Path(sys.argv[1])
binary = sys.argv[2]
problems = []


def check(condition, message):
    if not condition:
        problems.append(message)


def seconds(text):
    """ssekify durations (ms, s, m, h; bare = ms) and compose ones (1m30s)."""
    text = str(text).strip()
    if re.fullmatch(r"\d+", text):
        return int(text) / 1000
    total, rest = 0.0, text
    for number, unit in re.findall(r"(\d+(?:\.\d+)?)(ms|s|m|h)", text):
        total += float(number) * {"ms": 0.001, "s": 1, "m": 60, "h": 3600}[unit]
        rest = rest.replace(number + unit, "", 1)
    if rest:
        raise ValueError(f"not a duration: {text!r}")
    return total


help_text = subprocess.run([binary, "--help"], capture_output=True, text=True, check=True).stdout
env_names = set(re.findall(r"\[env: (SSEKIFY_[A-Z_]+)", help_text))
check(len(env_names) > 30, f"`ssekify --help` lists only {len(env_names)} env vars")
grace_default = re.search(r"--shutdown-grace <SHUTDOWN_GRACE>.*?\[default: ([^\]]+)\]", help_text, re.S)
check(grace_default, "no --shutdown-grace default in --help")
grace_default = seconds(grace_default.group(1)) if grace_default else 5
# close_spread's deadline: the grace plus 2 s (src/shard/shutdown.rs).
DRAIN_SLACK = 2

version = re.search(r'^version = "([^"]+)"', (repo / "Cargo.toml").read_text(), re.M).group(1)
image = f"ssekify:{version}"


def docs(path):
    return list(yaml.safe_load_all((repo / path).read_text()))


def env_of(container):
    return {e["name"]: e.get("value") for e in container.get("env", [])}


def check_env_names(where, names):
    for name in names:
        if name.startswith("SSEKIFY_"):
            check(name in env_names, f"{where}: {name} is not an env var of `ssekify --help`")


# --- Dockerfile ---------------------------------------------------------------
dockerfile = (repo / "deploy/docker/Dockerfile").read_text()
probe_path = "/usr/local/bin/ssekify-probe"
check(
    re.search(r"COPY\s+--chmod=0?755\s+deploy/docker/ssekify-probe\s+" + re.escape(probe_path), dockerfile),
    f"the Dockerfile does not install deploy/docker/ssekify-probe as {probe_path}",
)
check(
    re.search(r'HEALTHCHECK\b.*\\\n\s*CMD \["' + re.escape(probe_path) + r'", "healthz"\]', dockerfile),
    "the Dockerfile's HEALTHCHECK does not run `ssekify-probe healthz`",
)
check(re.search(r"^USER 10001", dockerfile, re.M), "the image does not run as uid 10001")
for where in ("deploy/docker/Dockerfile", "deploy/README.md"):
    text = (repo / where).read_text()
    tags = re.findall(r"docker build -f deploy/docker/Dockerfile -t (\S+)", text)
    check(tags, f"{where}: no `docker build -f deploy/docker/Dockerfile -t …` command")
    for tag in tags:
        check(tag == image, f"{where}: builds {tag}, not {image} (Cargo.toml's version)")
check_env_names("deploy/docker/Dockerfile", re.findall(r"\b(SSEKIFY_[A-Z_]+)=", dockerfile))

# --- Kubernetes ---------------------------------------------------------------
k8s = {}
for path in ("deploy/k8s/ssekify.yaml", "deploy/k8s/redis.yaml", "deploy/k8s/hpa.yaml"):
    for doc in docs(path):
        if doc:
            k8s[(doc["kind"], doc["metadata"]["name"])] = doc
kustomization = yaml.safe_load((repo / "deploy/k8s/kustomization.yaml").read_text())
for resource in kustomization["resources"]:
    check((repo / "deploy/k8s" / resource).is_file(), f"kustomization.yaml names a missing {resource}")

deployment = k8s[("Deployment", "ssekify")]
pod = deployment["spec"]["template"]["spec"]
pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
container = next(c for c in pod["containers"] if c["name"] == "ssekify")
env = env_of(container)
check_env_names("deploy/k8s/ssekify.yaml", env)
check(container["image"] == image, f"deploy/k8s: image {container['image']}, not {image}")
check(env.get("SSEKIFY_PIN_CORES") == "false", "deploy/k8s: SSEKIFY_PIN_CORES must be \"false\" (shared cores)")
grace = seconds(env["SSEKIFY_SHUTDOWN_GRACE"]) if "SSEKIFY_SHUTDOWN_GRACE" in env else grace_default
pre_stop = container["lifecycle"]["preStop"]["exec"]["command"]
pre_stop_text = " ".join(pre_stop)
check(f"{probe_path} stop-accepting" in pre_stop_text, f"deploy/k8s: preStop does not call {probe_path} stop-accepting")
sleep = re.search(r"sleep (\d+)", pre_stop_text)
check(sleep, "deploy/k8s: preStop has no `sleep N`")
sleep = int(sleep.group(1)) if sleep else 0
tgps = pod["terminationGracePeriodSeconds"]
check(
    tgps > sleep + grace + DRAIN_SLACK,
    f"deploy/k8s: terminationGracePeriodSeconds {tgps} must exceed preStop sleep {sleep} + grace {grace} + {DRAIN_SLACK}",
)
check(container["readinessProbe"]["httpGet"]["path"] == "/readyz", "deploy/k8s: readiness must probe /readyz")
check(container["livenessProbe"]["httpGet"]["path"] == "/healthz", "deploy/k8s: liveness must probe /healthz")
ports = {p["name"]: p["containerPort"] for p in container["ports"]}
check(ports == {"sse": 8080, "api": 8081}, f"deploy/k8s: container ports {ports}")
check(pod["securityContext"].get("runAsNonRoot") is True, "deploy/k8s: runAsNonRoot")


def selects(selector, labels):
    return all(labels.get(k) == v for k, v in selector.items())


pdb = k8s[("PodDisruptionBudget", "ssekify")]
check(selects(pdb["spec"]["selector"]["matchLabels"], pod_labels), "deploy/k8s: the PDB does not select ssekify's pods")
hpa = k8s[("HorizontalPodAutoscaler", "ssekify")]
target = hpa["spec"]["scaleTargetRef"]
check((target["kind"], target["name"]) == ("Deployment", "ssekify"), "deploy/k8s: the HPA does not target the Deployment")
for name in ("ssekify", "ssekify-api"):
    service = k8s[("Service", name)]
    check(selects(service["spec"]["selector"], pod_labels), f"deploy/k8s: Service {name} does not select ssekify's pods")
    for port in service["spec"]["ports"]:
        check(port["targetPort"] in ports, f"deploy/k8s: Service {name} targets unknown port {port['targetPort']}")
redis_url = re.fullmatch(r"redis://([^:/]+):(\d+)", env.get("SSEKIFY_REDIS", ""))
check(redis_url, f"deploy/k8s: SSEKIFY_REDIS {env.get('SSEKIFY_REDIS')!r} is not redis://<service>:<port>")
if redis_url:
    service = k8s.get(("Service", redis_url.group(1)))
    check(service, f"deploy/k8s: no Service {redis_url.group(1)} for SSEKIFY_REDIS")
    if service:
        check(
            int(redis_url.group(2)) in [p["port"] for p in service["spec"]["ports"]],
            "deploy/k8s: the Redis Service does not have SSEKIFY_REDIS's port",
        )
        statefulset = k8s[("StatefulSet", "redis")]
        check(
            selects(service["spec"]["selector"], statefulset["spec"]["template"]["metadata"]["labels"]),
            "deploy/k8s: the redis Service does not select the Redis pods",
        )

# --- compose -------------------------------------------------------------------
compose_dir = repo / "deploy/compose"
compose = yaml.safe_load((compose_dir / "compose.yaml").read_text())
services = compose["services"]
instances = [name for name, s in services.items() if s.get("image", "").startswith("ssekify")]
check(len(instances) == 2, f"deploy/compose: {len(instances)} ssekify services, not 2")
for name in instances:
    service = services[name]
    check(service["image"] == image, f"deploy/compose: {name} runs {service['image']}, not {image}")
    service_env = service["environment"]
    check_env_names(f"deploy/compose {name}", service_env)
    check(service_env.get("SSEKIFY_REDIS", "").startswith("redis://redis:"), f"deploy/compose: {name} has no bus")
    service_grace = seconds(service_env.get("SSEKIFY_SHUTDOWN_GRACE", grace_default))
    check(
        seconds(service.get("stop_grace_period", "10s")) > service_grace + DRAIN_SLACK,
        f"deploy/compose: {name}'s stop_grace_period must exceed its grace + {DRAIN_SLACK} s",
    )
for volume in services["nginx"]["volumes"]:
    source = volume.split(":")[0]
    check((compose_dir / source).is_file(), f"deploy/compose: nginx mounts a missing {source}")
nginx_conf = (compose_dir / "nginx.conf").read_text()
upstreams = sorted(re.findall(r"^\s*server ([\w-]+):8080;", nginx_conf, re.M))
check(upstreams == sorted(instances), f"deploy/compose/nginx.conf balances {upstreams}, not {sorted(instances)}")

# --- systemd -------------------------------------------------------------------
unit = (repo / "deploy/systemd/ssekify.service").read_text()
example = (repo / "deploy/systemd/env.example").read_text()
check_env_names("deploy/systemd/env.example", re.findall(r"^#?(SSEKIFY_[A-Z_]+)=", example, re.M))
check_env_names("deploy/systemd/ssekify.service", re.findall(r"\b(SSEKIFY_[A-Z_]+)=", unit))
example_grace = re.search(r"^SSEKIFY_SHUTDOWN_GRACE=(\S+)", example, re.M)
unit_grace = seconds(example_grace.group(1)) if example_grace else grace_default
stop = re.search(r"^TimeoutStopSec=(\S+)", unit, re.M)
check(stop and seconds(stop.group(1)) > unit_grace + DRAIN_SLACK, "deploy/systemd: TimeoutStopSec must exceed the grace + 2 s")

# --- sysctl --------------------------------------------------------------------
sysctl_file = "deploy/sysctl/99-ssekify.conf"
sysctl = dict(
    re.findall(r"^([a-z][\w.-]*)[ \t]*=[ \t]*(.*?)[ \t]*$", (repo / sysctl_file).read_text(), re.M)
)


def help_default(flag):
    found = re.search(re.escape(flag) + r" <[A-Z_]+>.*?\[default: ([^\]]+)\]", help_text, re.S)
    check(found, f"no {flag} default in --help")
    return found.group(1) if found else ""


for key in ("net.core.somaxconn", "fs.nr_open", "fs.file-max", "net.ipv4.ip_local_reserved_ports"):
    check(key in sysctl, f"{sysctl_file}: {key} is not set")
backlog = help_default("--backlog")
if "net.core.somaxconn" in sysctl and backlog.isdigit():
    check(
        int(sysctl["net.core.somaxconn"]) >= int(backlog),
        f"{sysctl_file}: net.core.somaxconn {sysctl['net.core.somaxconn']} clamps --backlog's default {backlog}",
    )
nofile = re.search(r"^LimitNOFILE=(?:\d+:)?(\d+)\s*$", unit, re.M)
check(nofile, "deploy/systemd: no numeric LimitNOFILE")
if nofile and "fs.nr_open" in sysctl:
    check(
        int(sysctl["fs.nr_open"]) >= int(nofile.group(1)),
        f"{sysctl_file}: fs.nr_open {sysctl['fs.nr_open']} is below the unit's LimitNOFILE {nofile.group(1)}",
    )
if "fs.nr_open" in sysctl and "fs.file-max" in sysctl:
    check(
        int(sysctl["fs.file-max"]) >= int(sysctl["fs.nr_open"]),
        f"{sysctl_file}: fs.file-max {sysctl['fs.file-max']} is below fs.nr_open {sysctl['fs.nr_open']}",
    )
reserved = set()
for item in sysctl.get("net.ipv4.ip_local_reserved_ports", "").split(","):
    low, _, high = item.strip().partition("-")
    if low.isdigit() and (high or low).isdigit():
        reserved.update(range(int(low), int(high or low) + 1))
for flag in ("--listen", "--api-listen"):
    port = help_default(flag).rpartition(":")[2]
    check(
        port.isdigit() and int(port) in reserved,
        f"{sysctl_file}: net.ipv4.ip_local_reserved_ports does not hold {flag}'s default port {port}",
    )

if problems:
    for problem in problems:
        print(f"error: {problem}", file=sys.stderr)
    sys.exit(1)
print(
    f"consistent: image {image}; k8s grace {tgps}s > preStop {sleep}s + shutdown grace {grace:g}s + {DRAIN_SLACK}s; "
    f"{len(env_names)} env vars known to --help"
)
