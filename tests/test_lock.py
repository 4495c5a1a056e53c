"""One trainer per workdir (issue 22, item 1): ``tcsm_jax.training.workdir.lock``.

In-process and cheap: the lock held by another live process (a real one) refuses in
one line naming its host and pid; a lock whose holder died is taken over (and two
starts that both find it stale do not both win); one held on another host is refused
with the file to delete; only one's own lock is released; a bucket workdir goes
through ``tcsm_jax.fs``. Slow: two real ``experiments.train`` on one workdir.
"""

import errno
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time

import pytest

from tcsm_jax import errors, fs
from tcsm_jax.training import workdir as workdir_lib

from fake_bucket import fake_gcs

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_HOLD = ("import sys, time; from tcsm_jax.training import workdir as w; "
         "l = w.WorkdirLock(sys.argv[1]); l.acquire(); print('held', flush=True); "
         "time.sleep(60)")


def _holder(path):
  with open(os.path.join(path, workdir_lib.LOCK)) as f:
    return json.load(f)


def _write_lock(path, **holder):
  os.makedirs(path, exist_ok=True)
  with open(os.path.join(path, workdir_lib.LOCK), "w") as f:
    json.dump(holder, f)


def test_a_live_holder_refuses_a_second_trainer_in_one_line(tmp_path):
  wd = str(tmp_path / "run")
  other = subprocess.Popen([sys.executable, "-c", _HOLD, wd], cwd=REPO,
                           stdout=subprocess.PIPE, text=True)
  try:
    assert other.stdout.readline().strip() == "held"
    with pytest.raises(errors.WorkdirError) as e:
      with workdir_lib.lock(wd):
        pass
    msg = str(e.value)
    assert "\n" not in msg and "is in use by another trainer" in msg, msg
    assert f"pid {other.pid} on host '{socket.gethostname()}'" in msg, msg
    assert _holder(wd)["pid"] == other.pid            # untouched
  finally:
    other.kill()
    other.wait()
  # Killed (SIGKILL: the lock stays behind): the next start takes it over.
  assert _holder(wd)["pid"] == other.pid
  with workdir_lib.lock(wd):
    assert _holder(wd)["pid"] == os.getpid()
  assert not os.path.exists(os.path.join(wd, workdir_lib.LOCK))


def test_stale_foreign_and_reused_pid_locks(tmp_path, caplog):
  wd = str(tmp_path / "run")
  dead = _dead_pid()
  host = socket.gethostname()
  _write_lock(wd, host=host, pid=dead, time=time.time(), nonce="a")
  with caplog.at_level("WARNING"):
    with workdir_lib.lock(wd):
      pass
  assert any("taking over the stale lock" in r.getMessage() for r in caplog.records)
  # A live pid that started after the lock was written (the pid was reused): stale.
  _write_lock(wd, host=host, pid=os.getppid(), start="1", time=time.time(), nonce="b")
  with workdir_lib.lock(wd):
    assert _holder(wd)["pid"] == os.getpid()
  # Another host: cannot be checked, refused with the file to delete.
  _write_lock(wd, host="elsewhere", pid=1, time=time.time(), nonce="c")
  with pytest.raises(errors.WorkdirError, match=r"on host 'elsewhere'.*if that run is "
                     rf"dead, delete {re.escape(wd)}/train.lock"):
    workdir_lib.WorkdirLock(wd).acquire()
  # Release removes only one's own lock.
  lk = workdir_lib.WorkdirLock(wd)
  lk.mine = {"pid": os.getpid()}
  lk.release()
  assert _holder(wd)["host"] == "elsewhere"


def _dead_pid():
  p = subprocess.Popen(["true"])
  p.wait()
  return p.pid


def test_two_starts_that_find_a_stale_lock_do_not_both_win(tmp_path):
  """The second takeover sees the first's fresh lock (its guard serializes them)."""
  wd = str(tmp_path / "run")
  stale = {"host": socket.gethostname(), "pid": _dead_pid(), "time": 0.0, "nonce": "s"}
  _write_lock(wd, **stale)
  first, second = workdir_lib.WorkdirLock(wd), workdir_lib.WorkdirLock(wd)
  first.acquire()
  second._take_over(stale)          # pylint: disable=protected-access  (read it stale)
  assert _holder(wd) == first.mine  # the fresh lock survived
  with pytest.raises(errors.WorkdirError, match="in use by another trainer"):
    second.acquire()                # (same pid here, but a live one: refused)
  first.release()
  assert os.listdir(wd) == []


class _FullDisk:
  """A file object whose writes fail as on a full disk (the fixtures' ENOSPC)."""

  def __init__(self, f):
    self.f = f

  def write(self, _):
    raise OSError(errno.ENOSPC, "No space left on device")

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.f.close()


def test_a_start_on_a_full_disk_leaves_no_lock_that_blocks(tmp_path, monkeypatch,
                                                           caplog):
  """Issue 27 item 3: a start whose lock write fails for space is one line and leaves
  no lock; an empty or garbled lock that a failed start of an older version left is
  taken over (with a warning), not refused until deleted by hand."""
  wd = str(tmp_path / "run")
  real_fdopen = os.fdopen
  monkeypatch.setattr(os, "fdopen", lambda *a, **k: _FullDisk(real_fdopen(*a, **k)))
  with pytest.raises(errors.DiskError, match=r"no space left on device \(ENOSPC\)"):
    workdir_lib.WorkdirLock(wd).acquire()
  monkeypatch.setattr(os, "fdopen", real_fdopen)       # space freed
  assert os.listdir(wd) == []
  with workdir_lib.lock(wd):
    assert _holder(wd)["pid"] == os.getpid()
  lock = os.path.join(wd, workdir_lib.LOCK)
  for left in (b"", b'{"host": "h', b"\x00\x00\x00"):
    with open(lock, "wb") as f:
      f.write(left)
    old = time.time() - 60
    os.utime(lock, (old, old))
    caplog.clear()
    with caplog.at_level("WARNING"):
      with workdir_lib.lock(wd):
        assert _holder(wd)["pid"] == os.getpid()
    assert any("empty or unreadable" in r.getMessage() for r in caplog.records)
    assert os.listdir(wd) == []


def test_a_bucket_workdir_is_locked_through_fs():
  with fake_gcs():
    with workdir_lib.lock("gs://bucket/run"):
      assert fs.exists("gs://bucket/run/train.lock")
      with pytest.raises(errors.WorkdirError, match="in use by another trainer"):
        _write_foreign_bucket_lock()
        workdir_lib.WorkdirLock("gs://bucket/run").acquire()
    assert fs.exists("gs://bucket/run/train.lock")    # not ours any more: kept


def _write_foreign_bucket_lock():
  fs.write_text_atomic("gs://bucket/run/train.lock", json.dumps(
      {"host": "elsewhere", "pid": 7, "time": 0.0, "nonce": "x"}))


SMALL = ["--config=experiments/configs/kjv_tiny.py", "--config.data.seq_len=32",
         "--config.model.num_layers=1", "--config.model.width=32",
         "--config.model.num_heads=2", "--config.model.cond_width=32",
         "--config.train.batch_size=8", "--config.train.log_every=1",
         "--config.train.eval_every=100000", "--config.train.eval_batches=0",
         "--config.train.checkpoint_every=100000", "--summary_samples=0"]


def test_two_trainers_on_one_workdir(tmp_path):
  """A second experiments.train on a running one's workdir refuses at once in one
  line; the first goes on, and SIGTERM then stops it with its checkpoint (143)."""
  wd = str(tmp_path / "run")
  env = dict(os.environ, JAX_PLATFORMS="cpu",
             XLA_FLAGS="--xla_force_host_platform_device_count=1")
  cmd = [sys.executable, "-m", "experiments.train", f"--workdir={wd}"] + SMALL
  first = subprocess.Popen(cmd + ["--config.train.num_steps=100000"], cwd=REPO,
                           env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           text=True)
  try:
    deadline = time.time() + 240
    metrics = os.path.join(wd, "metrics.jsonl")
    while not (os.path.exists(metrics) and os.path.getsize(metrics) > 0):
      assert first.poll() is None and time.time() < deadline, first.stderr.read()[-2000:]
      time.sleep(0.2)
    t0 = time.time()
    second = subprocess.run(cmd + ["--config.train.num_steps=5"], cwd=REPO, env=env,
                            capture_output=True, text=True, timeout=240)
    took = time.time() - t0
    lines = [l for l in second.stderr.splitlines()
             if l.strip() and not re.match(r"^[IWEF]\d{4} ", l)]
    assert second.returncode == 2 and len(lines) == 1, second.stderr[-3000:]
    assert f"pid {first.pid} on host" in lines[0] and "in use by another trainer" in \
        lines[0], lines
    assert took < 60 and first.poll() is None
    first.send_signal(signal.SIGTERM)
    _, err = first.communicate(timeout=120)
  finally:
    if first.poll() is None:
      first.kill()
      first.wait()
  assert first.returncode == 143 and "preempted (SIGTERM)" in err, err[-3000:]
  assert "Traceback" not in err and not os.path.exists(os.path.join(wd, "train.lock"))
  assert [n for n in os.listdir(os.path.join(wd, "checkpoints")) if n.isdigit()]
