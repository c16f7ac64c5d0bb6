#!/usr/bin/env python3
"""Checks rendered kustomize overlays against what the breakwater binary really does.

usage: check_manifests.py BREAKWATER_BINARY RENDERED.yaml...

For every container that runs the breakwater image:
- the config file it mounts (BREAKWATER_CONFIG) passes `breakwater config check`, with the
  container's environment, without a warning (`--up` for `breakwater up`);
- every variable it sets is one the binary reads: BREAKWATER_CONFIG, a BREAKWATER_<SECTION>__<KEY>
  that `config check` accepts, a name the binary holds as a string (OTEL_*, RUST_LOG), or an
  allocator option listed in MIMALLOC_OPTIONS;
- its subcommand exists, the Redis password file of its section is mounted, so are the edge's
  static token files (edge.auth.token_files), and its state
  directory (embedded.dir) is a writable volume, since the root filesystem is read-only.
For the NetworkPolicies: everything is denied by default, only the edge (or up) admits traffic
from outside the namespace (Prometheus from namespace monitoring on the metrics port aside), only
the edge reaches the components, and a component reaches only the Redis labelled for it.
For every Redis server: maxmemory is the budget of the services it serves (their sum when shared),
the policy is volatile-*, persistence is off, and each bw-<service> user's password in its ACL
Secret is the one the service's password Secret holds.
It prints one line per problem and exits 1 if there is any.
"""

import base64
import os
import re
import subprocess
import sys
import tempfile
import tomllib

import yaml

SUBCOMMANDS = {"up", "edge", "ratelimit", "dedup", "storm", "crd-writer"}
REDIS_SERVICES = ("ratelimit", "dedup", "storm")
# mimalloc options a manifest may set (mimalloc reads MIMALLOC_<OPTION> at start); each is a
# name of the allocator linked into breakwater, so a typo is still refused.
MIMALLOC_OPTIONS = {"MIMALLOC_PURGE_DELAY"}
problems = []


def problem(where, what):
    problems.append(f"{where}: {what}")


def load(paths):
    objects = []
    for path in paths:
        with open(path) as f:
            overlay = os.path.basename(path).removesuffix(".yaml")
            objects += [(overlay, o) for o in yaml.safe_load_all(f) if o]
    return objects


def by_kind(objects, overlay, kind):
    return {o["metadata"]["name"]: o for (name, o) in objects if name == overlay and o["kind"] == kind}


def data_of(obj):
    """A ConfigMap's or Secret's entries as text."""
    if obj["kind"] == "Secret":
        return {k: base64.b64decode(v).decode() for k, v in (obj.get("data") or {}).items()}
    return dict(obj.get("data") or {})


def mounted_files(pod, container, configmaps, secrets):
    """Path -> (text, writable) of every file the container gets from a ConfigMap or Secret,
    and the directories of its writable volumes."""
    volumes = {v["name"]: v for v in pod.get("volumes", [])}
    files, writable = {}, []
    for mount in container.get("volumeMounts", []):
        volume = volumes.get(mount["name"], {})
        source = None
        if "configMap" in volume:
            source, ref = configmaps.get(volume["configMap"]["name"]), volume["configMap"]
        elif "secret" in volume:
            source, ref = secrets.get(volume["secret"]["secretName"]), volume["secret"]
        elif "emptyDir" in volume or "persistentVolumeClaim" in volume:
            if not mount.get("readOnly"):
                writable.append(mount["mountPath"].rstrip("/"))
            continue
        if source is None:
            problem(container["name"], f"volume {mount['name']} refers to nothing rendered")
            continue
        entries = data_of(source)
        items = ref.get("items") or [{"key": k, "path": k} for k in entries]
        for item in items:
            if item["key"] not in entries:
                problem(container["name"], f"volume {mount['name']} has no key {item['key']}")
                continue
            files[f"{mount['mountPath'].rstrip('/')}/{item['path']}"] = entries[item["key"]]
    return files, writable


def check_container(overlay, pod, container, configmaps, secrets, binary_strings, breakwater):
    where = f"{overlay} {container['name']}"
    args = container.get("args") or []
    if not args or args[0] not in SUBCOMMANDS:
        problem(where, f"args {args} do not start with a component subcommand ({', '.join(sorted(SUBCOMMANDS))})")
        return
    subcommand = args[0]
    env = {}
    for ref in container.get("envFrom", []):
        cm = configmaps.get(ref.get("configMapRef", {}).get("name"))
        if cm is None:
            problem(where, f"envFrom {ref} refers to no rendered ConfigMap")
        else:
            env.update(data_of(cm))
    for var in container.get("env", []):
        if "value" not in var:
            problem(where, f"{var['name']} is not a literal value; these checks cannot follow it")
            continue
        env[var["name"]] = var["value"]
    for name in env:
        if name == "BREAKWATER_CONFIG" or re.fullmatch(r"BREAKWATER_[A-Z0-9_]+__[A-Z0-9_]+", name):
            continue  # config check below refuses unknown sections and keys
        if name in MIMALLOC_OPTIONS:
            continue  # read by the allocator at start, under a name it builds at run time
        if name.startswith("BREAKWATER_") or name.encode() not in binary_strings:
            problem(where, f"sets {name}, which breakwater does not read")
    files, writable = mounted_files(pod, container, configmaps, secrets)
    config_path = env.get("BREAKWATER_CONFIG")
    if config_path not in files:
        problem(where, f"BREAKWATER_CONFIG={config_path} is not a file the container mounts ({sorted(files)})")
        return
    with tempfile.NamedTemporaryFile("w", suffix=".toml", delete=False) as f:
        f.write(files[config_path])
    try:
        run_env = {k: v for k, v in os.environ.items() if not k.startswith(("BREAKWATER_", "OTEL_"))}
        run_env.update(env)
        run_env["BREAKWATER_CONFIG"] = f.name
        command = [breakwater, "config", "check"] + (["--up"] if subcommand == "up" else [])
        done = subprocess.run(command, env=run_env, capture_output=True, text=True)
    finally:
        os.unlink(f.name)
    if done.returncode != 0 or "warning" in done.stderr:
        problem(where, f"breakwater config check: {done.stderr.strip()}")
        return
    config = tomllib.loads(done.stdout)
    sections = REDIS_SERVICES if subcommand == "up" else [s for s in REDIS_SERVICES if s == subcommand]
    for section in sections:
        redis = config[section]["redis"]
        if config[section]["store"] == "redis" and redis.get("password_file") not in (None, *files):
            problem(where, f"{section}.redis.password_file {redis['password_file']} is not mounted")
    auth = config["edge"]["auth"]
    if subcommand in ("up", "edge") and auth.get("mode") == "static":
        for path in auth["token_files"]:
            if path not in files and not any(f.startswith(path.rstrip("/") + "/") for f in files):
                problem(where, f"edge.auth.token_files {path} is not mounted")
    if subcommand in ("up", "crd-writer", "dedup", "storm"):
        state_dir = config.get("embedded", {}).get("dir")
        uses_state = subcommand in ("up", "crd-writer") or config[subcommand.replace("-", "_")].get("store") == "embedded"
        if uses_state and not any(state_dir == d or str(state_dir).startswith(d + "/") for d in writable):
            problem(where, f"embedded.dir {state_dir} is not on a writable volume (the root filesystem is read-only)")
    return config


def flag(args, name):
    return args[args.index(name) + 1] if name in args else None


def check_redis(overlay, pod, container, secrets, configs):
    where = f"{overlay} {pod['_name']}"
    args = container.get("args") or []
    labels = pod["_labels"]
    serves = [s for s in REDIS_SERVICES if labels.get(f"breakwater.kubernaut.io/redis-for-{s}") == "true"]
    budgets = [configs[s][s]["redis"]["memory_budget_bytes"] for s in serves if s in configs]
    maxmemory = flag(args, "--maxmemory")
    if not serves or len(budgets) != len(serves):
        problem(where, f"serves {serves}, but not every one of them runs here")
    elif maxmemory != str(sum(budgets)):
        problem(where, f"--maxmemory {maxmemory}, expected the budgets of {serves}: {sum(budgets)}")
    if not (flag(args, "--maxmemory-policy") or "").startswith("volatile-"):
        problem(where, "--maxmemory-policy must be volatile-* (every key has a TTL)")
    if flag(args, "--save") != "" or flag(args, "--appendonly") != "no":
        problem(where, "persistence must be off (--save \"\" --appendonly no)")
    acl_path = flag(args, "--aclfile")
    volumes = {v["name"]: v for v in pod.get("volumes", [])}
    acl = None
    for mount in container.get("volumeMounts", []):
        volume = volumes.get(mount["name"], {})
        if "secret" in volume and acl_path and acl_path.startswith(mount["mountPath"].rstrip("/") + "/"):
            acl = data_of(secrets[volume["secret"]["secretName"]]).get(acl_path.rsplit("/", 1)[1])
    if acl is None:
        problem(where, f"--aclfile {acl_path} is not from a Secret")
        return
    users = dict(re.findall(r"^user (\S+) on .*?>(\S+)", acl, re.M))
    for service in serves:
        component_pods = [p for p in pods_of(overlay) if p["_labels"].get("app.kubernetes.io/component") == service]
        for component in component_pods:
            for volume in component.get("volumes", []):
                ref = volume.get("secret")
                if not ref:
                    continue
                for item in ref.get("items", []):
                    password = data_of(secrets[ref["secretName"]])[item["key"]]
                    if users.get(f"bw-{service}") != password:
                        problem(where, f"user bw-{service}'s password in its ACL is not the one {service} mounts")


def selects(selector, labels):
    """Whether a label selector (matchLabels and In expressions) matches `labels`."""
    if any(labels.get(k) != v for k, v in (selector.get("matchLabels") or {}).items()):
        return False
    for expr in selector.get("matchExpressions") or []:
        if expr["operator"] != "In" or labels.get(expr["key"]) not in expr["values"]:
            return False
    return True


def check_network(overlay, policies):
    where = f"{overlay} NetworkPolicy"
    deny = [p for p in policies.values() if p["spec"]["podSelector"] == {} and set(p["spec"].get("policyTypes", [])) == {"Ingress", "Egress"}
            and not p["spec"].get("ingress") and not p["spec"].get("egress")]
    if not deny:
        problem(where, "no default-deny policy (podSelector {}, Ingress and Egress, no rules)")
    for pod in pods_of(overlay):
        labels = pod["_labels"]
        component = labels.get("app.kubernetes.io/component")
        public = component in ("edge", "up")
        own = [p for p in policies.values() if selects(p["spec"]["podSelector"], labels)]
        for policy in own:
            name = f"{where} {policy['metadata']['name']} for {pod['_name']}"
            for rule in policy["spec"].get("ingress") or []:
                peers = rule.get("from")
                ports = {port.get("port") for port in rule.get("ports") or []}
                if peers is None:
                    if not public:
                        problem(name, "admits traffic from anywhere")
                    continue
                for peer in peers:
                    if "namespaceSelector" in peer or "ipBlock" in peer:
                        monitoring = peer.get("namespaceSelector", {}).get("matchLabels", {}) == {"kubernetes.io/metadata.name": "monitoring"}
                        if not public and not (monitoring and ports == {9090}):
                            problem(name, f"admits {peer} from outside the namespace")
                        continue
                    sources = [p for p in pods_of(overlay) if selects(peer["podSelector"], p["_labels"])]
                    for source in sources:
                        source_component = source["_labels"].get("app.kubernetes.io/component")
                        if component in ("ratelimit", "dedup", "storm", "crd-writer") and source_component != "edge":
                            problem(name, f"admits {source['_name']}; only the edge calls components")
                        if labels.get("app.kubernetes.io/name") == "redis" and labels.get(f"breakwater.kubernaut.io/redis-for-{source_component}") != "true":
                            problem(name, f"admits {source['_name']}, which this Redis does not serve")
            for rule in policy["spec"].get("egress") or []:
                for peer in rule.get("to") or []:
                    if "podSelector" not in peer or "namespaceSelector" in peer:
                        continue
                    for target in pods_of(overlay):
                        if not selects(peer["podSelector"], target["_labels"]):
                            continue
                        if target["_labels"].get("app.kubernetes.io/name") == "redis" and \
                                target["_labels"].get(f"breakwater.kubernaut.io/redis-for-{component}") != "true":
                            problem(name, f"reaches {target['_name']}, a Redis that is not {component}'s")


PODS = {}


def pods_of(overlay):
    return PODS.get(overlay, [])


def main():
    breakwater, paths = sys.argv[1], sys.argv[2:]
    with open(breakwater, "rb") as f:
        binary_strings = f.read()
    objects = load(paths)
    for overlay in sorted({name for name, _ in objects}):
        configmaps = by_kind(objects, overlay, "ConfigMap")
        secrets = by_kind(objects, overlay, "Secret")
        deployments = by_kind(objects, overlay, "Deployment")
        for name, deployment in deployments.items():
            pod = deployment["spec"]["template"]["spec"]
            pod["_name"], pod["_labels"] = name, deployment["spec"]["template"]["metadata"].get("labels", {})
            PODS.setdefault(overlay, []).append(pod)
        configs, checked = {}, 0
        for pod in pods_of(overlay):
            for container in pod["containers"]:
                if container["image"].split("/")[-1].split(":")[0] == "breakwater":
                    config = check_container(overlay, pod, container, configmaps, secrets, binary_strings, breakwater)
                    args = container.get("args") or []
                    if config is not None:
                        configs[args[0]] = config
                    checked += 1
        for pod in pods_of(overlay):
            for container in pod["containers"]:
                if container["image"].startswith("redis:"):
                    check_redis(overlay, pod, container, secrets, configs)
        policies = by_kind(objects, overlay, "NetworkPolicy")
        check_network(overlay, policies)
        print(f"{overlay}: {checked} breakwater containers, {len(deployments) - checked} others, {len(policies)} NetworkPolicies checked")
    for line in problems:
        print(f"FAIL {line}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
