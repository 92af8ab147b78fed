"""`sscb suite --launcher`: a suite's (backbone, entry) runs as submitit jobs — real subprocesses here, no cluster.

The local launcher must give exactly the rows and report of the in-process suite; a job killed with SIGKILL is
resumed by launching again (only it is submitted again); a job sent SLURM's pre-emption signal is requeued and
finishes; the SLURM submission (written through a fake `sbatch` on PATH that records what it was given) asks for
the resources given in the flags and the YAML.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pandas as pd
import psutil
import pytest

pytest.importorskip("submitit")

from ssl_cluster_bench.cli import main  # noqa: E402
from ssl_cluster_bench.leaderboard import CONFIG_COLUMNS, METRICS, read_leaderboard  # noqa: E402
from ssl_cluster_bench.suite import SuiteState, run_suite  # noqa: E402

# every column a row's numbers depend on (not: seconds, run_id, versions, timestamp)
SAME = CONFIG_COLUMNS + ["seed", "n_samples"] + METRICS + ["score", "silhouette", "flag", "cache_key"]
TWO = textwrap.dedent("""
    name: two
    description: two digits entries (k = 10 and k = 15), pixels, one seed
    backbones: [pixels]
    protocol: {methods: [kmeans], overcluster: [1.0], seeds: 1, pca_dim: 32}
    datasets:
      - {id: digits, dataset: digits, split: all}
      - {id: digits-k15, dataset: digits, split: all, protocol: {overcluster: [1.5]}}
""")


def _suite(tmp_path) -> Path:
    path = tmp_path / "two.yaml"
    path.write_text(TWO)
    return path


def _sscb(*args, env=None, check=True) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", **(env or {})}
    proc = subprocess.run([sys.executable, "-m", "ssl_cluster_bench", "-q", *map(str, args)], capture_output=True,
                          text=True, env=env, timeout=240)
    if check:
        assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def _rows(csv: Path) -> pd.DataFrame:
    df = read_leaderboard(csv)
    return df[SAME].sort_values(["dataset", "n_clusters", "seed"]).reset_index(drop=True)


def _statuses(csv: Path) -> list[tuple]:
    return [(s.entry, s.backbone, s.status, s.rows) for s in SuiteState.load(csv).entries]


@pytest.fixture(scope="module")
def in_process(tmp_path_factory):
    """The reference: the same suite run in this process."""
    tmp = tmp_path_factory.mktemp("in_process")
    csv = tmp / "res" / "leaderboard.csv"
    run_suite(str(_suite(tmp)), results=csv, cache=tmp / "cache", progress=False)
    return csv


def _wait_ended(pids, timeout=180):
    end = time.monotonic() + timeout
    while any(psutil.pid_exists(int(p)) and psutil.Process(int(p)).status() != psutil.STATUS_ZOMBIE for p in pids):
        assert time.monotonic() < end, "jobs did not end"
        time.sleep(0.5)


def test_local_launcher_writes_the_rows_and_report_of_the_in_process_suite(tmp_path, in_process):
    csv = tmp_path / "res" / "leaderboard.csv"
    out = _sscb("suite", _suite(tmp_path), "--launcher", "local", "--wait", "--results", csv,
                "--cache-dir", tmp_path / "cache").stdout
    pd.testing.assert_frame_equal(_rows(csv), _rows(in_process))  # same numbers, to the last bit
    assert len(read_leaderboard(csv)) == 2
    assert _statuses(csv) == _statuses(in_process) == [("digits", "pixels", "ran", 1), ("digits-k15", "pixels", "ran", 1)]
    assert (csv.parent / "report.md").read_text() == (in_process.parent / "report.md").read_text()
    # two jobs, each with its own folder of logs under the results folder
    jobs = json.loads((csv.parent / "jobs.json").read_text())["jobs"]
    assert sorted(j["entry"] for j in jobs.values()) == ["digits", "digits-k15"]
    for j in jobs.values():
        folder = csv.parent / "jobs" / j["job_id"]
        assert (folder / f"{j['job_id']}_0_result.pkl").is_file() and str(folder / f"{j['job_id']}_0_log.err") in out
    # launching again submits nothing: every row is there (in this process: no job, so no subprocess to test)
    assert main(["-q", "suite", str(_suite(tmp_path)), "--launcher", "local", "--wait", "--results", str(csv),
                 "--cache-dir", str(tmp_path / "cache")]) == 0
    assert json.loads((csv.parent / "jobs.json").read_text())["jobs"] == jobs  # the earlier jobs stand for them
    assert len(read_leaderboard(csv)) == 2


def test_a_killed_job_is_resumed_by_launching_again(tmp_path, in_process, capsys):
    csv, cache = tmp_path / "res" / "leaderboard.csv", tmp_path / "cache"
    _sscb("suite", _suite(tmp_path), "--launcher", "local", "--results", csv, "--cache-dir", cache)  # no --wait
    jobs = json.loads((csv.parent / "jobs.json").read_text())["jobs"]
    killed = next(j for j in jobs.values() if j["entry"] == "digits-k15")
    kept = next(j for j in jobs.values() if j["entry"] == "digits")
    # the job process is the child of submitit's local controller (pid = job id): SIGKILL it, as the kernel's
    # OOM killer or a node failure would; it cannot clean anything up
    controller = psutil.Process(int(killed["job_id"]))
    end = time.monotonic() + 60
    while not controller.children():
        assert time.monotonic() < end, "the job process did not start"
        time.sleep(0.05)
    os.kill(controller.children()[0].pid, signal.SIGKILL)
    _wait_ended([killed["job_id"], kept["job_id"]])

    assert main(["jobs", str(csv)]) == 1
    assert "launch the suite again" in capsys.readouterr().err
    state = {j["entry"]: j["state"] for j in json.loads((csv.parent / "jobs.json").read_text())["jobs"].values()}
    assert state == {"digits": "DONE", "digits-k15": "INTERRUPTED"}
    assert [s[2] for s in _statuses(csv)] == ["ran", "failed"] and len(read_leaderboard(csv)) == 1

    _sscb("suite", _suite(tmp_path), "--launcher", "local", "--wait", "--results", csv, "--cache-dir", cache)
    after = json.loads((csv.parent / "jobs.json").read_text())["jobs"]
    by_entry = {j["entry"]: j for j in after.values()}
    assert by_entry["digits"]["job_id"] == kept["job_id"]  # the finished job was not submitted again
    assert by_entry["digits-k15"]["job_id"] != killed["job_id"] and by_entry["digits-k15"]["state"] == "DONE"
    pd.testing.assert_frame_equal(_rows(csv), _rows(in_process))
    assert _statuses(csv) == _statuses(in_process)
    assert (csv.parent / "report.md").read_text() == (in_process.parent / "report.md").read_text()


def test_a_preempted_job_is_requeued_and_finishes(tmp_path, in_process):
    # SLURM warns a job it is about to be pre-empted or time out with USR2 (--signal=USR2@90); submitit
    # checkpoints the job (SuiteJob is checkpointable) and requeues it — the local controller reruns it at once
    csv, cache = tmp_path / "res" / "leaderboard.csv", tmp_path / "cache"
    _sscb("suite", _suite(tmp_path), "--launcher", "local", "--only", "digits", "--results", csv, "--cache-dir", cache)
    (job,) = json.loads((csv.parent / "jobs.json").read_text())["jobs"].values()
    controller = psutil.Process(int(job["job_id"]))
    logs = [csv.parent / "jobs" / job["job_id"] / f"{job['job_id']}_0_log.{ext}" for ext in ("out", "err")]

    def log_text():  # submitit logs to one or the other
        return "".join(f.read_text() for f in logs if f.is_file())

    end = time.monotonic() + 60
    while ": started" not in log_text():  # the job runs the suite (submitit's signal handlers are set)
        assert time.monotonic() < end, "the job did not start"
        time.sleep(0.05)
    first = controller.children()[0]
    os.kill(first.pid, signal.SIGUSR2)
    _wait_ended([job["job_id"]])
    text = log_text()
    assert "Caught signal SIGUSR2" in text and "Requeued job" in text and "Job completed successfully" in text
    assert main(["jobs", str(csv)]) == 0
    assert _statuses(csv) == _statuses(in_process)[:1] + [("digits-k15", "pixels", "not run", 0)]
    pd.testing.assert_frame_equal(_rows(csv), _rows(in_process).iloc[:1])


FAKE_SBATCH = """#!/bin/sh
# records the submission as sbatch would receive it, and answers as sbatch does
cp "$1" "{record}/submission.sh"
echo "$@" > "{record}/argv"
echo "Submitted batch job 4242"
"""


def test_slurm_submission_asks_for_the_requested_resources(tmp_path):
    bin_dir, record = tmp_path / "bin", tmp_path / "record"
    bin_dir.mkdir()
    record.mkdir()
    (bin_dir / "sbatch").write_text(FAKE_SBATCH.format(record=record))
    (bin_dir / "srun").write_text("#!/bin/sh\nexit 1\n")  # submitit only checks that srun exists
    (bin_dir / "squeue").write_text("#!/bin/sh\necho PENDING\n")  # the queue: every job waits
    for f in bin_dir.iterdir():
        f.chmod(0o755)
    config = tmp_path / "slurm.yaml"
    config.write_text("partition: cpu\naccount: lab\ncpus_per_task: 8\nmem_gb: 32\ntimeout_min: 90\n"
                      "slurm_additional_parameters: {qos: high, constraint: a100}\n")
    data = tmp_path / "data"
    data.mkdir()
    csv = tmp_path / "res" / "leaderboard.csv"
    # the standard suite, two of its entries (their data roots given): 5 backbones x 2 entries = one array of 10
    out = _sscb("suite", "standard", "--launcher", "slurm", "--launch-config", config, "--partition", "gpu",
                "--gpus-per-node", "2", "--only", "cifar10,stl10", "--data-root", f"cifar10={data}",
                "--data-root", f"stl10={data}", "--results", csv, env={"PATH": f"{bin_dir}:{os.environ['PATH']}"}).stdout
    script = (record / "submission.sh").read_text()
    lines = set(script.splitlines())
    folder = csv.parent / "jobs"
    for expected in ("#SBATCH --partition=gpu",  # the flag wins over the YAML's cpu
                     "#SBATCH --account=lab", "#SBATCH --gpus-per-node=2", "#SBATCH --cpus-per-task=8",
                     "#SBATCH --mem=32GB", "#SBATCH --time=90", "#SBATCH --qos=high", "#SBATCH --constraint=a100",
                     "#SBATCH --array=0-9%10", "#SBATCH --job-name=sscb-standard", "#SBATCH --signal=USR2@90",
                     f"#SBATCH --output={folder}/%A_%a/%A_%a_0_log.out"):
        assert expected in lines, f"{expected!r} not in\n{script}"
    assert f"-u -m submitit.core._submit {folder}/%j" in script
    assert (record / "argv").read_text().split()[0].endswith(".sh")
    jobs = json.loads((csv.parent / "jobs.json").read_text())["jobs"]
    assert sorted(j["job_id"] for j in jobs.values()) == sorted(f"4242_{i}" for i in range(10))
    assert {j["entry"] for j in jobs.values()} == {"cifar10", "stl10"}
    assert "4242_0" in out and "10 job(s) not ended yet" in out
    assert {j["state"] for j in jobs.values()} == {"PENDING"}
    for j in jobs.values():  # each array task's pickled call is where the job will look for it
        assert (folder / j["job_id"] / f"{j['job_id']}_submitted.pkl").is_file()


@pytest.mark.parametrize("args, expected", [
    (["--launcher", "local", "--launch-config", "{cfg}"], "unknown key 'gpu_per_node' (did you mean 'gpus_per_node'?)"),
    (["--launcher", "slurm"], "sbatch and srun"),
    (["--status"], "no launched suite in"),
    (["--wait"], "add --launcher local or --launcher slurm"),
])
def test_launch_mistakes_are_one_line(tmp_path, capsys, monkeypatch, args, expected):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("gpu_per_node: 1\n")
    monkeypatch.setenv("PATH", str(tmp_path))  # no sbatch here
    rc = main(["suite", str(_suite(tmp_path)), "--results", str(tmp_path / "r" / "lb.csv"),
               *[a.format(cfg=cfg) for a in args]])
    err = capsys.readouterr().err
    assert rc == 1 and expected in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "r" / "jobs").exists()


def test_suite_under_torchrun_extracts_on_every_rank_and_writes_each_row_once(tmp_path, in_process):
    csv = tmp_path / "res" / "leaderboard.csv"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                           "-m", "ssl_cluster_bench", "-q", "suite", str(_suite(tmp_path)), "--results", str(csv),
                           "--cache-dir", str(tmp_path / "cache")], capture_output=True, text=True, env=env,
                          timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "rank 1/2: extraction done" in done.stdout
    pd.testing.assert_frame_equal(_rows(csv), _rows(in_process))  # rank 0 alone wrote them: no duplicates
    assert _statuses(csv) == _statuses(in_process)
    assert (csv.parent / "report.md").read_text() == (in_process.parent / "report.md").read_text()


def test_run_over_several_backbones_as_jobs_writes_the_rows_of_the_in_process_run(tmp_path, capsys):
    """`sscb run --launcher local --wait`: one job per backbone, the same rows as the plain `sscb run`."""
    cache = tmp_path / "cache"
    common = ["--backbones", "pixels,random-resnet18", "--dataset", "digits", "--seeds", "2", "--overcluster", "1",
              "--pca-dim", "32", "--cache-dir", cache]
    plain, launched = tmp_path / "plain" / "lb.csv", tmp_path / "jobs" / "lb.csv"
    assert main(["-q", "run", *map(str, common), "--results", str(plain)]) == 0  # extracts; the jobs reuse the cache
    out = _sscb("run", *common, "--launcher", "local", "--wait", "--results", launched).stdout
    assert len(read_leaderboard(launched)) == 4
    pd.testing.assert_frame_equal(_rows(launched).sort_values(["backbone", "seed"]).reset_index(drop=True),
                                  _rows(plain).sort_values(["backbone", "seed"]).reset_index(drop=True))
    jobs = json.loads((launched.parent / "jobs.json").read_text())
    assert jobs["suite"] == "run-digits" and sorted(j["backbone"] for j in jobs["jobs"].values()) == \
        ["pixels", "random-resnet18"]
    assert "digits" in out and "ran" in out
    # --status lists them; launching again submits nothing
    capsys.readouterr()
    assert main(["-q", "run", "--status", "--results", str(launched)]) == 0
    assert capsys.readouterr().out.count("DONE") == 2
    assert main(["-q", "run", *map(str, common), "--launcher", "local", "--wait", "--results", str(launched)]) == 0
    assert json.loads((launched.parent / "jobs.json").read_text())["jobs"] == jobs["jobs"]
    assert len(read_leaderboard(launched)) == 4


@pytest.mark.parametrize("args, expected", [
    (["--joint", "pixels+random-resnet18", "--methods", "turtle"], "--joint cannot be launched as jobs"),
    (["--rerun"], "--rerun cannot be launched as jobs"),
])
def test_run_launch_mistakes_are_one_line(tmp_path, capsys, args, expected):
    rc = main(["run", "--launcher", "local", "--results", str(tmp_path / "r" / "lb.csv"), *args])
    err = capsys.readouterr().err
    assert rc == 1 and expected in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "r").exists()


def test_a_refused_sbatch_is_one_line_and_leaves_nothing(tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "sbatch").write_text("#!/bin/sh\necho 'sbatch: error: fetch_config: DNS SRV lookup failed' >&2\n"
                                    "echo 'sbatch: fatal: Could not establish a configuration source' >&2\nexit 1\n")
    (bin_dir / "srun").write_text("#!/bin/sh\nexit 1\n")
    for f in bin_dir.iterdir():
        f.chmod(0o755)
    csv = tmp_path / "res" / "lb.csv"
    proc = _sscb("run", "--backbones", "pixels", "--launcher", "slurm", "--results", csv, "--cache-dir",
                 tmp_path / "cache", env={"PATH": f"{bin_dir}:{os.environ['PATH']}"}, check=False)
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines() == ["sscb run: error: sbatch refused the submission, nothing was "
                                                "submitted: sbatch: fatal: Could not establish a configuration source"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bin"]
