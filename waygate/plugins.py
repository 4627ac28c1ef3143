"""Plugin manager: discovers plugins in the ``waygate.plugins`` entry-point namespace.

Loading never stops the server: a plugin that fails to import, has bad metadata, or offers a
command name already taken is kept in the report with status ``failed`` and its reason.
A loaded set is immutable (:class:`PluginSet`); reloading builds a new one and swaps it in, so
commands already running keep the plugin set they started with.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import logging
import os
import re
import site
import sys
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from marshmallow import Schema
from stevedore import ExtensionManager

from . import compat
from .clock import isoformat
from .config import icon_src_problem
from .errors import NotFound
from .jsonschemas import SchemaProblem, invalid_annotation, params_class, validator_for
from .schemas import json_schema
from .sdk import Command, Icon, Plugin, Prompt, Resource, redact_config
from .storage import DatabaseError, Storage

NAMESPACE = "waygate.plugins"
QUALIFIER = "."  # Plugin.command: never part of a command's own name
_COMMAND_NAME_RE = re.compile(r"[A-Za-z0-9_.-]{1,128}")
_PTH_IMPORT = re.compile(r"import\s+([A-Za-z_][\w.]*)")
_RESOURCE_URI_RE = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://\S{0,2000}")
_ICON_SIZE_RE = re.compile(r"\d{1,5}x\d{1,5}|any")
MAX_ICONS = 8
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PluginInfo:
    name: str
    status: str  # "active" or "failed"
    version: str = ""
    description: str = ""
    author: str = ""
    capabilities: tuple[str, ...] = ()
    config: Mapping[str, Any] = field(default_factory=dict)  # secrets redacted: for showing
    error: str | None = None
    commands: tuple[str, ...] = ()

    def as_dict(self) -> dict[str, Any]:
        body = {
            "name": self.name,
            "version": self.version,
            "description": self.description,
            "author": self.author,
            "status": self.status,
            "capabilities": list(self.capabilities),
            "config": dict(self.config),
            "commands": list(self.commands),
        }
        if self.error:
            body["error"] = self.error
        return body


@dataclass(frozen=True)
class PluginSet:
    plugins: Mapping[str, PluginInfo]
    commands: Mapping[str, Command]
    command_plugin: Mapping[str, str]
    loaded_at: float
    prompts: Mapping[str, Prompt] = field(default_factory=dict)
    resources: Mapping[str, Resource] = field(default_factory=dict)  # by URI (or template)
    #: who offers each prompt (by name) and resource (by URI)
    offered_by: Mapping[str, str] = field(default_factory=dict)

    def visible_commands(
        self, info: PluginInfo, permits: Callable[[str, str, Mapping[str, Any]], bool]
    ) -> list[str]:
        """The commands of ``info`` that ``permits`` (a key's ``Scope.permits``) lets through."""
        return [
            name
            for name in info.commands
            if name in self.commands and permits(name, info.name, self.commands[name].annotations)
        ]

    @property
    def loaded(self) -> list[str]:
        return [p.name for p in self.plugins.values() if p.status == "active"]

    @property
    def failed(self) -> list[PluginInfo]:
        return [p for p in self.plugins.values() if p.status == "failed"]


def read_new_path_entries() -> list[str]:
    """Apply the ``.pth`` files in site-packages that this interpreter has not applied yet.

    ``pip install -e`` puts a plugin on the path through a ``.pth`` file, which ``site`` reads
    only at interpreter start (in gunicorn's master, for every worker forked later). A file
    counts as applied when its path lines are on ``sys.path`` and the modules its import lines
    import are loaded (setuptools' editable finders, for one); any other file is applied now,
    as ``site`` would have. Returns the names of the files applied.
    """
    applied = []
    for sitedir in _site_dirs():
        for pth in sorted(Path(sitedir).glob("*.pth")):
            if not _pth_applied(pth):
                compat.apply_pth_file(sitedir, pth.name)
                applied.append(pth.name)
    if applied:
        log.info("read new path entries from %s", ", ".join(applied))
    return applied


def _site_dirs() -> list[str]:
    dirs = list(site.getsitepackages())
    if site.ENABLE_USER_SITE:
        dirs.append(site.getusersitepackages())
    return [d for d in dict.fromkeys(dirs) if os.path.isdir(d)]


def _pth_applied(pth: Path) -> bool:
    try:
        lines = pth.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError):
        return True  # site would skip it too
    for line in (raw.strip() for raw in lines):
        if not line or line.startswith("#"):
            continue
        if line.startswith(("import ", "import\t")):
            module = _PTH_IMPORT.match(line)
            if module and module.group(1) not in sys.modules:
                return False
            continue
        entry = os.path.abspath(os.path.join(pth.parent, line))
        if os.path.exists(entry) and entry not in sys.path:
            return False
    return True


def refresh_entry_points(namespace: str = NAMESPACE) -> None:
    """Read ``namespace`` afresh from the installed distributions.

    stevedore remembers entry points per process and in a file cache keyed on path mtimes;
    seeding its per-process cache from importlib.metadata (after invalidating importlib's
    finders) bypasses both, so a plugin installed, removed or changed since is seen.
    """
    importlib.invalidate_caches()
    unique = {(ep.name, ep.value): ep for ep in importlib.metadata.entry_points(group=namespace)}
    compat.seed_entry_points(namespace, list(unique.values()))


def forget_plugin_modules(namespace: str = NAMESPACE) -> None:
    """Drop the plugins' modules from ``sys.modules`` so the next import reads changed code.

    Objects already handed out (commands running now) keep the old module alive until done.
    """
    roots = {ep.module for ep in compat.seeded_entry_points(namespace)}
    roots |= {ep.module for ep in importlib.metadata.entry_points(group=namespace)}
    compat.forget_modules(r for r in roots if not r.startswith("waygate."))


def discover(
    plugin_config: Mapping[str, Mapping[str, Any]] | None = None,
    namespace: str = NAMESPACE,
    fresh_modules: bool = False,
) -> PluginSet:
    """Load every plugin in ``namespace`` and validate it; failures are reported, not raised.

    ``fresh_modules`` re-imports the plugins' modules (a reload), so changed code is used.
    """
    plugin_config = plugin_config or {}
    infos: dict[str, PluginInfo] = {}
    commands: dict[str, Command] = {}
    command_plugin: dict[str, str] = {}
    failures: list[PluginInfo] = []
    read_new_path_entries()
    if fresh_modules:
        forget_plugin_modules(namespace)
    refresh_entry_points(namespace)

    def on_failure(manager, entry_point, exc):
        failures.append(
            PluginInfo(
                name=entry_point.name,
                status="failed",
                error=f"import failed: {type(exc).__name__}: {exc}",
            )
        )
        log.error("plugin %s failed to load: %s", entry_point.name, exc)

    manager = ExtensionManager(namespace, invoke_on_load=False, on_load_failure_callback=on_failure)
    prompts: dict[str, Prompt] = {}
    resources: dict[str, Resource] = {}
    offered_by: dict[str, str] = {}
    for ext in sorted(manager.extensions, key=lambda e: e.name):
        info, offer = _instantiate(
            ext.name, ext.plugin, plugin_config.get(ext.name, {}), taken=command_plugin
        )
        problem = offer and _offer_clash(offer, prompts, resources, offered_by)
        if problem:
            log.error("plugin %s failed: %s", ext.name, problem)
            info, offer = PluginInfo(name=ext.name, status="failed", error=problem), None
        infos[ext.name] = info
        if offer is None:
            continue
        for command in offer.commands:
            commands[command.name] = command
            command_plugin[command.name] = ext.name
        prompts.update((p.name, p) for p in offer.prompts)
        resources.update((r.uri, r) for r in offer.resources)
        offered_by.update((key, ext.name) for key in offer.offered_keys())
    for failure in failures:
        infos[failure.name] = failure
    return PluginSet(
        plugins=dict(sorted(infos.items())),
        commands=commands,
        command_plugin=command_plugin,
        loaded_at=time.time(),
        prompts=dict(sorted(prompts.items())),
        resources=dict(sorted(resources.items())),
        offered_by=offered_by,
    )


@dataclass(frozen=True)
class _Offer:
    """What one plugin offers."""

    commands: list[Command]
    prompts: list[Prompt]
    resources: list[Resource]

    def offered_keys(self) -> list[str]:
        return [p.name for p in self.prompts] + [r.uri for r in self.resources]


def _offer_clash(offer: _Offer, prompts: Mapping, resources: Mapping, owner: Mapping) -> str | None:
    for prompt in offer.prompts:
        if prompt.name in prompts:
            return f"prompt name {prompt.name!r} is already taken by plugin {owner[prompt.name]}"
    for resource in offer.resources:
        if resource.uri in resources:
            return f"resource {resource.uri!r} is already offered by plugin {owner[resource.uri]}"
    return None


def _instantiate(
    name: str, plugin_class: Any, config: Mapping[str, Any], taken: Mapping[str, str]
) -> tuple[PluginInfo, _Offer | None]:
    def failed(reason: str) -> tuple[PluginInfo, None]:
        log.error("plugin %s failed: %s", name, reason)
        return PluginInfo(name=name, status="failed", error=reason), None

    if not (isinstance(plugin_class, type) and issubclass(plugin_class, Plugin)):
        return failed("entry point is not a waygate.sdk.Plugin subclass")
    metadata_problem = _check_metadata(name, plugin_class)
    if metadata_problem:
        return failed(metadata_problem)
    try:
        plugin = plugin_class(config)
        offer = _Offer(list(plugin.commands()), list(plugin.prompts()), list(plugin.resources()))
    except Exception as exc:  # a plugin's own bug must not stop the server
        return failed(f"initialisation failed: {type(exc).__name__}: {exc}")
    commands = offer.commands
    problem = _check_prompts_and_resources(offer)
    if problem:
        return failed(problem)
    seen: set[str] = set()
    for command in commands:
        problem = _check_command(command)
        if problem:
            return failed(problem)
        if command.name in taken or command.name in seen:
            owner = taken.get(command.name, name)
            return failed(f"command name {command.name!r} is already taken by plugin {owner}")
        seen.add(command.name)
    try:
        _settle_declarations(offer, plugin_class)
    except SchemaProblem as exc:
        return failed(str(exc))
    info = PluginInfo(
        name=name,
        status="active",
        version=plugin_class.version,
        description=plugin_class.description,
        author=plugin_class.author,
        capabilities=tuple(plugin_class.capabilities),
        config=redact_config(plugin.config, frozenset(plugin_class.secret_config)),
        commands=tuple(c.name for c in commands),
    )
    return info, offer


def _check_metadata(entry_point_name: str, cls: type[Plugin]) -> str | None:
    declared = getattr(cls, "name", None)
    if declared != entry_point_name:
        return f"plugin name {declared!r} does not match its entry point name {entry_point_name!r}"
    for attr in ("version", "description", "author"):
        if not isinstance(getattr(cls, attr, None), str) or not getattr(cls, attr):
            return f"metadata {attr!r} must be a non-empty string"
    caps = getattr(cls, "capabilities", ())
    if not isinstance(caps, (list, tuple)) or not all(isinstance(c, str) for c in caps):
        return "metadata 'capabilities' must be a list of strings"
    if not isinstance(getattr(cls, "default_config", {}), Mapping):
        return "metadata 'default_config' must be a mapping"
    secret = getattr(cls, "secret_config", ())
    if not isinstance(secret, (list, tuple, frozenset, set)) or not all(
        isinstance(k, str) for k in secret
    ):
        return "metadata 'secret_config' must be a list of config key names"
    return None


def _check_command(command: Any) -> str | None:
    if not isinstance(command, Command):
        return "commands() must return waygate.sdk.Command objects"
    if not _COMMAND_NAME_RE.fullmatch(command.name or ""):
        return f"command name {command.name!r} must be 1-128 of [A-Za-z0-9_-]"
    if QUALIFIER in command.name:
        # ``Plugin.command`` names a command in allow-lists: a dotted bare name would let a
        # key's ``Core.*`` match another plugin's command called ``Core.anything``
        return (
            f"command name {command.name!r} must not contain {QUALIFIER!r}: it separates plugin"
            " and command in allow-lists (Plugin.command); use '_' or '-'"
        )
    declared_json = isinstance(command.params, Mapping)
    if not declared_json and not (
        isinstance(command.params, type) and issubclass(command.params, Schema)
    ):
        return (
            f"command {command.name!r}: params must be a marshmallow Schema class or a JSON"
            " Schema object (a dict)"
        )
    if not callable(command.handler):
        return f"command {command.name!r}: handler is not callable"
    return None


def _settle_declarations(offer: _Offer, plugin_class: type[Plugin]) -> None:
    """The offer as it will be served, in place: JSON Schema params made into their validating
    params class, output schemas checked, the plugin's icons given to whatever has none;
    SchemaProblem (a load error) for a schema or an icon Waygate will not serve."""
    default_icons = _checked_icons(getattr(plugin_class, "icons", ()), "plugin icons")
    for i, command in enumerate(offer.commands):
        params = command.params
        if isinstance(params, Mapping):
            params = params_class(command.name, params)
        problem = invalid_annotation(json_schema(params))  # clients would drop the tool
        if problem is not None:
            raise SchemaProblem(f"the inputSchema of {command.name}: {problem}")
        if command.output_schema is not None:
            validator_for(command.output_schema, f"the outputSchema of {command.name}")
        icons = _checked_icons(command.icons, f"icons of {command.name}") or default_icons
        offer.commands[i] = replace(command, params=params, icons=icons)
    for i, prompt in enumerate(offer.prompts):
        icons = _checked_icons(prompt.icons, f"icons of prompt {prompt.name}") or default_icons
        offer.prompts[i] = replace(prompt, icons=icons)
    for i, resource in enumerate(offer.resources):
        icons = _checked_icons(resource.icons, f"icons of {resource.uri}") or default_icons
        offer.resources[i] = replace(resource, icons=icons)


def _checked_icons(icons: Any, what: str) -> tuple[Icon, ...]:
    if not isinstance(icons, (list, tuple)) or len(icons) > MAX_ICONS:
        raise SchemaProblem(f"{what} must be a list of at most {MAX_ICONS} waygate.sdk Icons")
    for icon in icons:
        if not isinstance(icon, Icon):
            raise SchemaProblem(f"{what} must be waygate.sdk Icon objects")
        problem = icon_src_problem(icon.src)
        if problem is not None:
            raise SchemaProblem(f"{what}: src {problem}")
        if icon.theme not in (None, "light", "dark"):
            raise SchemaProblem(f"{what}: theme must be 'light' or 'dark'")
        if icon.mime_type is not None and not re.fullmatch(
            r"image/[a-z0-9.+-]{1,50}", icon.mime_type
        ):
            raise SchemaProblem(f"{what}: mime_type must be an image/ type")
        if not all(isinstance(z, str) and _ICON_SIZE_RE.fullmatch(z) for z in icon.sizes):
            raise SchemaProblem(f"{what}: sizes are like '48x48' or 'any'")
    return tuple(icons)


def _check_prompts_and_resources(offer: _Offer) -> str | None:
    names = [p.name for p in offer.prompts if isinstance(p, Prompt)]
    uris = [r.uri for r in offer.resources if isinstance(r, Resource)]
    if len(names) < len(offer.prompts) or len(uris) < len(offer.resources):
        return "prompts() and resources() must return waygate.sdk Prompt and Resource objects"
    for prompt in offer.prompts:
        if not _COMMAND_NAME_RE.fullmatch(prompt.name or ""):
            return f"prompt name {prompt.name!r} must be 1-128 of [A-Za-z0-9_.-]"
        if (prompt.template is None) == (prompt.render is None):
            return f"prompt {prompt.name!r} needs exactly one of template and render"
    for resource in offer.resources:
        if not _RESOURCE_URI_RE.fullmatch(resource.uri or "") or not callable(resource.read):
            return f"resource {resource.uri!r} needs a URI (scheme://...) and a read function"
    for kind, keys in (("prompt", names), ("resource", uris)):
        if len(set(keys)) < len(keys):
            return f"a {kind} is offered twice"
    return None


class PluginRegistry:
    """This process's plugin set, kept in step with the shared plugin generation.

    A reload bumps the generation in SQLite; every worker compares its own (a per-process
    cache of the set, checked at most every ``CHECK_INTERVAL`` seconds) and reloads when it
    is behind, so no worker serves an old set for more than a second after a reload answers.
    A reload swaps in a new immutable set: commands already running keep theirs.
    """

    CHECK_INTERVAL = 0.5

    def __init__(
        self,
        storage: Storage,
        plugin_config=None,
        loader=discover,
        on_load: Callable[[PluginSet], None] | None = None,
        config_source: Callable[[], Mapping[str, Mapping[str, Any]]] | None = None,
    ):
        self._storage = storage
        # read at every load, reloads included (the operator's WAYGATE_PLUGIN_CONFIG as it is now)
        self._config_source = config_source
        self._loader = loader
        self._on_load = on_load
        self._plugin_config = plugin_config or {}
        self._lock = threading.Lock()
        self._current: PluginSet | None = None
        self._generation = -1
        self._checked_at = 0.0
        self._stale = False  # set by refresh(): rebuild this process's set on the next read

    @property
    def current(self) -> PluginSet:
        if (
            self._current is not None
            and not self._stale
            and time.monotonic() - self._checked_at <= self.CHECK_INTERVAL
        ):
            return self._current
        # Past the interval: check under the lock, so that threads arriving while another one
        # loads the new set wait for it instead of being handed the old one.
        with self._lock:
            if self._stale and self._current is not None:  # e.g. an upstream's tools changed
                self._install(self._generation, fresh=False)
            if self._current is None or time.monotonic() - self._checked_at > self.CHECK_INTERVAL:
                try:
                    generation = self._shared_generation()
                except DatabaseError as exc:
                    if self._current is None:
                        raise
                    # the database is away: keep serving the loaded set, ask again later
                    log.warning("could not read the plugin generation: %s", exc)
                    self._checked_at = time.monotonic()
                    return self._current
                if self._current is None or generation != self._generation:
                    self._install(generation, fresh=self._current is not None)
                self._checked_at = time.monotonic()
            return self._current

    def reload(self) -> dict[str, Any]:
        """Reload here and tell every other worker to reload; a report of what loaded."""
        started = time.monotonic()
        with self._storage.write() as conn:
            generation = conn.execute(
                "UPDATE plugin_state SET generation = generation + 1, reloaded_at = ? "
                "WHERE id = 1 RETURNING generation",
                (isoformat(),),
            ).fetchone()[0]
        with self._lock:
            self._install(generation, fresh=True)
            plugins = self._current
        return {
            "status": "plugins_reloaded",
            "count": len(plugins.loaded),
            "loaded": plugins.loaded,
            "failed": [{"name": p.name, "error": p.error} for p in plugins.failed],
            "duration_ms": int((time.monotonic() - started) * 1000),
        }

    def _shared_generation(self) -> int:
        return self._storage.conn.execute(
            "SELECT generation FROM plugin_state WHERE id = 1"
        ).fetchone()[0]

    def refresh(self) -> None:
        """Rebuild this process's set on its next read, without re-importing plugins or
        telling other workers (an upstream of this process came up, went down or changed its
        tools). Safe from any thread: it takes no lock."""
        self._stale = True

    def _install(self, generation: int, fresh: bool) -> None:
        """Load and swap in a new set (the caller holds the lock)."""
        self._stale = False
        if self._config_source is not None:  # at start too: SIGHUP's new workers agree
            try:
                self._plugin_config = self._config_source()
            except ValueError as exc:  # ConfigError: keep the config the plugins have
                log.warning("plugin config not re-read, the previous one stays: %s", exc)
        self._current = self._loader(self._plugin_config, fresh_modules=fresh)
        self._generation = generation
        self._checked_at = time.monotonic()
        if self._on_load is not None:
            self._on_load(self._current)

    def get(self, name: str) -> PluginInfo:
        """One plugin of the current set (failed ones included); NotFound otherwise."""
        plugins = self.current.plugins
        if name not in plugins:
            raise NotFound(f"no plugin named {name[:100]!r}", {"available": sorted(plugins)})
        return plugins[name]
