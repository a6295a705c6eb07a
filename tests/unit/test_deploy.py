"""deploy/: the compose file, the Dockerfile and the Kubernetes manifests parse, reference
only images, commands, ports, files and settings that exist, and stay in step with the
``Settings`` object (every ``MRHUB_*`` variable they set is a setting, with a valid value).
Docker and a cluster are not needed."""

from __future__ import annotations

import os
import re
import shlex
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import BaseModel

from services.cli import SERVICES, build_parser
from services.common.settings import Settings
from tests.conftest import REPO

DEPLOY = REPO / "deploy"
K8S = DEPLOY / "k8s"
COMPOSE: dict[str, Any] = yaml.safe_load((DEPLOY / "compose.yaml").read_text(encoding="utf-8"))
#: compose's ${VAR}, ${VAR:-default}, ${VAR:?error}
_INTERPOLATION = re.compile(r"\$\{([A-Z0-9_]+)(?:(:?[-?])([^}]*))?\}")


# ------------------------------------------------------------------------------ settings


def is_setting(var: str) -> bool:
    """Whether ``MRHUB_A__B`` names a field of ``Settings`` (``__`` for nesting)."""
    if not var.startswith("MRHUB_"):
        return False
    model: type[BaseModel] = Settings
    parts = var.removeprefix("MRHUB_").lower().split("__")
    for i, part in enumerate(parts):
        field = model.model_fields.get(part)
        if field is None:
            return False
        if i < len(parts) - 1:
            sub = field.annotation
            if not (isinstance(sub, type) and issubclass(sub, BaseModel)):
                return False
            model = sub
    return True


def check_settings(env: Mapping[str, str], where: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every MRHUB_ variable is a setting, and together they make a valid ``Settings``."""
    unknown = sorted(k for k in env if k.startswith("MRHUB_") and not is_setting(k))
    assert unknown == [], f"{where}: not settings: {unknown}"
    with monkeypatch.context() as m:
        for key in [k for k in os.environ if k.startswith("MRHUB_")]:
            m.delenv(key)
        for key, value in env.items():
            if key.startswith("MRHUB_"):
                m.setenv(key, value)
        Settings()  # raises on a value of the wrong type or out of range


def test_setting_names_are_recognised() -> None:
    assert is_setting("MRHUB_KAFKA__BOOTSTRAP_SERVERS")
    assert is_setting("MRHUB_STATE_DIR")
    assert not is_setting("MRHUB_KAFKA__BOOTSTRAP")
    assert not is_setting("MRHUB_STATE_DIR__X")
    assert not is_setting("KAFKA_NODE_ID")


def parses_as_mrhub_command(args: list[str]) -> None:
    """The arguments are a valid ``mrhub`` command line (``serve`` of a known service…)."""
    try:
        build_parser().parse_args(args)
    except SystemExit as exc:  # argparse's way of saying no
        raise AssertionError(f"not an mrhub command: {args}") from exc


# ------------------------------------------------------------------------------ compose


def compose_defaults(value: str) -> str:
    """A compose value with each ${VAR…} replaced by its default, else a placeholder."""
    return _INTERPOLATION.sub(lambda m: m.group(3) if m.group(2) == ":-" else "x", value)


def env_example() -> dict[str, str]:
    out = {}
    for line in (DEPLOY / ".env.example").read_text(encoding="utf-8").splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, _, value = line.partition("=")
            out[key.strip()] = value.strip()
    return out


def hub_services() -> dict[str, dict[str, Any]]:
    return {
        name: svc
        for name, svc in COMPOSE["services"].items()
        if str(svc.get("image", "")).startswith("mrhub:")
    }


def served() -> dict[str, tuple[str, dict[str, Any]]]:
    """mrhub service name → (compose service, definition) for each ``serve NAME``."""
    out = {}
    for name, svc in hub_services().items():
        command = svc.get("command", [])
        if command[:1] == ["serve"]:
            out[command[1]] = (name, svc)
    return out


def test_compose_runs_every_mrhub_service_kafka_prometheus_grafana_and_orthanc() -> None:
    assert set(served()) == {s.name for s in SERVICES}
    images = {svc.get("image", "").split(":")[0] for svc in COMPOSE["services"].values()}
    assert {"apache/kafka", "prom/prometheus", "grafana/grafana", "orthancteam/orthanc"} <= images
    kafka = COMPOSE["services"]["kafka"]["environment"]
    assert "controller" in kafka["KAFKA_PROCESS_ROLES"]  # KRaft: no ZooKeeper
    assert not any("zookeeper" in k.lower() for k in kafka)
    assert (DEPLOY / "..").resolve() / "deploy" / "Dockerfile" == DEPLOY / "Dockerfile"


def test_every_hub_container_is_built_from_the_one_dockerfile_and_runs_an_mrhub_command() -> None:
    for name, svc in hub_services().items():
        build = svc["build"]
        assert (DEPLOY / build["context"] / build["dockerfile"]).is_file(), name
        parses_as_mrhub_command([compose_defaults(str(a)) for a in svc["command"]])


def test_compose_sets_only_settings_and_valid_values(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, svc in hub_services().items():
        env = {k: compose_defaults(str(v)) for k, v in svc["environment"].items()}
        assert env["MRHUB_KAFKA__BOOTSTRAP_SERVERS"] == "kafka:9092"
        check_settings(env, f"compose {name}", monkeypatch)


def published(svc: dict[str, Any]) -> dict[int, str]:
    """Container port → the host address it is published on ("" for every address), for
    compose's "HOST:CONTAINER" and "IP:HOST:CONTAINER" (only the same port on both sides)."""
    out = {}
    for mapping in svc.get("ports", []):
        *ip, host, container = str(mapping).split(":")
        assert host == container, mapping
        out[int(container)] = ip[0] if ip else ""
    return out


def test_compose_ports_health_checks_and_scrape_targets_agree() -> None:
    prometheus = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text("utf-8"))
    targets = {
        (name, cfg["port"])
        for job in prometheus["scrape_configs"]
        for cfg in job["dns_sd_configs"]
        for name in cfg["names"]
    }
    for service, (name, svc) in served().items():
        env = svc["environment"]
        port = int(env[f"MRHUB_{service.upper()}__PORT"])
        assert env[f"MRHUB_{service.upper()}__HOST"] == "0.0.0.0", name  # noqa: S104
        assert port in published(svc), name
        probe = " ".join(svc["healthcheck"]["test"])
        assert f"127.0.0.1:{port}/readyz" in probe, name
        assert (name, port) in targets, f"Prometheus does not scrape {name}:{port}"
        assert Settings.model_fields[service].default.port == port  # the documented default
    assert len(targets) == len(served())


def test_the_compose_console_is_reachable_from_this_machine_only_with_its_secrets_required(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The console's cookie is not Secure in compose (plain HTTP), so it must not be
    published beyond the loopback address; its keys have no default; its people are in its
    own volume (where `docker compose exec console mrhub console add-user` writes them)."""
    _, svc = served()["console"]
    assert published(svc) == {8084: "127.0.0.1"}
    raw = {k: str(v) for k, v in svc["environment"].items()}
    for secret in ("MRHUB_CONSOLE__SESSION_KEY", "MRHUB_CONSOLE__STEWARD_TOKEN"):
        m = _INTERPOLATION.fullmatch(raw[secret])
        assert m is not None and m.group(1) == secret and m.group(2) == ":?", secret
        assert env_example()[secret] == "", f"{secret} has a value in .env.example"
    env = {k: compose_defaults(v) for k, v in raw.items()}
    users = Path(env["MRHUB_CONSOLE__USERS_PATH"])
    volumes = dict(str(v).split(":")[1::-1] for v in svc["volumes"])  # target → source
    owner = next(t for t in volumes if Path(t) in users.parents)
    assert volumes[owner] in COMPOSE["volumes"], "the users file is not on a named volume"
    assert owner == env["MRHUB_STATE_DIR"]
    # the services it calls are the compose services, on their ports
    hosts = {
        f"http://{n}:{svc_env['MRHUB_' + s.upper() + '__PORT']}"
        for s, (n, other) in served().items()
        for svc_env in [other["environment"]]
    }
    for var in (
        "MRHUB_CONSOLE__IMAGING_URL",
        "MRHUB_CONSOLE__INGEST_URL",
        "MRHUB_PATIENT_INDEX__URL",
        "MRHUB_RECOGNITION__URL",
    ):
        assert env[var] in hosts, f"{var}={env[var]}"
    with monkeypatch.context() as patched:
        for key in [k for k in os.environ if k.startswith("MRHUB_")]:
            patched.delenv(key)
        for key, value in env.items():
            patched.setenv(key, value)
        settings = Settings()
    assert settings.console.secure_cookies is False  # over http://127.0.0.1:8084
    assert settings.console.port == 8084


def test_compose_mounts_and_volumes_exist() -> None:
    declared = set(COMPOSE.get("volumes") or {})
    for name, svc in COMPOSE["services"].items():
        for mount in svc.get("volumes", []):
            source, target = str(mount).split(":")[:2]
            if source.startswith("."):
                assert (DEPLOY / source).exists(), f"{name}: {source}"
            else:
                assert source in declared, f"{name}: volume {source} is not declared"
            assert target.startswith("/"), name
    # the state of every worker is a volume at MRHUB_STATE_DIR
    for service, (name, svc) in served().items():
        if service == "ingest":
            continue
        state = svc["environment"]["MRHUB_STATE_DIR"]
        assert any(str(v).split(":")[1] == state for v in svc["volumes"]), name


def test_compose_variables_are_all_in_env_example() -> None:
    example = env_example()
    text = (DEPLOY / "compose.yaml").read_text(encoding="utf-8")
    used = {m.group(1) for m in _INTERPOLATION.finditer(text)}
    required = {m.group(1) for m in _INTERPOLATION.finditer(text) if m.group(2) == ":?"}
    assert sorted(required - set(example)) == [], "a required variable .env.example lacks"
    assert sorted(set(example) - used) == [], ".env.example has variables compose never reads"
    assert [k for k in example if k.startswith("MRHUB_") and not is_setting(k)] == []
    # secrets have no value in the example
    for secret in ("MRHUB_IDENTITY__HMAC_KEY", "GRAFANA_ADMIN_PASSWORD", "ORTHANC_PASSWORD"):
        assert example[secret] == "", secret


# ---------------------------------------------------------------------------- Dockerfile


def dockerfile() -> list[tuple[str, str]]:
    text = (DEPLOY / "Dockerfile").read_text(encoding="utf-8").replace("\\\n", " ")
    out = []
    for line in text.splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            word, _, rest = line.strip().partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def test_the_dockerfile_copies_what_exists_and_exposes_the_service_ports(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    steps = dockerfile()
    for word, rest in steps:
        if word == "COPY" and "--from" not in rest:
            *sources, _ = shlex.split(rest)
            for source in sources:
                assert (REPO / source).exists(), source
    [exposed] = [rest for word, rest in steps if word == "EXPOSE"]
    defaults = {Settings.model_fields[s.name].default.port for s in SERVICES}
    assert {int(p) for p in exposed.split()} == defaults
    env = dict(
        pair.split("=", 1) for word, rest in steps if word == "ENV" for pair in shlex.split(rest)
    )
    check_settings(env, "Dockerfile", monkeypatch)
    [entrypoint] = [rest for word, rest in steps if word == "ENTRYPOINT"]
    assert yaml.safe_load(entrypoint) == ["mrhub"]
    [cmd] = [rest for word, rest in steps if word == "CMD"]
    parses_as_mrhub_command(yaml.safe_load(cmd))


def test_the_image_carries_the_consoles_templates_and_static_files() -> None:
    """The image installs services/ as a package (`pip install .`, not the source tree), so a
    template or static file the package data does not declare would be missing there while
    every test run from the repository passes."""
    import tomllib

    steps = dockerfile()
    assert ("COPY", "services ./services") in steps
    assert any(w == "RUN" and "pip install" in r and " ." in r for w, r in steps)
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))
    patterns = pyproject["tool"]["setuptools"]["package-data"]["services.console"]
    package = REPO / "services" / "console"
    declared = {p for pattern in patterns for p in package.glob(pattern) if p.is_file()}
    shipped = [
        p
        for sub in ("templates", "static")
        for p in (package / sub).rglob("*")
        if p.is_file() and "__pycache__" not in p.parts
    ]
    assert (package / "templates" / "base.html") in shipped
    assert sorted(str(p.relative_to(package)) for p in set(shipped) - declared) == []


# ----------------------------------------------------------------------------- Kubernetes


KUSTOMIZATION: dict[str, Any] = yaml.safe_load((K8S / "kustomization.yaml").read_text("utf-8"))


def manifests() -> list[dict[str, Any]]:
    docs: list[dict[str, Any]] = []
    for resource in KUSTOMIZATION["resources"]:
        path = K8S / resource
        assert path.is_file(), resource
        docs.extend(d for d in yaml.safe_load_all(path.read_text(encoding="utf-8")) if d)
    return docs


def of_kind(*kinds: str) -> list[dict[str, Any]]:
    return [d for d in manifests() if d["kind"] in kinds]


def workloads() -> list[dict[str, Any]]:
    return of_kind("Deployment", "StatefulSet", "Job")


def generated_configmaps() -> dict[str, dict[str, Path]]:
    """ConfigMap name → file key → the repository file it is made from."""
    out: dict[str, dict[str, Path]] = {}
    for gen in KUSTOMIZATION["configMapGenerator"]:
        files = {}
        for entry in gen["files"]:
            key, _, source = entry.rpartition("=")
            path = (K8S / source).resolve()
            assert path.is_file(), source
            files[key or path.name] = path
        out[gen["name"]] = files
    return out


def settings_configmap() -> dict[str, str]:
    [cm] = [d for d in of_kind("ConfigMap") if d["metadata"]["name"] == "mrhub-settings"]
    return {k: str(v) for k, v in cm["data"].items()}


def containers() -> Iterator[tuple[dict[str, Any], dict[str, Any]]]:
    for w in workloads():
        for c in w["spec"]["template"]["spec"]["containers"]:
            yield w, c


def container_env(c: dict[str, Any]) -> tuple[dict[str, str], dict[str, tuple[str, str]]]:
    """(plain values, secret refs) of a container, with its envFrom ConfigMaps."""
    env: dict[str, str] = {}
    for source in c.get("envFrom", []):
        assert source["configMapRef"]["name"] == "mrhub-settings"
        env.update(settings_configmap())
    secrets = {}
    for e in c.get("env", []):
        if "value" in e:
            env[e["name"]] = str(e["value"])
        else:
            ref = e["valueFrom"]["secretKeyRef"]
            secrets[e["name"]] = (ref["name"], ref["key"])
    return env, secrets


def test_the_kustomization_covers_the_whole_catalogue() -> None:
    maps = generated_configmaps()
    catalogue = sorted(p.name for p in (REPO / "config" / "catalog").glob("*.y*ml"))
    assert sorted(maps["mrhub-catalog"]) == catalogue
    assert maps["mrhub-institutions"]["institutions.yaml"] == REPO / "config/institutions.yaml"


def test_every_pod_has_service_links_off_resources_and_a_disruption_budget() -> None:
    budgets = [d["spec"]["selector"]["matchLabels"] for d in of_kind("PodDisruptionBudget")]
    for w in workloads():
        pod = w["spec"]["template"]
        name = w["metadata"]["name"]
        assert pod["spec"]["enableServiceLinks"] is False, name
        for c in pod["spec"]["containers"]:
            for kind in ("requests", "limits"):
                assert {"cpu", "memory"} <= set(c["resources"][kind]), f"{name} {kind}"
        if w["kind"] != "Job":
            labels = pod["metadata"]["labels"]
            assert any(b.items() <= labels.items() for b in budgets), f"{name}: no PDB"


def test_every_mrhub_service_is_deployed_workers_as_statefulsets() -> None:
    kinds = {}
    for w, c in containers():
        if c["args"][:1] == ["serve"]:
            kinds[c["args"][1]] = w["kind"]
    assert set(kinds) == {s.name for s in SERVICES}
    assert kinds.pop("ingest") == "Deployment"
    assert kinds.pop("console") == "Deployment"  # keeps nothing on disk
    assert set(kinds.values()) == {"StatefulSet"}
    [console] = [w for w in workloads() if w["metadata"]["name"] == "console"]
    assert console["spec"]["replicas"] == 1  # one process: it holds no partitions


def test_k8s_sets_only_settings_and_valid_values(monkeypatch: pytest.MonkeyPatch) -> None:
    for w, c in containers():
        env, secrets = container_env(c)
        check_settings(env, w["metadata"]["name"], monkeypatch)
        assert all(is_setting(k) for k in secrets), secrets
        parses_as_mrhub_command(c["args"])


def test_secrets_are_referenced_never_committed_and_documented() -> None:
    assert not of_kind("Secret")
    operations = (REPO / "docs" / "operations.md").read_text(encoding="utf-8")
    for _, c in containers():
        _, secrets = container_env(c)
        for var, (name, key) in secrets.items():
            assert name == "mrhub-secrets"
            assert f"`{key}`" in operations and f"`{var}`" in operations, key
    for w in workloads():
        for v in w["spec"]["template"]["spec"].get("volumes", []):
            if "secret" in v:  # a Secret mounted as files: how to make it is documented
                assert f"`{v['secret']['secretName']}`" in operations, v["name"]
    hmac = {
        c["args"][1]: secrets.get("MRHUB_IDENTITY__HMAC_KEY")
        for _, c in containers()
        for secrets in [container_env(c)[1]]
        if c["args"][:1] == ["serve"]
    }
    # the console hashes no identifier: it does not get the key
    assert hmac.pop("console") is None
    # every other service keys the same way
    assert set(hmac.values()) == {("mrhub-secrets", "identity-hmac-key")}


def test_the_k8s_console_has_its_keys_secure_cookies_and_its_people_from_a_secret() -> None:
    [(w, c)] = [(w, c) for w, c in containers() if c["args"] == ["serve", "console"]]
    env, secrets = container_env(c)
    assert secrets["MRHUB_CONSOLE__SESSION_KEY"] == ("mrhub-secrets", "console-session-key")
    assert secrets["MRHUB_CONSOLE__STEWARD_TOKEN"] == ("mrhub-secrets", "console-steward-token")
    assert env["MRHUB_CONSOLE__SECURE_COOKIES"] == "true"  # reached through TLS only
    pod = w["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    users = Path(env["MRHUB_CONSOLE__USERS_PATH"])
    [mount] = [m for m in c["volumeMounts"] if Path(m["mountPath"]) == users.parent]
    # a directory, not a subPath, so an updated Secret reaches the running console
    assert "subPath" not in mount and mount.get("readOnly") is True
    secret = volumes[mount["name"]]["secret"]
    assert any(i["path"] == users.name for i in secret["items"])
    # no other way in than the ClusterIP Service (behind the Ingress with TLS)
    for s in of_kind("Service"):
        if s["spec"]["selector"].items() <= w["spec"]["template"]["metadata"]["labels"].items():
            assert s["spec"].get("type", "ClusterIP") == "ClusterIP", s["metadata"]["name"]
    # the URLs it calls name Services that exist, on their ports
    services = {
        (s["metadata"]["name"], p["port"])
        for s in of_kind("Service")
        if s["spec"].get("clusterIP") != "None"
        for p in s["spec"]["ports"]
    }
    for var in (
        "MRHUB_CONSOLE__IMAGING_URL",
        "MRHUB_CONSOLE__INGEST_URL",
        "MRHUB_PATIENT_INDEX__URL",
        "MRHUB_RECOGNITION__URL",
    ):
        m = re.fullmatch(r"http://([a-z0-9-]+)\.mrhub\.svc:(\d+)", env[var])
        assert m is not None and (m.group(1), int(m.group(2))) in services, f"{var}={env[var]}"


def test_probes_ports_and_services_agree() -> None:
    services = of_kind("Service")
    for w, c in containers():
        if c["args"][:1] != ["serve"]:
            continue
        name = c["args"][1]
        env, _ = container_env(c)
        port = int(env[f"MRHUB_{name.upper()}__PORT"])
        assert env[f"MRHUB_{name.upper()}__HOST"] == "0.0.0.0"  # noqa: S104
        ports = {p["name"]: p["containerPort"] for p in c["ports"]}
        assert ports == {"http": port}, name
        assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}, name
        assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}, name
        pod = w["spec"]["template"]
        annotations = pod["metadata"]["annotations"]
        assert annotations["prometheus.io/port"] == str(port)
        selecting = [
            s
            for s in services
            if s["spec"]["selector"].items() <= pod["metadata"]["labels"].items()
        ]
        assert any(s["spec"].get("clusterIP") == "None" for s in selecting), f"{name}: headless"
        assert any(s["spec"].get("clusterIP") != "None" for s in selecting), f"{name}: service"
        for s in selecting:
            assert [p["targetPort"] for p in s["spec"]["ports"]] == ["http"]
            assert [p["port"] for p in s["spec"]["ports"]] == [port]
        if w["kind"] == "StatefulSet":
            assert w["spec"]["serviceName"] in {s["metadata"]["name"] for s in selecting}


def test_config_files_and_state_are_mounted_where_the_settings_point() -> None:
    maps = generated_configmaps()
    for w, c in containers():
        pod = w["spec"]["template"]["spec"]
        volumes = {v["name"]: v for v in pod.get("volumes", [])}
        claims = {t["metadata"]["name"] for t in w["spec"].get("volumeClaimTemplates", [])}
        mounts = {m["mountPath"]: m["name"] for m in c.get("volumeMounts", [])}
        for m in mounts.values():
            assert m in volumes or m in claims, f"{w['metadata']['name']}: {m}"
        env, _ = container_env(c)
        for var, value in env.items():
            if not value.startswith("/etc/mrhub/"):
                continue
            path = Path(value)
            mount = next((p for p in mounts if path == Path(p) or Path(p) in path.parents), None)
            assert mount is not None, f"{var}={value} is not mounted"
            volume = volumes[mounts[mount]]
            if "secret" in volume:  # made by hand (docs/operations.md): its items name the file
                items = {i["path"] for i in volume["secret"]["items"]}
                assert str(path.relative_to(mount)) in items, f"{var}: not in the Secret"
                continue
            cm = volume["configMap"]["name"]
            if path != Path(mount):  # a file inside the mounted ConfigMap
                assert str(path.relative_to(mount)) in maps[cm], f"{var}: not in {cm}"
        if w["kind"] == "StatefulSet":
            state = env["MRHUB_STATE_DIR"]
            assert mounts.get(state) in claims, f"{w['metadata']['name']}: state not on a volume"


def test_the_matching_rules_in_kubernetes_find_their_name_frequency_table(tmp_path: Path) -> None:
    """The patient index reads the rules from the mounted ConfigMap; rules-v2 reads
    data/name-frequencies.tsv next to them. Lay the volume out as Kubernetes would (its
    items) and load the rules from there."""
    from services.patient_index.matching import load_rules

    maps = generated_configmaps()["mrhub-matching"]
    [w] = [w for w in workloads() if w["metadata"]["name"] == "patient-index"]
    pod = w["spec"]["template"]["spec"]
    [vol] = [v for v in pod["volumes"] if v["name"] == "matching"]
    for item in vol["configMap"]["items"]:
        target = tmp_path / item["path"]
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(maps[item["key"]].read_bytes())
    [c] = pod["containers"]
    env, _ = container_env(c)
    mount = next(m for m in c["volumeMounts"] if m["name"] == "matching")["mountPath"]
    rules_path = env["MRHUB_PATIENT_INDEX__RULES_PATH"]
    assert rules_path.startswith(mount + "/")
    rules = load_rules(tmp_path / rules_path.removeprefix(mount + "/"))
    assert rules.frequencies is not None and rules.frequencies.surname["王"] > 0.05
