"""The deployment files, checked without a Docker engine: docker-compose.yml, Dockerfile,
.dockerignore and .env.example agree with the code they run."""

from __future__ import annotations

import importlib
import os
import re
import shutil
import subprocess
import sys
import tomllib
import venv
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import click
import pytest
import yaml

from imagine.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
ENV_EXAMPLE = ROOT / ".env.example"
PYPROJECT = ROOT / "pyproject.toml"

SETTINGS = {name.upper() for name in Settings.model_fields}
# Variables a service may set that are not settings, and who reads them.
INFRA_VARS = {
    "POSTGRES_USER": "the postgres image",
    "POSTGRES_PASSWORD": "the postgres image",
    "POSTGRES_DB": "the postgres image",
    "WEB_CONCURRENCY": "gunicorn (its worker count)",
    "FLOWER_BASIC_AUTH": "Flower (its --basic-auth option)",
}
# The FAL_KEY default: falsim wants `Key id:secret` but takes any; real fal refuses it.
SIM_PLACEHOLDER_KEY = "falsim:not-a-real-key"
CONDITIONS = {"service_started", "service_healthy", "service_completed_successfully"}
CORE_SERVICES = {"postgres", "redis", "migrate", "worker", "beat", "receiver"}
APP_SERVICES = {"worker", "beat", "receiver"}
BUILD_TOOLS = re.compile(r"\b(build-essential|gcc|g\+\+|clang|make|cmake|cargo|rustc)\b")
# `${NAME`, not `$${NAME` (an escaped `$`, expanded inside the container).
INTERPOLATION = re.compile(r"(?<!\$)\$\{([A-Za-z_][A-Za-z0-9_]*)")


def _load_compose() -> dict[str, Any]:
    data = yaml.safe_load(COMPOSE_FILE.read_text())
    assert isinstance(data, dict)
    return data


COMPOSE = _load_compose()
SERVICES: dict[str, dict[str, Any]] = COMPOSE["services"]


def _environment(service: dict[str, Any]) -> dict[str, str | None]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        return dict(item.split("=", 1) if "=" in item else (item, None) for item in env)
    return {str(key): None if value is None else str(value) for key, value in env.items()}


def _shared_env() -> dict[str, str | None]:
    """The `x-app-env` anchor every application service starts from."""
    return _environment({"environment": COMPOSE["x-app-env"]})


def _default(value: str | None) -> str:
    """The default of a `${NAME:-default}` / `${NAME-default}` value (or the literal value)."""
    assert value is not None
    match = re.fullmatch(r"\$\{[A-Za-z_][A-Za-z0-9_]*:?-(.*)\}", value)
    return match.group(1) if match else value


def _option(argv: list[str], name: str) -> str | None:
    """The value of `--name=value` or `--name value` in argv."""
    for i, token in enumerate(argv):
        if token.startswith(f"{name}="):
            return token.split("=", 1)[1]
        if token == name and i + 1 < len(argv):
            return argv[i + 1]
    return None


def _command(service: dict[str, Any]) -> list[str]:
    command = service.get("command")
    assert isinstance(command, list), "commands are exec-form lists (no shell, signals reach it)"
    # As compose would run them with nothing set in .env.
    return [re.sub(r"\$\{\w+:?-([^}]*)\}", r"\1", str(token)) for token in command]


def _import_attribute(path: str) -> Any:
    module_name, _, attribute = path.partition(":")
    assert attribute, f"{path!r} is not module:attribute"
    module = importlib.import_module(module_name)
    assert hasattr(module, attribute), f"{module_name} has no attribute {attribute!r}"
    return getattr(module, attribute)


# ---------------------------------------------------------------------------------------------
# The Dockerfile, parsed
# ---------------------------------------------------------------------------------------------


@dataclass
class Stage:
    name: str
    base: str
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def last(self, keyword: str) -> str | None:
        values = [args for kw, args in self.instructions if kw == keyword]
        return values[-1] if values else None


def _dockerfile_lines() -> Iterator[tuple[str, str]]:
    logical = ""
    for raw in DOCKERFILE.read_text().splitlines():
        line = raw.strip()
        if not logical and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):
            continue
        if line.endswith("\\"):
            logical += line[:-1] + " "
            continue
        logical += line
        keyword, _, args = logical.partition(" ")
        yield keyword.upper(), args.strip()
        logical = ""


def _stages() -> dict[str, Stage]:
    args: dict[str, str] = {}
    stages: dict[str, Stage] = {}
    current: Stage | None = None
    for keyword, rest in _dockerfile_lines():
        if keyword == "ARG" and current is None:
            name, _, value = rest.partition("=")
            args[name] = value
        elif keyword == "FROM":
            parts = rest.split()
            base = re.sub(r"\$\{(\w+)\}", lambda m: args.get(m.group(1), m.group(0)), parts[0])
            name = parts[2] if len(parts) == 3 and parts[1].upper() == "AS" else str(len(stages))
            current = Stage(name=name, base=base)
            stages[name] = current
        else:
            assert current is not None, f"{keyword} before the first FROM"
            current.instructions.append((keyword, rest))
    return stages


STAGES = _stages()


def _chain(target: str) -> list[Stage]:
    """The stage and the stages it is built FROM, nearest first."""
    chain = [STAGES[target]]
    while chain[-1].base in STAGES:
        chain.append(STAGES[chain[-1].base])
    return chain


def _inherited(target: str, keyword: str) -> str | None:
    for stage in _chain(target):
        value = stage.last(keyword)
        if value is not None:
            return value
    return None


def _build_targets() -> dict[str, str]:
    """service -> Dockerfile stage, for every service built from this repository."""
    targets = {}
    for name, service in SERVICES.items():
        build = service.get("build")
        if build is None:
            continue
        assert isinstance(build, dict) and build.get("target"), f"{name}: build names a target"
        assert Path(ROOT, build.get("context", ".")).resolve() == ROOT
        assert build.get("dockerfile", "Dockerfile") == "Dockerfile"
        targets[name] = build["target"]
    return targets


# ---------------------------------------------------------------------------------------------
# Commands
# ---------------------------------------------------------------------------------------------


def _check_imagine(argv: list[str]) -> None:
    """argv (after `imagine`) names a real command of the click tree and parses."""
    from imagine.cli import main

    command: click.Command = main
    ctx = click.Context(main, info_name="imagine")
    rest = list(argv)
    while isinstance(command, click.Group):
        assert rest and not rest[0].startswith("-"), f"`imagine {' '.join(argv)}`: no subcommand"
        name = rest.pop(0)
        sub = command.get_command(ctx, name)
        assert sub is not None, f"`imagine {' '.join(argv)}`: {name!r} is not a subcommand"
        if isinstance(sub, click.Group):
            ctx = click.Context(sub, info_name=name, parent=ctx)
        else:
            # Parses the options as the real run would, without calling the command.
            sub.make_context(name, rest, parent=ctx)
        command = sub


def _check_gunicorn(argv: list[str]) -> None:
    from gunicorn.config import Config

    try:
        parsed = Config().parser().parse_args(argv)
    except SystemExit:
        pytest.fail(f"gunicorn refuses {argv}")
    assert len(parsed.args) == 1, f"one WSGI application, got {parsed.args}"
    assert callable(_import_attribute(parsed.args[0]))


def _ops_extra() -> list[str]:
    project = tomllib.loads(PYPROJECT.read_text())["project"]
    return [str(req) for req in project["optional-dependencies"].get("ops", [])]


def _check_celery(argv: list[str]) -> None:
    from celery import Celery
    from celery.bin.celery import celery

    app_path = _option(argv, "--app") or _option(argv, "-A")
    assert app_path, f"celery {argv}: no --app"
    assert isinstance(_import_attribute(app_path), Celery)
    subcommands = [token for token in argv if not token.startswith("-") and token != app_path]
    assert subcommands, f"celery {argv}: no subcommand"
    if subcommands[0] == "flower":
        # A plugin: installed in the image by the `ops` extra, not necessarily here.
        assert any(req.startswith("flower") for req in _ops_extra()), "flower is in the ops extra"
    else:
        assert subcommands[0] in celery.commands, f"celery has no {subcommands[0]!r} command"


def _check_command(argv: list[str]) -> None:
    program, rest = argv[0], argv[1:]
    if program == "imagine":
        _check_imagine(rest)
    elif program == "gunicorn":
        _check_gunicorn(rest)
    elif program == "celery":
        _check_celery(rest)
    else:
        pytest.fail(f"unknown program {program!r}")


# ---------------------------------------------------------------------------------------------
# .dockerignore
# ---------------------------------------------------------------------------------------------


def _ignore_patterns() -> list[tuple[bool, re.Pattern[str]]]:
    patterns = []
    for raw in DOCKERIGNORE.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        negated = line.startswith("!")
        glob = line.lstrip("!").strip("/")
        regex = ""
        i = 0
        while i < len(glob):
            if glob.startswith("**/", i):
                regex += "(?:.*/)?"
                i += 3
            elif glob.startswith("**", i):
                regex += ".*"
                i += 2
            elif glob[i] == "*":
                regex += "[^/]*"
                i += 1
            elif glob[i] == "?":
                regex += "[^/]"
                i += 1
            elif glob[i] == "[":
                end = glob.index("]", i)
                regex += glob[i : end + 1]
                i = end + 1
            else:
                regex += re.escape(glob[i])
                i += 1
        patterns.append((negated, re.compile(regex)))
    return patterns


def _in_context(relative: str) -> bool:
    """Whether docker sends `relative` in the build context (the last matching pattern wins;
    a pattern matching a parent directory matches everything below it)."""
    parts = relative.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    included = True
    for negated, regex in _ignore_patterns():
        if any(regex.fullmatch(prefix) for prefix in prefixes):
            included = negated
    return included


def _context_files() -> list[Path]:
    skip = {".git", ".venv", "node_modules"}
    files = []
    for path in ROOT.rglob("*"):
        relative = path.relative_to(ROOT)
        if skip & set(relative.parts) or not path.is_file():
            continue
        if _in_context(relative.as_posix()):
            files.append(relative)
    return files


def _top_level_packages() -> list[str]:
    includes = tomllib.loads(PYPROJECT.read_text())["tool"]["setuptools"]["packages"]["find"][
        "include"
    ]
    return sorted({pattern.rstrip("*.") for pattern in includes})


# ---------------------------------------------------------------------------------------------
# docker-compose.yml: services, commands, environment, dependencies
# ---------------------------------------------------------------------------------------------


def test_the_required_services_exist_and_only_the_extras_have_profiles() -> None:
    assert set(SERVICES) >= CORE_SERVICES
    for name in CORE_SERVICES:
        assert not SERVICES[name].get("profiles"), f"{name} runs without any profile"
    assert SERVICES["falsim"]["profiles"] == ["sim"]
    assert SERVICES["flower"]["profiles"] == ["ops"]


@pytest.mark.parametrize("name", sorted(n for n, s in SERVICES.items() if "build" in s))
def test_every_service_runs_a_real_command(name: str) -> None:
    _check_command(_command(SERVICES[name]))


def test_the_services_run_what_the_issue_asks() -> None:
    assert _command(SERVICES["migrate"]) == ["imagine", "db", "upgrade"]
    assert _command(SERVICES["worker"])[:2] == ["imagine", "worker"]
    assert _command(SERVICES["beat"])[:2] == ["imagine", "beat"]
    assert _command(SERVICES["receiver"])[0] == "gunicorn"
    assert "webhook_receiver.wsgi:app" in _command(SERVICES["receiver"])
    assert _command(SERVICES["falsim"])[:2] == ["imagine", "falsim"]
    assert _command(SERVICES["flower"])[0] == "celery"
    assert "flower" in _command(SERVICES["flower"])


def test_the_command_checks_catch_a_wrong_command() -> None:
    with pytest.raises(AssertionError, match="not a subcommand"):
        _check_imagine(["db", "upgrayedd"])
    with pytest.raises(click.UsageError):
        _check_imagine(["db", "upgrade", "--no-such-option"])
    with pytest.raises((AssertionError, ImportError)):
        _check_gunicorn(["--bind=0.0.0.0:8000", "webhook_receiver.wsgi:no_such_app"])


@pytest.mark.parametrize("name", sorted(SERVICES))
def test_every_variable_a_service_sets_is_a_setting_or_documented_infra(name: str) -> None:
    unknown = set(_environment(SERVICES[name])) - SETTINGS - set(INFRA_VARS)
    assert unknown == set()


def test_the_shared_environment_passes_every_setting() -> None:
    # A setting missing here would be silently ignored when set in .env.
    shared = _shared_env()
    assert set(shared) == SETTINGS
    for name in APP_SERVICES | {"migrate"}:
        assert set(_environment(SERVICES[name])) >= SETTINGS, name


def test_secrets_are_never_written_into_the_compose_file() -> None:
    secret = re.compile(r"(KEY|PASSWORD|SECRET|TOKEN|BASIC_AUTH)$")
    for name, service in SERVICES.items():
        for variable, value in _environment(service).items():
            if variable == "FAL_KEY" and value == f"${{FAL_KEY:-{SIM_PLACEHOLDER_KEY}}}":
                continue
            if secret.search(variable) and value is not None:
                assert value.startswith("${"), f"{name}.{variable} is a literal secret"
                assert re.fullmatch(r"\$\{\w+(:\?[^}]*)?\}", value), (
                    f"{name}.{variable} has a default: a secret must be required or passed through"
                )


def test_required_secrets_fail_loudly() -> None:
    text = COMPOSE_FILE.read_text()
    assert "${POSTGRES_PASSWORD:?" in text
    assert _environment(SERVICES["postgres"])["POSTGRES_PASSWORD"] == (
        "${POSTGRES_PASSWORD:?set POSTGRES_PASSWORD in .env (see .env.example)}"
    )
    # Compose tries `-` defaults before `:?` checks when a `-` comes first in the same value,
    # so a hyphen in a message (or a `}`) would turn the check into a silent default.
    for message in re.findall(r"\$\{\w+:?\?([^}]*)\}", text):
        assert "-" not in message, message


def test_every_depends_on_names_a_service_with_a_valid_condition() -> None:
    for name, service in SERVICES.items():
        depends = service.get("depends_on") or {}
        assert isinstance(depends, dict), f"{name}: depends_on with conditions"
        for other, spec in depends.items():
            assert other in SERVICES, f"{name} depends on unknown service {other!r}"
            assert other != name
            assert spec["condition"] in CONDITIONS, f"{name} -> {other}: {spec['condition']}"
            if spec["condition"] == "service_healthy":
                assert _has_healthcheck(other), f"{name} waits for {other}, which has no check"
            if SERVICES[other].get("profiles") and not service.get("profiles"):
                assert spec.get("required") is False, f"{name} needs {other} only in its profile"


def _has_healthcheck(name: str) -> bool:
    check = SERVICES[name].get("healthcheck")
    if check is not None:
        return not check.get("disable") and bool(check.get("test"))
    target = _build_targets().get(name)
    return target is not None and (_inherited(target, "HEALTHCHECK") or "NONE") != "NONE"


def test_dependencies_have_no_cycle() -> None:
    def visit(name: str, path: tuple[str, ...]) -> None:
        assert name not in path, f"cycle: {' -> '.join((*path, name))}"
        for other in SERVICES[name].get("depends_on") or {}:
            visit(other, (*path, name))

    for name in SERVICES:
        visit(name, ())


def test_the_application_waits_for_the_migration_and_the_migration_for_postgres() -> None:
    for name in APP_SERVICES:
        depends = SERVICES[name]["depends_on"]
        assert depends["migrate"]["condition"] == "service_completed_successfully", name
    assert SERVICES["migrate"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert SERVICES["migrate"]["restart"] == "no"


def test_workers_scale_and_beat_does_not() -> None:
    worker = SERVICES["worker"]
    assert "container_name" not in worker and "ports" not in worker
    assert (worker.get("deploy") or {}).get("replicas", 1) >= 1
    beat = SERVICES["beat"]
    assert (beat.get("deploy") or {}).get("replicas", 1) == 1
    assert beat.get("scale", 1) == 1


def test_datastores_have_healthchecks_and_volumes() -> None:
    postgres, redis = SERVICES["postgres"], SERVICES["redis"]
    assert postgres["image"].startswith("postgres:16")
    assert "pg_isready" in " ".join(postgres["healthcheck"]["test"])
    assert any(v.endswith(":/var/lib/postgresql/data") for v in postgres["volumes"])
    assert redis["image"].startswith("redis:7")
    assert redis["healthcheck"]["test"][-2:] == ["redis-cli", "ping"]
    assert any(v.endswith(":/data") for v in redis["volumes"])


def test_the_receiver_is_published_and_checked_on_healthz() -> None:
    receiver = SERVICES["receiver"]
    bind = _option(_command(receiver), "--bind")
    assert bind is not None
    port = bind.rsplit(":", 1)[1]
    assert any(str(p).endswith(f":{port}") for p in receiver["ports"])
    assert f"127.0.0.1:{port}/healthz" in " ".join(receiver["healthcheck"]["test"])


def test_named_volumes_are_declared_and_the_archive_is_shared() -> None:
    declared = set(COMPOSE.get("volumes") or {})
    for name, service in SERVICES.items():
        for volume in service.get("volumes") or []:
            source = str(volume).split(":", 1)[0]
            if not source.startswith((".", "/")):
                assert source in declared, f"{name} mounts undeclared volume {source!r}"
    archive_dir = _shared_env()["ARCHIVE_DIR"]
    for name in ("worker", "receiver"):
        mounts = [str(v).split(":")[:2] for v in SERVICES[name]["volumes"]]
        assert ["archive", archive_dir] in mounts, name
    assert "archive:/data/archive" in SERVICES["worker"]["volumes"]  # the writer mounts it rw


def test_the_sim_profile_points_everything_at_falsim() -> None:
    falsim = SERVICES["falsim"]
    argv = _command(falsim)
    public_url = _option(argv, "--public-url")
    assert public_url is not None and _option(argv, "--host") == "0.0.0.0"
    parts = urlsplit(public_url)
    # The URLs in falsim's answers are reachable from the other containers.
    assert parts.hostname == "falsim" and str(parts.port) == _option(argv, "--port")
    # With nothing set in .env, the services talk to falsim and get its webhooks.
    env = _shared_env()
    assert _default(env["FAL_QUEUE_URL"]) == public_url
    assert _default(env["FAL_JWKS_URL"]) == f"{public_url}/.well-known/jwks.json"
    receiver_port = (_option(_command(SERVICES["receiver"]), "--bind") or "").rsplit(":", 1)[1]
    assert _default(env["WEBHOOK_BASE_URL"]) == f"http://receiver:{receiver_port}"
    # No real key: falsim accepts any well-formed key (no --key); the default is a placeholder.
    assert _option(argv, "--key") is None
    assert _default(env["FAL_KEY"]) == SIM_PLACEHOLDER_KEY
    assert re.fullmatch(r"[^:\s]+:[^:\s]+", SIM_PLACEHOLDER_KEY)
    # falsim needs neither the database nor the broker.
    assert not (set(_environment(falsim)) & {"DATABASE_URL", "REDIS_URL"})


# ---------------------------------------------------------------------------------------------
# Dockerfile and .dockerignore
# ---------------------------------------------------------------------------------------------


def test_every_build_target_is_a_dockerfile_stage() -> None:
    targets = _build_targets()
    assert set(targets) >= APP_SERVICES | {"migrate", "falsim", "flower"}
    for name, target in targets.items():
        assert target in STAGES, f"{name}: no stage {target!r} in the Dockerfile"


def test_copy_from_names_an_earlier_stage() -> None:
    seen: list[str] = []
    for name, stage in STAGES.items():
        for keyword, args in stage.instructions:
            match = re.search(r"--from=(\S+)", args) if keyword == "COPY" else None
            if match:
                assert match.group(1) in seen, f"{name}: COPY --from={match.group(1)}"
        seen.append(name)


@pytest.mark.parametrize("target", sorted(set(_build_targets().values())))
def test_final_stages_are_slim_non_root_and_healthchecked(target: str) -> None:
    chain = _chain(target)
    assert "builder" not in {stage.name for stage in chain}
    assert "slim" in chain[-1].base
    for stage in chain:
        for keyword, args in stage.instructions:
            if keyword == "RUN":
                assert not BUILD_TOOLS.search(args), f"{stage.name} installs build tools: {args}"
    user = _inherited(target, "USER")
    assert user is not None and user.split(":")[0] not in {"root", "0"}
    assert (_inherited(target, "HEALTHCHECK") or "NONE") != "NONE"
    env = " ".join(args for stage in chain for kw, args in stage.instructions if kw == "ENV")
    for variable in (
        "PYTHONUNBUFFERED=1",
        "PYTHONDONTWRITEBYTECODE=1",
        "ARCHIVE_DIR=/data/archive",
    ):
        assert variable in env
    volumes = " ".join(args for stage in chain for kw, args in stage.instructions if kw == "VOLUME")
    assert "/data/archive" in volumes


def test_the_receiver_image_exposes_and_checks_its_port() -> None:
    assert _inherited("receiver", "EXPOSE") == "8000"
    healthcheck = _inherited("receiver", "HEALTHCHECK") or ""
    assert "127.0.0.1:8000/healthz" in healthcheck
    assert "webhook_receiver.wsgi:app" in (_inherited("receiver", "CMD") or "")
    assert "worker.celery_app:celery_app" in (_inherited("worker", "HEALTHCHECK") or "")
    _import_attribute("worker.celery_app:celery_app")


def test_the_worker_healthcheck_pings_the_node_the_worker_runs() -> None:
    # Celery expands %h to the hostname, which Docker also puts in $HOSTNAME.
    assert _option(_command(SERVICES["worker"]), "--hostname") == "imagine@%h"
    assert "healthcheck" not in SERVICES["worker"]
    assert '--destination "imagine@$HOSTNAME"' in (_inherited("worker", "HEALTHCHECK") or "")
    assert '"--hostname", "imagine@%h"' in (_inherited("worker", "CMD") or "")


def test_the_builder_has_the_compilers_and_no_secret_is_baked_in() -> None:
    assert any(kw == "RUN" and BUILD_TOOLS.search(a) for kw, a in STAGES["builder"].instructions)
    secret = re.compile(r"(FAL_KEY|PASSWORD|SECRET|TOKEN)", re.IGNORECASE)
    for stage in STAGES.values():
        for keyword, args in stage.instructions:
            if keyword in {"ENV", "ARG"}:
                assert not secret.search(args), f"{stage.name}: {keyword} {args}"


def test_migrations_sit_beside_the_packages_in_the_image() -> None:
    # models/migrate.py finds alembic.ini and migrations/ at Path(models.__file__).parent.parent:
    # the image keeps the source at /app and installs it editable from there.
    builder = STAGES["builder"].instructions
    assert ("COPY", ". /app") in builder
    assert any(kw == "RUN" and "pip install --no-deps -e /app" in a for kw, a in builder)
    runtime_copies = [a for kw, a in STAGES["runtime"].instructions if kw == "COPY"]
    assert "--from=builder /app /app" in runtime_copies
    assert "--from=builder /opt/venv /opt/venv" in runtime_copies
    from models import migrate

    assert migrate.ROOT == ROOT


def test_the_build_context_holds_what_the_image_needs_and_nothing_secret() -> None:
    for needed in ["pyproject.toml", "README.md", "alembic.ini", "migrations/env.py"]:
        assert _in_context(needed), needed
    for package in _top_level_packages():
        assert _in_context(f"{package}/__init__.py"), f"package {package} left out of the image"
    for secret in [".env", "var/imagine.sqlite3", ".git/config", ".venv/bin/python"]:
        assert not _in_context(secret), secret
    assert not _in_context("models/__pycache__/db.cpython-311.pyc")


def test_an_editable_install_of_the_context_finds_its_migrations(tmp_path: Path) -> None:
    """What the builder stage does, at another path: copy the context, `pip install -e` it, and
    the installed `models` package resolves to the copy, with alembic.ini and migrations beside."""
    app = tmp_path / "app"
    for relative in _context_files():
        (app / relative).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / relative, app / relative)
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=False)
    python = env_dir / "bin" / "python"
    # Tests never reach the network: the build backend (setuptools) comes from this environment
    # through a plain path entry (no .pth files of ours are processed there), without isolation.
    site = next(env_dir.glob("lib/python*/site-packages"))
    setuptools_dir = Path(importlib.util.find_spec("setuptools").origin).parent.parent  # type: ignore[union-attr, arg-type]
    (site / "build_backend.pth").write_text(f"{setuptools_dir}\n")
    clean = {
        "PATH": os.environ.get("PATH", ""),
        "HOME": os.environ.get("HOME", str(tmp_path)),
        "PIP_DISABLE_PIP_VERSION_CHECK": "1",
        "PIP_NO_INDEX": "1",
    }
    install = subprocess.run(
        [sys.executable, "-m", "pip", "--python", python, "install", "-q", "--no-deps",
         "--no-build-isolation", "-e", app],
        env=clean,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=240,
    )  # fmt: skip
    assert install.returncode == 0, install.stderr
    # find_spec locates without importing (the fresh venv has no dependencies), from another
    # directory so the working directory cannot supply the package.
    found = subprocess.run(
        [python, "-c", "import importlib.util as u; print(u.find_spec('models').origin)"],
        check=True,
        env=clean,
        cwd="/",
        capture_output=True,
        text=True,
        timeout=60,
    ).stdout.strip()
    root = Path(found).parent.parent
    assert root == app
    assert (root / "alembic.ini").is_file()
    assert (root / "migrations" / "env.py").is_file()


# ---------------------------------------------------------------------------------------------
# .env.example
# ---------------------------------------------------------------------------------------------


def _env_example_names() -> set[str]:
    return set(re.findall(r"^#?\s*([A-Z][A-Z0-9_]*)=", ENV_EXAMPLE.read_text(), re.MULTILINE))


def test_env_example_lists_every_setting() -> None:
    assert SETTINGS - _env_example_names() == set()


def test_env_example_documents_every_variable_the_compose_file_reads() -> None:
    used = set(INTERPOLATION.findall(COMPOSE_FILE.read_text()))
    assert used - _env_example_names() == set()
    # The pass-through entries too: they are read from .env.
    passed = {k for s in SERVICES.values() for k, v in _environment(s).items() if v is None}
    assert passed - _env_example_names() == set()


def test_env_example_sets_no_secret_and_leaves_the_required_one_empty() -> None:
    active = dict(
        line.split("=", 1)
        for line in ENV_EXAMPLE.read_text().splitlines()
        if line and not line.startswith("#")
    )
    assert active == {"POSTGRES_PASSWORD": ""}


# ---------------------------------------------------------------------------------------------
# docker compose config, where a Compose v2 client exists (it needs no engine)
# ---------------------------------------------------------------------------------------------


def _compose_client() -> list[str] | None:
    candidates = [["docker", "compose"], ["docker-compose"]]
    for candidate in candidates:
        if shutil.which(candidate[0]) is None:
            continue
        try:
            version = subprocess.run(
                [*candidate, "version", "--short"], capture_output=True, text=True, timeout=30
            )
        except OSError:
            continue
        # Compose v1 (docker-compose 1.x) does not know this file's syntax.
        if version.returncode == 0 and re.match(r"v?2\.", version.stdout.strip()):
            return candidate
    return None


COMPOSE_CLIENT = _compose_client()
needs_compose = pytest.mark.skipif(
    COMPOSE_CLIENT is None,
    reason="no Docker Compose v2 client (`docker compose` plugin or docker-compose 2.x) on PATH",
)


def _compose(
    tmp_path: Path, *args: str, with_password: bool = True
) -> subprocess.CompletedProcess[str]:
    assert COMPOSE_CLIENT is not None
    empty_env_file = tmp_path / "empty.env"
    empty_env_file.write_text("")
    env = {"PATH": os.environ.get("PATH", ""), "HOME": str(tmp_path)}
    if with_password:
        env["POSTGRES_PASSWORD"] = "x"
    # --env-file: a developer's own .env must not change what is checked.
    command = [*COMPOSE_CLIENT, "-f", str(COMPOSE_FILE), "--env-file", str(empty_env_file), *args]
    return subprocess.run(command, capture_output=True, text=True, env=env, timeout=60)


@needs_compose
@pytest.mark.parametrize("profiles", [[], ["sim"], ["ops"], ["sim", "ops"]])
def test_docker_compose_config_accepts_the_file(tmp_path: Path, profiles: list[str]) -> None:
    flags = [flag for profile in profiles for flag in ("--profile", profile)]
    result = _compose(tmp_path, *flags, "config", "-q")
    assert result.returncode == 0, result.stderr


@needs_compose
def test_docker_compose_config_resolves_the_profiles(tmp_path: Path) -> None:
    plain = _compose(tmp_path, "config", "--services")
    assert plain.returncode == 0, plain.stderr
    assert set(plain.stdout.split()) == CORE_SERVICES
    sim = _compose(tmp_path, "--profile", "sim", "config", "--format", "json")
    assert sim.returncode == 0, sim.stderr
    services = yaml.safe_load(sim.stdout)["services"]
    assert "falsim" in services
    assert services["worker"]["environment"]["FAL_QUEUE_URL"] == "http://falsim:8765"
    assert services["worker"]["environment"]["DATABASE_URL"].endswith(":x@postgres:5432/imagine")


@needs_compose
def test_docker_compose_config_refuses_a_missing_password(tmp_path: Path) -> None:
    result = _compose(tmp_path, "config", "-q", with_password=False)
    assert result.returncode != 0
    assert "POSTGRES_PASSWORD" in result.stderr
