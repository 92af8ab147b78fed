"""Fan a suite out over a scheduler through submitit: one job per (backbone, dataset entry).

Entry points:
    LaunchSettings(launcher="slurm", partition=..., gpus_per_node=..., ...)   where and how big the jobs are
    LaunchSettings.from_yaml(path, **flags)                                   the same from a small YAML file
    launch_suite(suite, backbones, data_roots, launcher=..., wait=False) -> Launch
    launch_status(results_csv) -> Launch | None                             the jobs of the last launch
    assemble(results_csv) -> SuiteState | None                               suite.json + report once all ended

``launcher="local"`` runs the jobs as subprocesses of this machine (submitit's LocalExecutor), ``"slurm"``
submits them with ``sbatch`` as one job array (submitit's SlurmExecutor). Each job runs
:func:`ssl_cluster_bench.suite.run_suite` on its one (backbone, entry): rows go to the shared leaderboard through
its lock, features to the shared cache (safe for concurrent jobs). The jobs write no suite.json and no report:
those are assembled here from the jobs' results, in the order the in-process suite uses, once every job has
ended (``wait=True``, or a later :func:`launch_status` / ``sscb suite … --status`` / ``sscb report``).

Launching again runs only what is missing: a (backbone, entry) whose rows are all in the leaderboard, or whose
job is still pending or running, is not submitted again. A job that SLURM preempts or times out gets the
pre-emption signal (USR2); submitit then requeues it (:class:`SuiteJob` is checkpointable), and the requeued
job, like a re-submitted one, finds the finished cache chunks and leaderboard rows and does only the rest.

The launch record (``jobs.json``) and submitit's folder per job (``jobs/<job id>/``: pickles, stdout, stderr)
live next to the leaderboard, in the folder the results go to; nothing is written elsewhere.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import logging
import math
import os
import pickle
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Mapping, Sequence

import yaml

__all__ = ["LAUNCHERS", "Launch", "LaunchError", "LaunchSettings", "SuiteJob", "assemble", "extract_on_all_ranks",
           "launch_status", "launch_suite", "run_as_suite"]

log = logging.getLogger(__name__)

LAUNCHERS = ("local", "slurm")
JOBS_FILE = "jobs.json"
JOBS_FOLDER = "jobs"  # submitit's folder per job: <results folder>/jobs/<job id>/
_RUNNING = {"PENDING", "RUNNING", "REQUEUED", "CONFIGURING", "COMPLETING", "RESIZING", "SUSPENDED", "UNKNOWN"}


class LaunchError(ValueError):
    """Launch settings or a launch that cannot work (the message names the setting or file and the fix)."""


@dataclass(frozen=True)
class LaunchSettings:
    """Where the jobs run and what each one asks for (one job = one backbone on one dataset entry).

    ``timeout_min`` is the wall-clock limit of one job (SLURM's ``--time``; the local launcher signals the job
    as SLURM would); a job that reaches it is requeued and resumes. ``slurm_additional_parameters`` are passed
    to sbatch as they are (``{"qos": "high", "constraint": "a100"}`` → ``#SBATCH --qos=high``, …).
    """

    launcher: str = "local"
    partition: str | None = None
    account: str | None = None
    gpus_per_node: int = 0
    cpus_per_task: int | None = None
    mem_gb: float | None = None
    timeout_min: int = 240
    slurm_additional_parameters: Mapping[str, object] = field(default_factory=dict)
    source: str = "launch settings"  # where the values came from, named in error messages

    def __post_init__(self):
        def fail(name, problem):
            raise LaunchError(f"{self.source}: {name}: {problem}")

        if self.launcher not in LAUNCHERS:
            fail("launcher", f"{self.launcher!r} is not a launcher; use one of {', '.join(LAUNCHERS)}")
        for name in ("partition", "account"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, str) or not value.strip()):
                fail(name, f"expected a non-empty string, got {value!r}")
        for name, minimum in (("gpus_per_node", 0), ("cpus_per_task", 1), ("timeout_min", 1)):
            value = getattr(self, name)
            if value is None and name == "cpus_per_task":
                continue
            if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
                fail(name, f"expected an integer >= {minimum}, got {value!r}")
        if self.mem_gb is not None and (isinstance(self.mem_gb, bool) or not isinstance(self.mem_gb, (int, float))
                                        or not 0 < self.mem_gb < math.inf):
            fail("mem_gb", f"expected a positive number of GB, got {self.mem_gb!r}")
        extra = self.slurm_additional_parameters
        if not isinstance(extra, Mapping) or not all(isinstance(k, str) for k in extra):
            fail("slurm_additional_parameters", f"expected a mapping of sbatch option names to values, got {extra!r}")
        object.__setattr__(self, "slurm_additional_parameters", dict(extra))

    @classmethod
    def from_yaml(cls, path, **overrides) -> "LaunchSettings":
        """Settings from a YAML mapping (keys: the fields above except ``source``); ``overrides`` that are not
        None (the command-line flags) win over the file."""
        p = Path(path).expanduser()
        if not p.is_file():
            raise FileNotFoundError(f"launch settings file {str(p)!r} does not exist")
        try:
            data = yaml.safe_load(p.read_text()) or {}
        except yaml.YAMLError as e:
            raise LaunchError(f"launch settings file {p}: not valid YAML ({e})") from None
        known = {f.name for f in fields(cls)} - {"source"}
        if not isinstance(data, Mapping):
            raise LaunchError(f"launch settings file {p}: expected a mapping with keys {sorted(known)}")
        unknown = set(data) - known
        if unknown:
            from .errors import did_you_mean

            first = sorted(unknown)[0]
            raise LaunchError(f"launch settings file {p}: unknown key {first!r}{did_you_mean(first, known)}; "
                              f"known: {', '.join(sorted(known))}")
        return cls(**{**data, **{k: v for k, v in overrides.items() if v is not None}}, source=f"launch settings {p}")

    def executor(self, folder: Path, job_name: str):
        """The submitit executor these settings describe, writing its folder per job under ``folder``."""
        import shutil

        submitit = _submitit()

        pattern = str(folder / "%j")
        if self.launcher == "local":
            ex = submitit.LocalExecutor(folder=pattern)
            ex.update_parameters(timeout_min=self.timeout_min, gpus_per_node=self.gpus_per_node)
            return ex
        missing = [tool for tool in ("sbatch", "srun") if shutil.which(tool) is None]
        if missing:
            raise LaunchError(f"--launcher slurm submits with SLURM's sbatch and srun, and {' and '.join(missing)} "
                              "is not on PATH: run on a login node of the cluster, or use --launcher local")
        ex = submitit.SlurmExecutor(folder=pattern)
        params = {"job_name": job_name, "time": self.timeout_min, "partition": self.partition,
                  "account": self.account, "cpus_per_task": self.cpus_per_task, "mem": _sbatch_mem(self.mem_gb),
                  "gpus_per_node": self.gpus_per_node or None,
                  "additional_parameters": self.slurm_additional_parameters or None}
        ex.update_parameters(**{k: v for k, v in params.items() if v is not None})
        return ex


def _sbatch_mem(mem_gb: float | None) -> str | None:
    """sbatch's --mem with its unit: a bare number is read as MB (submitit passes a job array's value bare)."""
    if mem_gb is None:
        return None
    return f"{int(mem_gb)}GB" if float(mem_gb).is_integer() else f"{math.ceil(mem_gb * 1024)}MB"


try:  # the jobs are checkpointable where submitit is installed (the `cluster` extra); the class exists without it
    from submitit.helpers import Checkpointable as _Checkpointable
except ImportError:  # pragma: no cover - without submitit nothing can be launched anyway
    _Checkpointable = object


class SuiteJob(_Checkpointable):
    """The function a job runs: the suite restricted to one entry and one backbone (or the checkpoint).

    Checkpointable: on SLURM's pre-emption / time-limit signal submitit requeues the same call; it redoes
    nothing that is already in the cache or the leaderboard."""

    def __call__(self, suite, entry_id: str, spec: dict, data_roots: dict, options: dict) -> list[dict]:
        """``spec``: the :class:`~ssl_cluster_bench.specs.BackboneSpec` as a dict; ``options``: run_suite's
        results, cache, sweep and interface, and ``settings``, the ExtractSettings as a dict."""
        from .cluster import DEVICE_ENV
        from .specs import BackboneSpec, ExtractSettings
        from .suite import run_suite

        spec = BackboneSpec.from_dict(spec)
        settings = ExtractSettings.from_dict(options["settings"])
        if settings.device != "auto":  # --device places the clustering stage too
            os.environ[DEVICE_ENV] = settings.device

        # the job's log says what it is: `sscb jobs` points at this file
        print(f"sscb: suite {suite.name}, {entry_id} × {spec.label}: started", flush=True)
        state = run_suite(suite, [spec], data_roots, only=[entry_id], report=False, state_file=False,
                          progress=False, **{**options, "settings": settings})
        return [asdict(s) for s in state.entries if s.entry == entry_id or s.entry.startswith(f"{entry_id} (sweep")]


def _submitit():
    try:
        import submitit
    except ImportError:
        raise RuntimeError("--launcher needs submitit, which is not installed: pip install "
                           "'ssl_cluster_bench[cluster]' (or pip install submitit)") from None
    return submitit


# ------------------------------------------------------------------------------------------------ records


@dataclass
class JobRecord:
    """One submitted job, as jobs.json keeps it."""

    entry: str
    backbone: str  # the label the suite state uses (card id, or "ckpt.pth (arch)")
    job_id: str
    folder: str  # submitit's folder pattern (…/jobs/%j)
    submitted: float
    state: str = ""  # filled in by launch_status: RUNNING, PENDING, DONE, FAILED, INTERRUPTED, UNKNOWN
    detail: str = ""
    launcher: str = ""  # "local" or "slurm": the job outlives a later launch with the other launcher

    def paths(self):
        _submitit()
        from submitit.core.utils import JobPaths

        return JobPaths(self.folder, job_id=self.job_id, task_id=0)


@dataclass
class Launch:
    """The last launch of a suite into one results folder: what the jobs are, and what a final state needs."""

    suite: str
    launcher: str
    results: str
    cache: str | None
    report: bool
    base: dict  # SuiteState (as a dict) with the protocols, sweeps and the "not run" entries
    order: list[list]  # [entry id, backbone label, dataset, split, protocol hash] in the in-process suite's order
    jobs: dict[str, JobRecord] = field(default_factory=dict)  # "entry\tbackbone" -> the job that ran it last
    skipped: dict[str, dict] = field(default_factory=dict)  # key -> status of runs found complete, never submitted

    def save(self) -> Path:
        path = Path(self.results).parent / JOBS_FILE
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(asdict(self), indent=1, default=str))
        os.replace(tmp, path)
        return path

    @classmethod
    def load(cls, results_csv) -> "Launch | None":
        path = Path(results_csv).parent / JOBS_FILE
        if not path.is_file():
            return None
        try:
            data = json.loads(path.read_text())
            data["jobs"] = {k: JobRecord(**v) for k, v in data.get("jobs", {}).items()}
            return cls(**data)
        except (ValueError, TypeError) as e:
            raise LaunchError(f"{path}: not a launch record of this version of sscb ({e}); move it away and launch "
                              "again (runs already in the leaderboard are not repeated)") from None

    def finished(self) -> bool:
        return all(j.state not in _RUNNING for j in self.jobs.values())

    def table(self):
        import pandas as pd

        rows = []
        for key, job in self.jobs.items():
            paths = job.paths()
            rows.append({"dataset": job.entry, "backbone": job.backbone, "job": job.job_id, "state": job.state,
                         "log": str(paths.stderr), "why": job.detail})
        return pd.DataFrame(rows, columns=["dataset", "backbone", "job", "state", "log", "why"])


def _key(entry: str, label: str) -> str:
    return f"{entry}\t{label}"


def _refresh(job: JobRecord, launcher: str, live=None) -> JobRecord:
    """Fill in ``job.state`` from its result file, else from the scheduler (SLURM: sacct; local: its process)."""
    launcher = job.launcher or launcher
    paths = job.paths()
    if paths.result_pickle.exists():
        try:
            with open(paths.result_pickle, "rb") as f:
                outcome, value = pickle.load(f)
        except Exception as e:  # a half-written pickle: the job is still writing it
            job.state, job.detail = "RUNNING", f"result not readable yet ({e})"
            return job
        if outcome == "success":
            job.state, job.detail = "DONE", ""
        else:
            lines = [ln for ln in str(value).strip().splitlines() if ln.strip()]
            job.state, job.detail = "FAILED", (lines[-1] if lines else "failed") + f" (log: {paths.stderr})"
        return job
    if launcher == "local":  # this process's own child while it waits, else a controller found by its pid
        state = str(live.state).upper() if live is not None else \
            "RUNNING" if _local_alive(job.job_id) else "INTERRUPTED"
    else:
        state = _squeue_state(job.job_id)
        if state == "FINISHED":  # left the queue without a result: sacct knows why, where accounting is kept
            final = _sacct_state(job)
            state = final if final not in ("UNKNOWN", "COMPLETED") else state
    state = state.split()[0] if state else "UNKNOWN"
    if state == "FINISHED" or state == "COMPLETED":  # ended, yet no result file: killed before it could write one
        state = "INTERRUPTED"
    job.state = state if state in _RUNNING else "INTERRUPTED"
    job.detail = "" if job.state in _RUNNING else (
        f"ended without a result ({state.lower()}): launch the suite again to resume it (log: {paths.stderr})")
    return job


def _squeue_state(job_id: str) -> str:
    """A job's state from squeue, for clusters without accounting (sacct answers nothing there): PENDING or
    RUNNING while it is queued, FINISHED once it has left the queue, UNKNOWN when squeue cannot be asked."""
    import subprocess

    try:
        out = subprocess.run(["squeue", "-h", "-j", job_id, "-o", "%T"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return "UNKNOWN"
    if out.returncode != 0 and "Invalid job id" not in out.stderr:
        return "UNKNOWN"
    states = out.stdout.split()
    return states[0] if states else "FINISHED"


def _sacct_state(job: JobRecord) -> str:
    """SLURM's final state of a job (TIMEOUT, OUT_OF_MEMORY, CANCELLED, …), or UNKNOWN without accounting."""
    import submitit

    quiet = logging.getLogger("submitit")
    level = quiet.level
    quiet.setLevel(logging.ERROR)  # submitit warns at every call on a cluster without accounting
    try:
        return str(submitit.SlurmJob(folder=job.folder, job_id=job.job_id).state).upper() or "UNKNOWN"
    except Exception as e:
        log.debug("sacct gave no state for job %s: %s", job.job_id, e)
        return "UNKNOWN"
    finally:
        quiet.setLevel(level)


def _local_alive(pid: str) -> bool:
    """Whether the local job's controller (submitit.local._local, pid = job id) still runs."""
    try:
        cmdline = Path(f"/proc/{int(pid)}/cmdline").read_bytes()
        status = Path(f"/proc/{int(pid)}/status").read_text()
    except (OSError, ValueError):
        return False
    return b"submitit.local._local" in cmdline and "\nState:\tZ" not in status


# ----------------------------------------------------------------------------------------------- launching


def _plan(suite, specs, data_roots, only, sweep, interface):
    """The suite state before anything runs and the (entry, protocol, roots, spec) runs, in run_suite's order."""
    from .suite import SuiteEntryStatus, plan_entries

    state, plans = plan_entries(suite, data_roots, only, sweep, interface)
    runs, order = [], []
    for entry, protocol, roots, reason in plans:
        for spec in specs:
            order.append([entry.id, spec.label, entry.dataset, entry.split or "", protocol.hash])
            if reason:
                state.entries.append(SuiteEntryStatus(entry.id, entry.dataset, entry.split or "", spec.label, "not run",
                                                      reason, protocol_hash=protocol.hash))
            else:
                runs.append((entry, protocol, roots, spec))
    return state, runs, order


def _complete(entry, protocol, roots, spec, suite, results: Path, sweep: bool):
    """The status of a run whose rows are all in the leaderboard already (by the resume rule of run_suite:
    :func:`~ssl_cluster_bench.predictions.done_runs`), else None (also when unsure)."""
    from .leaderboard import rows_of
    from .suite import SuiteEntryStatus, backbone_identity, existing_rows, missing_runs, probe_direct

    if entry.kind != "direct" or not results.is_file():
        return None  # ObjectNet runs check their own rows in the job, in seconds
    try:
        identity = backbone_identity(spec)
        dataset, split = probe_direct(entry, roots)
        existing = existing_rows(results, identity, dataset, split)
        protocols = [protocol]
        if sweep and entry.id in (suite.sweep or {}).get("datasets", []):
            protocols += [p for ps in suite.sweep_protocols().values() for p in ps]
        if any(missing_runs(existing, p) for p in protocols):
            return None
        n = int(rows_of(existing, protocol).sum())
    except Exception as e:  # the job will meet the same problem and report it as its status
        log.debug("completeness check of %s failed: %s", entry.id, e)
        return None
    return asdict(SuiteEntryStatus(entry.id, entry.dataset, entry.split or "", "", "already in leaderboard", "", n,
                                   protocol.hash))


def launch_suite(suite, backbones: Sequence | None = None, data_roots: Mapping[str, str] | None = None, *,
                 launcher: LaunchSettings | str, results=None, cache=None, sweep: bool = False,
                 only: Sequence[str] | None = None, report: bool = True, wait: bool = False, interface: str = "api",
                 settings=None, **options) -> Launch:
    """Submit one job per (backbone, entry) of ``suite`` that is not yet in the leaderboard nor running.

    Arguments as :func:`ssl_cluster_bench.suite.run_suite` (``backbones``: card ids or
    :class:`~ssl_cluster_bench.specs.BackboneSpec` records; ``settings``: an
    :class:`~ssl_cluster_bench.specs.ExtractSettings`; keyword ``options``: backbone and extraction options),
    plus ``launcher`` (a :class:`LaunchSettings`, or "local" / "slurm" with the default resources) and
    ``wait``: block until every job has ended, then write suite.json and the report (as the in-process suite
    does). Returns the launch record; its jobs' states are as of the return.
    """
    from .cache import resolve_cache
    from .leaderboard import check_writable, default_results_path
    from .specs import extract_settings, split_options
    from .suite import Suite, load_suite, suite_specs

    launcher = launcher if isinstance(launcher, LaunchSettings) else LaunchSettings(launcher=launcher,
                                                                                    source="launch_suite")
    spec_options, settings_options = split_options(options)
    settings = extract_settings(settings, **settings_options)
    suite = suite if isinstance(suite, Suite) else load_suite(suite)
    results = (Path(results) if results else default_results_path()).expanduser().resolve()
    checkpoint = spec_options.get("checkpoint")
    specs = suite_specs(suite, backbones, only, spec_options)  # bad requests refused before any file is made
    if checkpoint and "://" not in str(checkpoint):
        # the job may start in another folder
        spec_options["checkpoint"] = str(Path(str(checkpoint)).expanduser().resolve())
        specs = suite_specs(suite, backbones, only, spec_options)
    check_writable(results)
    cache_dir = str(resolve_cache(cache).root.expanduser().resolve())
    # data roots as absolute paths: a job may start in another working directory
    data_roots = {k: str(Path(v).expanduser().resolve()) for k, v in dict(data_roots or {}).items()}
    # what each job passes to run_suite: plain dicts of the records (pickled into the job's folder)
    options = {"results": str(results), "cache": cache_dir, "sweep": sweep, "interface": interface,
               "settings": settings.to_dict()}

    base, runs, order = _plan(suite, specs, data_roots, only, sweep, interface)
    previous = Launch.load(results)
    if previous is not None and previous.suite != suite.name:
        previous = None  # another suite's jobs: its record is replaced, its rows stay in the leaderboard
    launch = Launch(suite=suite.name, launcher=launcher.launcher, results=str(results), cache=cache_dir,
                    report=report, base=asdict(base), order=order,
                    jobs=dict(previous.jobs) if previous else {}, skipped={})
    for job in launch.jobs.values():
        _refresh(job, previous.launcher)

    todo = []
    for entry, protocol, roots, spec in runs:
        key = _key(entry.id, spec.label)
        earlier = launch.jobs.get(key)
        if earlier is not None and earlier.state in _RUNNING:
            log.info("%s × %s: job %s is still %s; not submitted again", entry.id, spec.label, earlier.job_id,
                     earlier.state.lower())
            continue
        done = _complete(entry, protocol, roots, spec, suite, results, sweep)
        if done is not None:
            if earlier is None or earlier.state != "DONE":
                launch.jobs.pop(key, None)
                launch.skipped[key] = {**done, "backbone": spec.label}
            continue
        todo.append((entry, spec))

    folder = results.parent / JOBS_FOLDER
    submitted = []
    if todo:
        made = [d for d in (results.parent, folder) if not d.exists()]
        before = set(folder.iterdir()) if folder.exists() else set()
        executor = launcher.executor(folder, f"sscb-{suite.name}")
        said_by_sbatch = io.BytesIO()
        try:
            with _detached_output(folder if launcher.launcher == "local" else None), \
                    _captured_stderr(said_by_sbatch if launcher.launcher == "slurm" else None), executor.batch():
                for entry, spec in todo:  # SLURM: one job array for all of them
                    submitted.append(executor.submit(SuiteJob(), suite, entry.id, spec.to_dict(), data_roots,
                                                     options))
        except Exception as e:
            if launcher.launcher != "slurm":
                raise
            # sbatch refused the array: nothing runs, so the pickles and script it was given are removed
            for path in (set(folder.iterdir()) if folder.exists() else set()) - before:
                path.unlink(missing_ok=True)
            for d in reversed(made):
                with contextlib.suppress(OSError):
                    d.rmdir()
            said = [line.strip() for line in (said_by_sbatch.getvalue().decode(errors="replace") + "\n" +
                                              str(e)).splitlines() if line.strip()]
            said = [line for line in said if "fatal" in line or "error" in line.lower()] or said
            raise LaunchError(f"sbatch refused the submission, nothing was submitted: "
                              f"{said[-1] if said else type(e).__name__}") from None
        now = time.time()
        for (entry, spec), job in zip(todo, submitted):
            launch.jobs[_key(entry.id, spec.label)] = JobRecord(entry.id, spec.label, str(job.job_id),
                                                                str(folder / "%j"), now, "PENDING", "",
                                                                launcher.launcher)
    launch.save()
    live = {str(j.job_id): j for j in submitted}
    while True:
        for job in launch.jobs.values():
            _refresh(job, launcher.launcher, live.get(job.job_id))
        if not wait or launch.finished():
            break
        time.sleep(1 if launcher.launcher == "local" else 5)
    launch.save()
    if wait:
        assemble(results, launch)
    return launch


def run_as_suite(dataset: str, data_root=None, split: str | None = None, subset=None, protocol=None):
    """``sscb run``'s dataset and protocol as a one-entry suite and its data roots: what ``sscb run --launcher``
    launches (one job per backbone). ``dataset`` is a registered name or the path of an image folder, as for
    :func:`ssl_cluster_bench.api.run`; the rows are those the same ``sscb run`` writes in one process."""
    from .data import resolve_dataset
    from .protocol import Protocol
    from .suite import Suite, SuiteEntry

    protocol = protocol if protocol is not None else Protocol()
    roots = {}
    name, data_root = resolve_dataset(str(dataset), data_root)  # get_dataset's checks, before any job or file
    if data_root is not None and not Path(str(data_root)).expanduser().exists():
        raise FileNotFoundError(f"data root {str(data_root)!r} does not exist")
    if data_root is not None:
        roots["data"] = str(data_root)
    subset_ref = None
    if subset is not None:
        subset = Path(subset).expanduser()
        roots["subset"], subset_ref = str(subset.parent), {"root": "subset", "file": subset.name}
    entry_id = Path(str(data_root)).name if name == "imagefolder" else name
    entry = SuiteEntry(id=entry_id, dataset=name, split=split, roots={"data": "data"} if data_root else {},
                       subset=subset_ref)
    suite = Suite(name=f"run-{entry_id}", description=f"sscb run on {entry_id}", backbones=(),
                  protocol=protocol.to_dict(), entries=(entry,), source="sscb run")
    return suite, roots


@contextlib.contextmanager
def _captured_stderr(sink: io.BytesIO | None):
    """sbatch's messages (written to our stderr by the child) go into ``sink`` while this is open, so that a
    refused submission is said in one line; on success they are passed on to stderr as they were."""
    if sink is None:
        yield
        return
    import sys
    import tempfile

    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as f:
        os.dup2(f.fileno(), 2)
        failed = False
        try:
            yield
        except BaseException:
            failed = True
            raise
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            f.seek(0)
            sink.write(f.read())
            if not failed and sink.getvalue():
                sys.stderr.write(sink.getvalue().decode(errors="replace"))
                sys.stderr.flush()


@contextlib.contextmanager
def _detached_output(folder: Path | None):
    """Local jobs: their controllers (started while this is open) write to ``folder/local-controllers.log``
    instead of holding this process's stdout and stderr, so that `sscb suite --launcher local | tee` or a
    caller reading our output ends when we do, not when the last job does."""
    if folder is None:
        yield
        return
    import sys

    folder.mkdir(parents=True, exist_ok=True)
    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    with open(folder / "local-controllers.log", "ab") as f:
        os.dup2(f.fileno(), 1)
        os.dup2(f.fileno(), 2)
    try:
        yield
    finally:
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for fd in saved:
            os.close(fd)


def launch_status(results_csv, report: bool = True) -> Launch | None:
    """The last launch into this results folder with every job's current state (None if there was none).
    When all its jobs have ended, suite.json and the report are (re)assembled too."""
    results_csv = Path(results_csv).expanduser().resolve()
    launch = Launch.load(results_csv)
    if launch is None:
        return None
    for job in launch.jobs.values():
        _refresh(job, launch.launcher)
    launch.save()
    if launch.finished():
        assemble(results_csv, launch, report=report)
    return launch


def assemble(results_csv, launch: Launch | None = None, report: bool = True):
    """suite.json (and the report, if the launch asked for one) from the jobs' results, in the order the
    in-process suite records them; None while some job has not ended."""
    from .suite import SuiteEntryStatus, SuiteState

    launch = launch or Launch.load(results_csv)
    if launch is None or not launch.finished():
        return None
    base = dict(launch.base)
    state = SuiteState(**{**base, "entries": []})
    not_run = {(e["entry"], e["backbone"]): e for e in base.get("entries", [])}
    for entry_id, label, dataset, split, protocol_hash in launch.order:
        key = _key(entry_id, label)
        if (entry_id, label) in not_run:
            state.entries.append(SuiteEntryStatus(**not_run[(entry_id, label)]))
        elif key in launch.jobs and launch.jobs[key].state == "DONE":
            with open(launch.jobs[key].paths().result_pickle, "rb") as f:
                _, statuses = pickle.load(f)
            for s in statuses:
                state.record(SuiteEntryStatus(**s))
        elif key in launch.jobs:
            job = launch.jobs[key]
            state.record(SuiteEntryStatus(entry_id, dataset, split, label, "failed", f"job {job.job_id}: {job.detail}",
                                          0, protocol_hash))
        elif key in launch.skipped:
            state.record(SuiteEntryStatus(**launch.skipped[key]))
    state.save(launch.results)
    if launch.report and report:
        from .report import write_report

        write_report(launch.results, state, launch.cache)
    return state



# ------------------------------------------------------------------------------------------------ torchrun


def extract_on_all_ranks(suite, backbones=None, data_roots=None, *, only=None, cache=None, settings=None,
                         progress: bool = True, **options) -> bool:
    """A suite under torchrun (WORLD_SIZE > 1): every rank extracts the features of every selected direct entry
    and backbone together (each rank takes its share of the chunks, see extraction.py); then rank 0 alone
    goes on to run the suite (the features are cached: it clusters and writes the rows once) and the other
    ranks stop. Returns True on the rank that must go on (rank 0). Arguments as
    :func:`ssl_cluster_bench.suite.run_suite` (``settings``: ExtractSettings; ``options``: backbone and
    extraction options).

    The entries are visited in the same order on every rank, so the ranks meet at the same barriers. What
    rank 0 still extracts afterwards (ObjectNet, a head's augmented views) it extracts alone."""
    import torch.distributed as dist

    from . import api
    from .extraction import distributed_ranks
    from .specs import backbone_spec, extract_settings, split_options

    rank, world, _ = distributed_ranks()
    spec_options, settings_options = split_options(options)
    settings = extract_settings(settings, **settings_options)
    cards = [None] if spec_options.get("checkpoint") else list(backbones or suite.backbones)
    specs = []
    for card in cards:
        try:
            specs.append(backbone_spec(card, **spec_options))
        except ValueError as e:  # the same on every rank; rank 0 refuses it again in run_suite, in one line
            log.warning("rank %d: %s not extracted: %s", rank, card, e)
    _, runs, _ = _plan(suite, specs, dict(data_roots or {}), only, False, "cli")
    for entry, _protocol, roots, spec in runs:
        if entry.kind != "direct":
            continue
        try:
            api.extract(spec, entry.dataset, roots.get("data"), entry.split, cache=cache, settings=settings,
                        subset=roots.get("subset"), progress=progress and rank == 0)
        except (ValueError, FileNotFoundError, RuntimeError, OSError) as e:  # the same on every rank (data, card)
            log.warning("rank %d: %s × %s not extracted: %s (rank 0 reports it in the suite)", rank, entry.id,
                        spec.label, e)
    dist.barrier()
    dist.destroy_process_group()
    os.environ["WORLD_SIZE"] = "1"  # from here on this process extracts alone
    if rank != 0:
        print(f"rank {rank}/{world}: extraction done; rank 0 clusters and writes the rows and the report")
    return rank == 0


# --------------------------------------------------------------------------------------------------- CLI


def cli_suite(args, settings, loading_options: dict) -> int:
    """``sscb suite … --launcher local|slurm [--wait]`` and ``sscb suite … --status``; ``settings`` (the
    ExtractSettings) and ``loading_options`` (BackboneSpec fields) as the CLI built them from its shared flags."""
    from .leaderboard import default_results_path
    from .suite import load_suite, parse_data_roots

    results = Path(args.results) if args.results else default_results_path()
    if args.status:
        if args.launcher or args.wait:
            raise ValueError("--status lists the jobs of the last launch: pass it alone, without --launcher/--wait")
        launch = Launch.load(results)
        if launch is None:
            raise FileNotFoundError(f"no launched suite in {results.parent} (no {JOBS_FILE}): launch one with "
                                    f"`sscb suite {args.suite} --launcher local|slurm`, or pass its --results")
        name = load_suite(args.suite).name
        if launch.suite != name:
            raise ValueError(f"the last launch into {results.parent} was suite {launch.suite!r}, not {name!r}: "
                             f"`sscb suite {launch.suite} --status`, or pass the --results of suite {name}")
        launch = launch_status(results, report=not args.no_report)
        return _print_launch(launch, results)
    if not args.launcher:
        raise ValueError("--wait waits for the jobs of a launch: add --launcher local or --launcher slurm")
    launcher = _launch_settings(args)
    suite = load_suite(args.suite)
    if args.seeds is not None:
        suite = suite.with_protocol(seeds=args.seeds)
    roots = parse_data_roots(args.data_root, args.data_roots)
    launch = launch_suite(suite, args.backbones, roots, launcher=launcher, results=results, cache=args.cache_dir,
                          sweep=args.sweep, only=args.only, report=not args.no_report, wait=args.wait,
                          interface="cli", settings=settings, **loading_options)
    return _print_launch(launch, results)


def _launch_settings(args) -> LaunchSettings:
    """The LaunchSettings of the CLI's cluster flags (over --launch-config's YAML, when given)."""
    flags = {"launcher": args.launcher, "partition": args.partition, "account": args.account,
             "gpus_per_node": args.gpus_per_node, "cpus_per_task": args.cpus_per_task, "mem_gb": args.mem_gb,
             "timeout_min": args.timeout_min}
    if args.launch_config:
        return LaunchSettings.from_yaml(args.launch_config, **flags)
    return LaunchSettings(**{k: v for k, v in flags.items() if v is not None}, source="flags")


def cli_run(args, specs, protocol, settings) -> int:
    """``sscb run … --launcher local|slurm [--wait]`` (one job per backbone) and ``sscb run --status``;
    ``specs``, ``protocol`` and ``settings`` are the records the CLI built for the in-process run."""
    from .leaderboard import default_results_path

    results = Path(args.results) if args.results else default_results_path()
    if args.status:
        if args.launcher or args.wait:
            raise ValueError("--status lists the jobs of the last launch: pass it alone, without --launcher/--wait")
        return cli_jobs(argparse.Namespace(csv=str(results)))
    if not args.launcher:
        raise ValueError("--wait waits for the jobs of a launch: add --launcher local or --launcher slurm")
    alone = [flag for flag, given in (("--joint", args.joint), ("--unlabelled", args.unlabelled),
                                      ("--assignments", args.assignments), ("--rerun", args.rerun)) if given]
    if alone:
        raise ValueError(f"{', '.join(alone)} cannot be launched as jobs: run without --launcher (a launched run "
                         "runs each backbone's missing rows, as a plain `sscb run` does by default)")
    suite, roots = run_as_suite(args.dataset, args.data_root, args.split, args.subset, protocol)
    launch = launch_suite(suite, specs, roots, launcher=_launch_settings(args), results=results,
                          cache=args.cache_dir, report=False, wait=args.wait, interface="cli", settings=settings)
    return _print_launch(launch, results)


def _print_launch(launch: Launch, results: Path) -> int:
    from .suite import SuiteState

    table = launch.table()
    if len(table):
        print(table.to_markdown(index=False))
    for key, status in launch.skipped.items():
        print(f"{status['entry']} × {status['backbone']}: all rows already in the leaderboard, not submitted")
    if not launch.finished():
        print(f"\n{sum(j.state in _RUNNING for j in launch.jobs.values())} job(s) not ended yet; check with "
              f"`sscb jobs {results}` (the report is written once all have ended)")
        return 0
    state = SuiteState.load(results)
    if state is not None:
        print("\n" + state.status_table().to_markdown(index=False))
    if launch.report:
        print(f"\nreport: {results.parent / 'report.html'} (markdown: {results.parent / 'report.md'})")
    failed = [j for j in launch.jobs.values() if j.state != "DONE"]
    bad = state.status_table().query("status == 'failed'") if state is not None else []
    if failed or len(bad):
        raise RuntimeError(f"{max(len(failed), len(bad))} job(s) failed or were interrupted (listed above with the "
                           "reason and log); launch the suite again to resume them")
    return 0


def cli_jobs(args) -> int:
    """``sscb jobs [CSV]``."""
    from .leaderboard import default_results_path

    results = Path(args.csv) if args.csv else default_results_path()
    launch = launch_status(results)
    if launch is None:
        raise FileNotFoundError(f"no launched suite in {results.parent} (no {JOBS_FILE}): launch one with "
                                "`sscb suite SUITE --launcher local|slurm` or `sscb run … --launcher local|slurm`, "
                                "or pass the leaderboard CSV it wrote to")
    return _print_launch(launch, results)
