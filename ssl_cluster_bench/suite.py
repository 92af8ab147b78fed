"""Benchmark suites: a YAML file of dataset entries and protocols, run over backbones or a new checkpoint.

Entry points:
    load_suite(name_or_path) -> Suite          a shipped suite (``standard``, ``local``) or a YAML file
    run_suite(suite, backbones=None, data_roots=None, ...) -> SuiteState
    list_suites() -> list[str]

A suite file::

    name: local
    description: ...
    backbones: [pixels, random-resnet18]          # used when neither backbones nor a checkpoint is given
    protocol: {methods: [kmeans], overcluster: [1.0, 1.5], seeds: 5}   # a Protocol record (protocol.py)
    datasets:
      - id: digits                               # the entry's name in the report
        dataset: digits                          # a registered dataset (`sscb datasets`)
        split: all
      - id: imagenet50
        dataset: imagenet
        split: val
        root: imagenet                           # the data-root name (default: the dataset name)
        subset: {root: imagenet-subsets, file: imagenet_50.txt}
        protocol: {methods: [kmeans, scan], overcluster: [1.0]}    # changes to the suite's protocol
      - id: objectnet
        kind: objectnet                          # runner: direct (default) or objectnet
        roots: {imagenet: imagenet, objectnet: objectnet}
    sweep:                                       # run with sweep=True (`sscb suite --sweep`)
      datasets: [digits]
      protocol: {methods: [kmeans]}
      pca_dim: [8, 16, 32, 64]                   # at k = #classes
      overcluster: [0.5, 1.0, 2.0]               # at the sweep protocol's PCA dim

Data roots are given once, by name (``data_roots={"imagenet": "~/data/imagenet"}``; the CLI's
``--data-root imagenet=PATH`` or a YAML file of such names). An entry whose dataset is unknown, whose root is
not given or not present, or whose subset file is missing is recorded as "not run" with the reason; the other
entries still run. Every (backbone, entry, protocol) whose rows are already in the leaderboard under the same
protocol hash, with their assignments stored (:func:`~ssl_cluster_bench.predictions.done_runs`, the rule of
``sscb run``), is skipped, so an interrupted suite resumes where it stopped; rows are appended as each finishes.
After every entry the suite state (``suite.json``) and the report (:mod:`ssl_cluster_bench.report`) are
rewritten next to the leaderboard.
"""
from __future__ import annotations

import json
import math
import logging
import sys
import time
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path
from typing import Callable, Mapping, Sequence

import pandas as pd
import yaml

from .errors import option, spell
from .leaderboard import rows_of  # which rows a protocol made (also importable from here, as before)
from .safeio import atomic_write_text
from .specs import BackboneSpec, ExtractSettings, backbone_spec, extract_settings, split_options

# resolve_roots, probe_direct, existing_rows, backbone_identity, missing_runs: the steps of one run, public for
# ssl_cluster_bench.launch, which plans the same runs as jobs
__all__ = ["Suite", "SuiteEntry", "SuiteEntryStatus", "SuiteState", "backbone_identity", "existing_rows",
           "list_suites", "load_suite", "missing_runs", "parse_data_roots", "probe_direct", "resolve_roots",
           "run_suite"]

log = logging.getLogger(__name__)

REPORT_EVERY_S = 300  # refresh the report during a long suite at most this often
_SUITE_KEYS = {"name", "description", "backbones", "protocol", "datasets", "sweep"}
_ENTRY_KEYS = {"id", "dataset", "split", "root", "default_root", "subset", "protocol", "kind", "roots", "note"}
_SWEEP_KEYS = {"datasets", "protocol", "pca_dim", "overcluster"}


class SuiteError(ValueError):
    """A suite file that does not follow the schema (the message names the file and the field)."""


@dataclass(frozen=True)
class SuiteEntry:
    """One dataset of a suite: what to cluster, where its data lives, and its changes to the suite protocol."""

    id: str
    dataset: str
    split: str | None = None
    kind: str = "direct"
    roots: Mapping[str, str] = field(default_factory=dict)  # role -> data-root name
    default_roots: Mapping[str, str] = field(default_factory=dict)  # data-root name -> path tried when not given
    subset: Mapping[str, str] | None = None  # {"root": data-root name of a folder, "file": file in it}
    protocol: Mapping = field(default_factory=dict)
    note: str = ""


@dataclass(frozen=True)
class Suite:
    name: str
    description: str
    backbones: tuple[str, ...]
    protocol: Mapping
    entries: tuple[SuiteEntry, ...]
    sweep: Mapping | None = None
    source: str = ""

    def with_protocol(self, **changes) -> "Suite":
        """The suite with ``changes`` (e.g. ``seeds=2``) applied to its protocol, its entries' and its sweep's."""
        from dataclasses import replace

        entries = tuple(replace(e, protocol={**e.protocol, **changes}) for e in self.entries)
        sweep = {**self.sweep, "protocol": {**self.sweep.get("protocol", {}), **changes}} if self.sweep else None
        return replace(self, protocol={**self.protocol, **changes}, entries=entries, sweep=sweep)

    def entry_protocol(self, entry: SuiteEntry):
        """The Protocol record of ``entry``: the suite's, with the entry's changes."""
        from .protocol import Protocol

        return Protocol.from_dict({**self.protocol, **entry.protocol})

    def sweep_protocols(self) -> dict[str, list]:
        """{"pca_dim": [Protocol per PCA dim, k = #classes], "n_clusters": [Protocol per overcluster factor]}."""
        from .protocol import Protocol

        if not self.sweep:
            return {}
        base = Protocol.from_dict({**self.protocol, **self.sweep.get("protocol", {})})
        out = {"pca_dim": [base.replace(pca_dim=int(d), overcluster=(1.0,), n_clusters=None)
                           for d in self.sweep.get("pca_dim", [])],
               "n_clusters": [base.replace(overcluster=(float(f),), n_clusters=None)
                              for f in self.sweep.get("overcluster", [])]}
        return {axis: ps for axis, ps in out.items() if ps}


# ---------------------------------------------------------------------------------------------- loading


def list_suites() -> list[str]:
    """Names of the suites shipped with the package."""
    return sorted(p.name[:-5] for p in resources.files("ssl_cluster_bench.suites").iterdir()
                  if p.name.endswith(".yaml"))


def load_suite(name_or_path) -> Suite:
    """A shipped suite by name (see :func:`list_suites`) or a suite YAML file; the schema is checked here."""
    text = str(name_or_path)
    path = Path(text).expanduser()
    if path.suffix in (".yaml", ".yml") or path.is_file():
        if not path.is_file():
            raise FileNotFoundError(f"suite file {text!r} does not exist")
        raw, source = path.read_text(), str(path)
    else:
        shipped = resources.files("ssl_cluster_bench.suites") / f"{text}.yaml"
        if not shipped.is_file():
            raise SuiteError(f"unknown suite {text!r}: pass a shipped suite ({', '.join(list_suites())}) or the "
                             "path of a suite YAML file")
        raw, source = shipped.read_text(), f"{text} (shipped)"
    try:
        data = yaml.safe_load(raw)
    except yaml.YAMLError as e:
        raise SuiteError(f"suite {source}: not valid YAML ({e})") from None
    return _parse_suite(data, source)


def _fail(source: str, where: str, problem: str):
    raise SuiteError(f"suite {source}: {where}: {problem}")


def _mapping(value, source, where) -> dict:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        _fail(source, where, f"expected a mapping, got {type(value).__name__}")
    return dict(value)


def _check_protocol(changes: Mapping, base: Mapping, source: str, where: str) -> None:
    from .protocol import Protocol

    try:
        Protocol.from_dict({**base, **changes})
    except (TypeError, ValueError, KeyError) as e:
        _fail(source, where, f"invalid protocol ({e})")


def _parse_suite(data, source: str) -> Suite:
    if not isinstance(data, Mapping):
        raise SuiteError(f"suite {source}: the file must hold a mapping with keys {sorted(_SUITE_KEYS)}")
    unknown = set(data) - _SUITE_KEYS
    if unknown:
        _fail(source, "top level", f"unknown key(s) {sorted(unknown)}; known: {sorted(_SUITE_KEYS)}")
    if not data.get("name"):
        _fail(source, "top level", "'name' is required")
    protocol = _mapping(data.get("protocol"), source, "protocol")
    _check_protocol({}, protocol, source, "protocol")
    backbones = data.get("backbones") or []
    if isinstance(backbones, str) or not all(isinstance(b, str) for b in backbones):
        _fail(source, "backbones", "expected a list of model-card ids")
    raw_entries = data.get("datasets")
    if not raw_entries or not isinstance(raw_entries, list):
        _fail(source, "datasets", "expected a non-empty list of dataset entries")
    entries, seen = [], set()
    for i, raw in enumerate(raw_entries):
        where = f"datasets[{i}]"
        raw = _mapping(raw, source, where)
        unknown = set(raw) - _ENTRY_KEYS
        if unknown:
            _fail(source, where, f"unknown key(s) {sorted(unknown)}; known: {sorted(_ENTRY_KEYS)}")
        for key in ("id", "dataset", "split", "root", "default_root", "kind", "note"):
            # YAML turns `split: 2017` or `root: off` into a number or a boolean: they must be quoted
            if raw.get(key) is not None and not isinstance(raw[key], str):
                _fail(source, f"{where}.{key}", f"expected a string (quote it in YAML), got {raw[key]!r}")
        kind = raw.get("kind", "direct")
        if kind not in RUNNERS:
            _fail(source, where, f"unknown kind {kind!r}; known: {', '.join(RUNNERS)}")
        dataset = raw.get("dataset") or ("objectnet" if kind == "objectnet" else None)
        if not dataset:
            _fail(source, where, "'dataset' is required")
        eid = str(raw.get("id") or dataset)
        if eid in seen:
            _fail(source, where, f"id {eid!r} is used twice")
        seen.add(eid)
        roots = _mapping(raw.get("roots"), source, f"{where}.roots")
        if not all(isinstance(v, str) for v in roots.values()):
            # YAML reads on/off/yes/no as booleans: a root named "on" must be quoted
            _fail(source, f"{where}.roots", f"data-root names must be strings (quote on/off/yes/no), got {roots}")
        roots = {str(k): v for k, v in roots.items()}
        if kind == "direct":
            roots = {"data": str(raw.get("root") or dataset), **roots}
        elif set(roots) != {"imagenet", "objectnet"}:
            _fail(source, where, "kind objectnet needs roots: {imagenet: NAME, objectnet: NAME}")
        default_roots = {}
        if raw.get("default_root"):
            default_roots[roots.get("data", dataset)] = str(raw["default_root"])
        subset = raw.get("subset")
        if subset is not None:
            subset = _mapping(subset, source, f"{where}.subset")
            if set(subset) != {"root", "file"}:
                _fail(source, f"{where}.subset", "expected {root: DATA-ROOT NAME, file: FILE NAME}")
        changes = _mapping(raw.get("protocol"), source, f"{where}.protocol")
        _check_protocol(changes, protocol, source, f"{where}.protocol")
        entries.append(SuiteEntry(id=eid, dataset=str(dataset), split=raw.get("split"), kind=kind, roots=roots,
                                  default_roots=default_roots, subset=subset, protocol=changes,
                                  note=str(raw.get("note", ""))))
    sweep = data.get("sweep")
    if sweep is not None:
        sweep = _mapping(sweep, source, "sweep")
        unknown = set(sweep) - _SWEEP_KEYS
        if unknown:
            _fail(source, "sweep", f"unknown key(s) {sorted(unknown)}; known: {sorted(_SWEEP_KEYS)}")
        missing = set(sweep.get("datasets", [])) - seen
        if missing:
            _fail(source, "sweep.datasets", f"{sorted(missing)} are not dataset ids of this suite")
        _check_protocol(_mapping(sweep.get("protocol"), source, "sweep.protocol"), protocol, source,
                        "sweep.protocol")
        for axis, ok, wanted in (
                ("pca_dim", lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 1,
                 "positive integers (PCA dims)"),
                ("overcluster", lambda v: isinstance(v, (int, float)) and not isinstance(v, bool)
                 and 0 < v < math.inf, "positive finite numbers (k = factor × #classes)")):
            values = sweep.get(axis, [])
            if not isinstance(values, list) or not all(ok(v) for v in values):
                _fail(source, f"sweep.{axis}", f"expected a list of {wanted}, got {values!r}")
    return Suite(name=str(data["name"]), description=str(data.get("description", "")).strip(),
                 backbones=tuple(backbones), protocol=protocol, entries=tuple(entries), sweep=sweep, source=source)


def parse_data_roots(items: Sequence[str] = (), files: Sequence = ()) -> dict[str, str]:
    """Data roots by name from ``NAME=PATH`` strings and YAML files of ``NAME: PATH`` (strings win)."""
    roots: dict[str, str] = {}
    for f in files:
        p = Path(f).expanduser()
        if not p.is_file():
            raise FileNotFoundError(f"data-roots file {str(p)!r} does not exist")
        data = yaml.safe_load(p.read_text()) or {}
        if not isinstance(data, Mapping) or not all(isinstance(v, str) for v in data.values()):
            raise ValueError(f"data-roots file {p}: expected lines 'NAME: PATH', e.g. 'imagenet: ~/data/imagenet'")
        roots.update({str(k): v for k, v in data.items()})
    for item in items:
        name, sep, path = item.partition("=")
        if not sep or not name.strip() or not path.strip():
            raise ValueError(f"data root {item!r}: expected NAME=PATH, e.g. imagenet=~/data/imagenet")
        roots[name.strip()] = path.strip()
    return roots


# ------------------------------------------------------------------------------------------------ state


@dataclass
class SuiteEntryStatus:
    """What happened to one dataset entry for one backbone."""

    entry: str
    dataset: str
    split: str
    backbone: str
    status: str  # "ran", "already in leaderboard", "not run", "failed"
    reason: str = ""
    rows: int = 0
    protocol_hash: str = ""


@dataclass
class SuiteState:
    """Everything the report needs besides the leaderboard rows: protocols, entry status, sweep grids."""

    suite: str
    description: str = ""
    protocols: dict[str, dict] = field(default_factory=dict)  # hash -> protocol dict (main protocols)
    entry_hashes: dict[str, str] = field(default_factory=dict)  # entry id -> main protocol hash
    sweep: dict | None = None
    sweeps: dict[str, dict[str, dict]] = field(default_factory=dict)  # axis -> {hash: protocol dict}
    entries: list[SuiteEntryStatus] = field(default_factory=list)

    def main_protocols(self) -> list:
        from .protocol import Protocol

        return [Protocol.from_dict(d) for d in self.protocols.values()]

    def sweep_protocols(self, axis: str) -> list:
        from .protocol import Protocol

        return [Protocol.from_dict(d) for d in self.sweeps.get(axis, {}).values()]

    def entries_using(self, h: str) -> list[str]:
        return [e for e, eh in self.entry_hashes.items() if eh == h]

    def status_table(self) -> pd.DataFrame:
        rows = [{"dataset": s.entry, "split": s.split, "backbone": s.backbone, "status": s.status,
                 "rows": s.rows, "why": s.reason} for s in self.entries]
        return pd.DataFrame(rows, columns=["dataset", "split", "backbone", "status", "rows", "why"])

    def record(self, status: SuiteEntryStatus) -> None:
        self.entries = [s for s in self.entries if (s.entry, s.backbone, s.protocol_hash)
                        != (status.entry, status.backbone, status.protocol_hash) or s.status != status.status]
        self.entries.append(status)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1, sort_keys=False, default=str)

    @classmethod
    def from_json(cls, text: str) -> "SuiteState":
        data = json.loads(text)
        data["entries"] = [SuiteEntryStatus(**e) for e in data.get("entries", [])]
        return cls(**data)

    @classmethod
    def load(cls, results_csv) -> "SuiteState | None":
        path = state_path(results_csv)
        return cls.from_json(path.read_text()) if path.is_file() else None

    def save(self, results_csv) -> Path:
        path = state_path(results_csv)
        path.parent.mkdir(parents=True, exist_ok=True)  # a suite whose every entry was not run appended no row
        atomic_write_text(path, self.to_json())
        return path


def state_path(results_csv) -> Path:
    return Path(results_csv).parent / "suite.json"


# ----------------------------------------------------------------------------------------------- running


@dataclass
class _Context:
    """What every runner needs besides the entry: resolved roots, the backbone, where results go."""

    results: Path
    cache: object
    protocol: object
    roots: dict[str, str]
    spec: BackboneSpec  # the backbone and every loading option, passed whole to each runner
    settings: ExtractSettings
    progress: bool


def resolve_roots(entry: SuiteEntry, data_roots: Mapping[str, str], interface: str) -> tuple[dict, str]:
    """(role -> existing path, "") or ({}, reason not run)."""
    from .data import dataset_info

    if entry.kind == "direct":
        try:
            needs_root = dataset_info(entry.dataset).needs_root
        except ValueError:
            return {}, f"unknown dataset {entry.dataset!r} (not registered in this version of sscb)"
    else:
        needs_root = True
    out, problems = {}, []
    names = dict(entry.roots)
    if entry.subset:
        names["subset"] = entry.subset["root"]
    for role, name in names.items():
        if role == "data" and not needs_root:
            continue
        path = data_roots.get(name) or entry.default_roots.get(name)
        if not path:
            fix = f"pass {option('suite_data_root', name)}"
            problems.append(f"needs the class list {entry.subset['file']} (one wnid per line): {fix}, a folder "
                            f"holding it" if role == "subset" else f"no data root for {name!r}: {fix}")
            continue
        p = Path(path).expanduser()
        if not p.exists():
            problems.append(f"data root {name!r} = {str(p)!r} does not exist")
            continue
        out[role] = str(p)
    if not problems and entry.subset:
        f = Path(out.pop("subset")) / entry.subset["file"]
        if not f.is_file():
            problems.append(f"needs the class list {entry.subset['file']} (one wnid per line) in "
                            f"{str(f.parent)!r}; it is not there")
        out["subset"] = str(f)
    if problems:
        return {}, spell("; ".join(problems), interface)
    return out, ""


def probe_direct(entry: SuiteEntry, roots: dict) -> tuple[str, str]:
    """(dataset name as the rows record it, split) — builds the dataset index, so layout errors show here."""
    from .data import get_dataset

    options = {"subset": roots["subset"]} if "subset" in roots else {}
    ds = get_dataset(entry.dataset, roots.get("data"), entry.split, **options)
    return ds.name, ds.split


def existing_rows(results: Path, identity: tuple[str, str | None], dataset: str, split: str,
              protocols: tuple[str, ...] = ("direct",)) -> pd.DataFrame:
    """The leaderboard rows of this backbone (and weights) on this dataset split that count as done: by the one
    resume rule of run, suite and objectnet (:func:`~ssl_cluster_bench.predictions.done_runs`), a row whose
    assignment is not stored (e.g. committed in a fresh clone) is made again, not skipped."""
    if not results.is_file():
        return pd.DataFrame()
    from .predictions import done_runs

    df = done_runs(results)
    if "protocol_hash" not in df.columns:
        return df.iloc[0:0]
    name, weights = identity
    mask = ((df["backbone"] == name) & (df["dataset"] == dataset) & (df["split"].astype(str) == str(split))
            & df["protocol"].isin(protocols))
    if weights is not None:
        mask &= df["weights"] == weights
    return df[mask]


def missing_runs(existing: pd.DataFrame, protocol) -> list:
    """The parts of ``protocol`` not yet in ``existing``: Protocols of one method each, over the k values (or
    factors) that lack the same seeds, so re-running them never duplicates a row already there."""
    by_k = "n_clusters" if protocol.n_clusters else "overcluster"
    values = list(protocol.n_clusters) if protocol.n_clusters else list(protocol.overcluster)
    out = []
    for method in protocol.methods:
        p1 = protocol.replace(methods=(method,))
        rows = existing[rows_of(existing, p1)] if not existing.empty else existing
        groups: dict[tuple, list] = {}
        for v in values:
            have = set(rows.loc[rows[by_k].astype(float).round(4) == round(float(v), 4), "seed"]) if len(rows) else set()
            lacking = tuple(s for s in protocol.seeds if s not in have)
            if lacking:
                groups.setdefault(lacking, []).append(v)
        for seeds, vs in groups.items():
            change = {"n_clusters": tuple(vs)} if protocol.n_clusters else {"overcluster": tuple(vs)}
            out.append(p1.replace(seeds=seeds, **change))
    return out


def _run_direct(entry: SuiteEntry, ctx: _Context, identity: tuple[str, str | None]) -> tuple[str, int, str]:
    """Extract what the cache lacks and cluster what the leaderboard lacks: (status, rows, note)."""
    from . import api

    dataset, split = probe_direct(entry, ctx.roots)
    existing = existing_rows(ctx.results, identity, dataset, split)
    todo = missing_runs(existing, ctx.protocol)
    done = int(rows_of(existing, ctx.protocol).sum()) if not existing.empty else 0
    if not todo:
        return "already in leaderboard", done, ""
    n = 0
    for part in todo:
        df = api.run([ctx.spec], entry.dataset, ctx.roots.get("data"), split, results=ctx.results, cache=ctx.cache,
                     subset=ctx.roots.get("subset"), protocol=part, progress=ctx.progress, settings=ctx.settings)
        n += df.attrs.get("new_rows", len(df))
    return "ran", n, f"resumed: {done} rows were already in the leaderboard" if done else ""


def _run_objectnet(entry: SuiteEntry, ctx: _Context, identity: tuple[str, str | None]) -> tuple[str, int, str]:
    """Both ObjectNet protocols (direct, transfer), unless the leaderboard has all their rows already."""
    from .objectnet import run_objectnet

    protocol = ctx.protocol.replace(methods=("kmeans",))  # the ObjectNet protocols are k-means protocols
    existing = existing_rows(ctx.results, identity, "objectnet", "test", ("objectnet-direct", "objectnet-transfer"))
    done = {p: int(rows_of(existing[existing["protocol"] == p], protocol).sum()) if len(existing) else 0
            for p in ("objectnet-direct", "objectnet-transfer")}
    expected = len(protocol.n_clusters or protocol.overcluster) * len(protocol.seeds)
    if min(done.values()) >= expected:
        return "already in leaderboard", sum(done.values()), ""
    # the whole spec: a MoCo suite extracts ObjectNet with the same encoder (and weights id) as its other entries
    df = run_objectnet(ctx.spec, ctx.roots["imagenet"], ctx.roots["objectnet"], imagenet_split=entry.split or
                       "train", results=ctx.results, cache=ctx.cache, protocol=protocol, progress=ctx.progress,
                       settings=ctx.settings)
    return "ran", df.attrs.get("new_rows", len(df)), ""


# kind -> runner(entry, context, (backbone name, weights id or None)) -> (status, rows, reason)
RUNNERS: dict[str, Callable] = {"direct": _run_direct, "objectnet": _run_objectnet}


def backbone_identity(spec: BackboneSpec) -> tuple[str, str | None]:
    """(name, weights id) the rows of ``spec`` carry; building the model also checks it loads at all."""
    from .backbones import create_backbone

    bb = create_backbone(spec, device="cpu")
    return bb.card.id, bb.weights_id


def plan_entries(suite: Suite, data_roots: Mapping[str, str], only, sweep: bool, interface: str = "api"):
    """The suite state before anything runs (its protocols and sweeps recorded) and, per entry in order, (entry,
    protocol, roots or None, reason it cannot run or ""): what a run and a launch of ``suite`` both start from."""
    state = SuiteState(suite=suite.name, description=suite.description,
                       sweep=dict(suite.sweep) if sweep and suite.sweep else None)
    plans = []
    for entry in suite.entries:
        protocol = suite.entry_protocol(entry)
        state.protocols.setdefault(protocol.hash, protocol.to_dict())
        state.entry_hashes[entry.id] = protocol.hash
        if only and entry.id not in only:
            roots, reason = None, "not selected (only: " + ", ".join(only) + ")"
        else:
            roots, reason = resolve_roots(entry, data_roots, interface)
        plans.append((entry, protocol, roots if not reason else None, reason))
    if sweep:
        for axis, ps in suite.sweep_protocols().items():
            state.sweeps[axis] = {p.hash: p.to_dict() for p in ps}
    return state, plans


def suite_specs(suite: Suite, backbones, only, spec_options: dict) -> list[BackboneSpec]:
    """The :class:`~ssl_cluster_bench.specs.BackboneSpec` of every backbone a run (or launch) of ``suite`` covers:
    ``backbones``, else the suite's, or the checkpoint of ``spec_options``; the checks a run and a launch share
    (backbones or a checkpoint, an existing checkpoint file, known ``only`` entry ids, valid options), made
    before any file is written."""
    checkpoint = spec_options.get("checkpoint")
    if checkpoint and backbones:
        raise ValueError("pass backbones or a checkpoint, not both (run the suite twice to compare them)")
    if checkpoint and "://" not in str(checkpoint) and not Path(str(checkpoint)).expanduser().is_file():
        raise FileNotFoundError(f"checkpoint {str(checkpoint)!r} does not exist")
    if only:
        unknown = set(only) - {e.id for e in suite.entries}
        if unknown:
            raise ValueError(f"unknown dataset id(s) {sorted(unknown)} in suite {suite.name}; its ids: "
                             f"{', '.join(e.id for e in suite.entries)}")
    cards = [None] if checkpoint else list(backbones or suite.backbones)
    if not cards:
        raise ValueError(f"suite {suite.name} names no backbones: pass some (or a checkpoint)")
    return [backbone_spec(card, **spec_options) for card in cards]


def run_suite(suite: Suite | str, backbones: Sequence[str | BackboneSpec] | None = None,
              data_roots: Mapping[str, str] | None = None, *, results=None, cache=None, sweep: bool = False,
              only: Sequence[str] | None = None, progress: bool = True, report: bool = True, interface: str = "api",
              settings: ExtractSettings | None = None, state_file: bool = True, **options) -> SuiteState:
    """Run every entry of ``suite`` for every backbone (or the checkpoint); returns the suite state.

    ``backbones``: model-card ids or :class:`~ssl_cluster_bench.specs.BackboneSpec` records (default: the
    suite's); ``checkpoint`` + ``arch``: a new SSL checkpoint instead. Keyword ``options`` are backbone options
    (checkpoint, arch, weights_only, momentum_encoder, checkpoint_key, key_match), applied to every backbone and
    every entry (ObjectNet's included), and extraction options (batch_size, num_workers, device, ...; or
    ``settings``, an :class:`~ssl_cluster_bench.specs.ExtractSettings`). ``data_roots``: data-root name ->
    folder. ``sweep``: also run the suite's PCA-dim and k grids on
    its sweep datasets. ``only``: entry ids to run (the others are listed as not run). Rows go to ``results``
    (default results/leaderboard.csv) as each (backbone, entry) finishes; ``report.md``/``report.html`` and
    ``suite.json`` are rewritten next to it after each entry. ``interface`` ("api"/"cli") chooses how the
    "not run" reasons spell the options to pass. ``state_file=False``: write no suite.json (a job of a launched
    suite runs one entry; :mod:`ssl_cluster_bench.launch` assembles the state from all the jobs).
    """
    from .cache import resolve_cache
    from .leaderboard import check_writable, default_results_path

    spec_options, settings_options = split_options(options)
    settings = extract_settings(settings, **settings_options)
    checkpoint, arch = spec_options.get("checkpoint"), spec_options.get("arch")
    suite = suite if isinstance(suite, Suite) else load_suite(suite)
    data_roots = dict(data_roots or {})
    results = Path(results) if results else default_results_path()
    if checkpoint and not arch:
        raise ValueError(spell(f"a checkpoint needs its architecture: pass {option('arch')}", interface))
    specs = suite_specs(suite, backbones, only, spec_options)
    check_writable(results)
    cache = resolve_cache(cache)

    state, plans = plan_entries(suite, data_roots, only, sweep, interface)
    sweep_protocols = suite.sweep_protocols() if sweep else {}

    identities: dict = {}
    ctx_args = {"results": results, "cache": cache, "settings": settings, "progress": progress}

    last_report = [time.monotonic()]

    def checkpoint_state(final: bool = False):
        if state_file:
            state.save(results)
        # the rows are on disk already; the report (seconds of plotting) is refreshed every few minutes and at
        # the end, and `sscb report` rebuilds it from the leaderboard and suite.json at any time
        if report and (final or time.monotonic() - last_report[0] > REPORT_EVERY_S):
            last_report[0] = time.monotonic()
            from .report import write_report

            try:
                write_report(results, state, cache)
            except Exception as e:  # the rows are safe; a plotting problem must not stop the suite midway
                if final:
                    raise
                log.warning("report not written: %s", e)

    sweep_ids = set((suite.sweep or {}).get("datasets", [])) if sweep else set()
    for entry, protocol, roots, reason in plans:
        for spec in specs:
            if roots is None:
                state.record(SuiteEntryStatus(entry.id, entry.dataset, entry.split or "", spec.label, "not run", reason,
                                              protocol_hash=protocol.hash))
                continue
            status = _run_one(entry, protocol, roots, spec, ctx_args, identities, spec.label, interface)
            state.record(status)
            if entry.id in sweep_ids and status.status != "failed":
                for axis, ps in sweep_protocols.items():
                    for p in ps:
                        s = _run_one(entry, p, roots, spec, ctx_args, identities, spec.label, interface)
                        if s.status == "failed":
                            s.entry = f"{entry.id} (sweep {axis})"
                            state.record(s)
            checkpoint_state()
    checkpoint_state(final=True)
    return state


def _run_one(entry, protocol, roots, spec, ctx_args: dict, identities: dict, label: str,
             interface: str) -> SuiteEntryStatus:
    """One (entry, backbone, protocol): resume check, run, status. Errors become a 'failed' status, except a
    checkpoint that cannot be loaded: that stops the suite with its error (nothing can run without it)."""
    from .errors import message_for

    split = entry.split or ""
    if ctx_args["progress"]:
        ks = f"k={list(protocol.n_clusters)}" if protocol.n_clusters else f"overcluster={list(protocol.overcluster)}"
        print(f"suite {entry.id} × {label}: {'/'.join(protocol.methods)}, {ks}, PCA {protocol.pca_dim}",
              file=sys.stderr)
    is_checkpoint = spec.checkpoint is not None
    try:
        if label not in identities:
            try:
                identities[label] = backbone_identity(spec)
            except Exception as e:
                if is_checkpoint:
                    raise
                identities[label] = e
        if isinstance(identities[label], Exception):
            raise identities[label]
        ctx = _Context(protocol=protocol, roots=roots, spec=spec, **ctx_args)
        status, n, reason = RUNNERS[entry.kind](entry, ctx, identities[label])
    except KeyboardInterrupt:
        raise
    except (ValueError, FileNotFoundError, RuntimeError, OSError) as e:
        if is_checkpoint and label not in identities:
            raise
        log.warning("%s on %s failed: %s", label, entry.id, e)
        return SuiteEntryStatus(entry.id, entry.dataset, split, label, "failed",
                                " ".join(message_for(e, interface).split()), 0, protocol.hash)
    return SuiteEntryStatus(entry.id, entry.dataset, split, label, status, reason, n, protocol.hash)
