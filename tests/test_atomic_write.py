"""safeio.atomic_write and the writers built on it: the old file or the new one, never half of one, no temporaries.

Failures are real where they can be: an exception or KeyboardInterrupt inside the block, a real SIGINT delivered
to a real process in the middle of a write, and a real file-size limit (RLIMIT_FSIZE, the kernel's EFBIG) hit by
the package's writers in a child process; a head model's save (torch) dies half-way by a stand-in torch.save, to
keep torch out of that child.
"""
import errno
import json
import os
import signal
import subprocess
import sys
import textwrap

import pytest

from ssl_cluster_bench.safeio import atomic_write, atomic_write_text

OLD = b"old content, complete\n"


def _files(folder):
    return sorted(p.name for p in folder.iterdir())


@pytest.mark.parametrize("error", [RuntimeError("boom"), KeyboardInterrupt()])
def test_an_exception_mid_write_keeps_the_old_file_and_no_temporary(tmp_path, error):
    target = tmp_path / "table.csv"
    target.write_bytes(OLD)
    with pytest.raises(type(error)):
        with atomic_write(target) as f:
            f.write(b"new content, half of it")
            f.flush()  # the half is on disk, in the temporary file
            assert len(_files(tmp_path)) == 2
            raise error
    assert target.read_bytes() == OLD
    assert _files(tmp_path) == ["table.csv"]


def test_a_finished_write_replaces_the_file_with_the_permissions_open_gives(tmp_path):
    target = tmp_path / "new.md"
    atomic_write_text(target, "ünïcode table\n")
    plain = tmp_path / "plain"
    plain.write_text("x")
    assert target.read_text(encoding="utf-8") == "ünïcode table\n"
    # not mkstemp's 0600: a results folder shared with a group stays readable by it
    assert target.stat().st_mode & 0o777 == plain.stat().st_mode & 0o777
    assert _files(tmp_path) == ["new.md", "plain"]
    with pytest.raises(ValueError, match="mode must be 'wb' or 'w'"):
        with atomic_write(target, "ab"):
            pass


_INTERRUPTED = textwrap.dedent("""
    import signal, sys, time
    from ssl_cluster_bench.safeio import atomic_write
    # Python's Ctrl-C handler, also where the test runner was started with SIGINT ignored (nohup, `&` in a
    # script), which a child inherits
    signal.signal(signal.SIGINT, signal.default_int_handler)
    with atomic_write(sys.argv[1]) as f:
        f.write(b"new content, first half")
        f.flush()
        print("writing", flush=True)
        time.sleep(60)  # SIGINT arrives here, in the middle of the write
        f.write(b"second half")
""")


def test_sigint_in_the_middle_of_a_write_leaves_the_old_file(tmp_path):
    target = tmp_path / "lb.csv"
    target.write_bytes(OLD)
    proc = subprocess.Popen([sys.executable, "-c", _INTERRUPTED, str(target)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline() == "writing\n"
        assert len(_files(tmp_path)) == 2  # the temporary exists while it writes
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode != 0 and "KeyboardInterrupt" in err
    assert target.read_bytes() == OLD
    assert _files(tmp_path) == ["lb.csv"]


def test_a_head_model_save_that_dies_half_way_keeps_the_previous_model(tmp_path, monkeypatch):
    import numpy as np
    import torch

    from ssl_cluster_bench.heads import MMDC

    x = np.random.default_rng(0).normal(size=(40, 4)).astype(np.float32)
    model = MMDC(2, n_heads=1, epochs=1, verbose=False, device="cpu").fit(x)
    path = model.save(tmp_path / "model.pt")
    before = path.read_bytes()
    real_save = torch.save

    def dies_half_way(obj, f, *args, **kwargs):
        (f.write if hasattr(f, "write") else open(f, "wb").write)(b"PK\x03\x04 half a zip")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(torch, "save", dies_half_way)
    with pytest.raises(OSError, match="No space left"):
        model.save(path)
    assert path.read_bytes() == before and _files(tmp_path) == ["model.pt"]
    monkeypatch.setattr(torch, "save", real_save)
    np.testing.assert_array_equal(MMDC.load(path, device="cpu").predict(x), model.predict(x))


# The package's writers, in a child process whose files may not grow past LIMIT bytes: the kernel stops
# each write with EFBIG part-way, as a full disk would. Each target holds OLD beforehand.
LIMIT = 64
_WRITERS = textwrap.dedent("""
    import json, resource, signal, sys
    from pathlib import Path
    import numpy as np

    root = Path(sys.argv[1])
    limit = int(sys.argv[2])

    def predictions(path):
        from ssl_cluster_bench.predictions import save_predictions
        return lambda: save_predictions(root / "preds" / "lb.csv", "0123456789abcdef", np.zeros(500, np.int64))

    def suite_state(path):
        from ssl_cluster_bench.suite import SuiteState
        return lambda: SuiteState(suite="s", description="x" * 500).save(root / "state" / "lb.csv")

    def protocol_yaml(path):
        from ssl_cluster_bench.protocol import Protocol
        return lambda: Protocol().to_yaml(path)

    def markdown_table(path):
        from ssl_cluster_bench.api import write_markdown
        return lambda: write_markdown(root / "md" / "lb.csv", path)

    targets = {"predictions": root / "preds" / "predictions" / "0123456789abcdef.npy",
               "suite_state": root / "state" / "suite.json", "protocol_yaml": root / "protocol.yaml",
               "markdown_table": root / "md" / "lb.md"}
    writers = {name: fn(targets[name]) for name, fn in [("predictions", predictions), ("suite_state", suite_state),
                                                        ("protocol_yaml", protocol_yaml),
                                                        ("markdown_table", markdown_table)]}
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG instead of killing us
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))
    out = {}
    for name, write in writers.items():
        try:
            write()
            out[name] = "written"
        except OSError as e:
            out[name] = f"OSError {e.errno}: {e}"
    print(json.dumps(out))
""")


def test_every_writer_keeps_the_old_file_when_a_write_fails_part_way(tmp_path):
    from ssl_cluster_bench.leaderboard import append_rows

    row = {"backbone": "a", "dataset": "d", "method": "kmeans", "n_clusters": 3, "seed": 0, "acc": 0.5}
    append_rows(tmp_path / "md" / "lb.csv", [dict(row, seed=s) for s in range(5)])  # what the table is made of
    targets = {"predictions": "preds/predictions/0123456789abcdef.npy",
               "suite_state": "state/suite.json", "protocol_yaml": "protocol.yaml", "markdown_table": "md/lb.md"}
    for rel in targets.values():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(OLD)
    before = {name: _files((tmp_path / rel).parent) for name, rel in targets.items()}
    done = subprocess.run([sys.executable, "-c", _WRITERS, str(tmp_path), str(LIMIT)], capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads(done.stdout.strip().splitlines()[-1])
    for name, rel in targets.items():
        assert results[name].startswith(f"OSError {errno.EFBIG}"), (name, results[name])
        assert (tmp_path / rel).read_bytes() == OLD, name
        assert _files((tmp_path / rel).parent) == before[name], name
    assert "markdown table" in results["markdown_table"]  # the caller's own one-line message
