"""optstab.diagnose_logs and optstab-diagnose-logs: the diagnosis of a sweep from its logs.

The demos' own runs (the WideResNet and Transformer trial functions' curves,
stored in benchmarks/diagnosis_corpus.jsonl.gz) are exported in the layouts a
W&B history export, a Hugging Face JSON Lines log and a TensorBoard CSV
download give, and must be judged exactly as the sweep that produced them.
"""

from __future__ import annotations

import gzip
import json
import math
import pathlib

import numpy as np
import pytest

import optstab
from optstab.diagnosis import (LOG_COLUMNS, TrialConfig, TrialResult, learning_rate_sweep,
                               make_diagnosis, rates_above_best, read_run_log, sweep_from_logs)
from optstab.diagnosis import logs_cli

ROOT = pathlib.Path(__file__).resolve().parents[1]
CORPUS = ROOT / "benchmarks" / "diagnosis_corpus.jsonl.gz"

# Sweeps of the demos' trial functions, with every label the grid gave.
GROUPS = ("wrn:stride_1x1:w0:s0", "wrn:stride_1x1:w0:s1", "transformer:post_ln:w0:s0")


def _restore(xs):
  return np.array([np.nan if x is None else x for x in xs], dtype=np.float64)


@pytest.fixture(scope="module")
def demo_runs():
  """group -> (trivial loss, {learning rate: TrialResult}) from the demos' stored runs."""
  groups = {g: {} for g in GROUPS}
  trivial = {}
  with gzip.open(CORPUS, "rt", encoding="utf-8") as f:
    for line in f:
      d = json.loads(line)
      if d["group"] not in groups:
        continue
      loss = _restore(d["train_loss"])
      config = TrialConfig(d["learning_rate"], num_steps=loss.size - d["warmup_steps"],
                           warmup_steps=d["warmup_steps"], schedule=d["meta"]["schedule"],
                           eval_every=int(d["eval_steps"][0]))
      groups[d["group"]][d["learning_rate"]] = TrialResult(
          config, loss, np.asarray(d["eval_steps"]),
          {k: _restore(v) for k, v in d["eval_metrics"].items()}, _restore(d["grad_norms"]))
      trivial[d["group"]] = d["trivial_loss"]
  assert all(len(runs) >= 6 for runs in groups.values())
  return {g: (trivial[g], groups[g]) for g in GROUPS}


def _replayed_sweep(runs, trivial_loss, metric="loss"):
  """The sweep as learning_rate_sweep judged it: a training function that returns the stored runs."""
  def replay(config):
    stored = runs[config.learning_rate]
    return TrialResult(config, stored.train_loss, stored.eval_steps, stored.eval_metrics,
                       stored.grad_norms)

  base = next(iter(runs.values())).config
  return learning_rate_sweep(replay, sorted(runs), base_config=base, metric=metric,
                             trivial_loss=trivial_loss, progress=False)


def _cell(x, empty=""):
  return empty if not math.isfinite(x) else repr(float(x))


def _schedule(lr, n):
  return lr * 0.5 * (1 + np.cos(np.pi * np.arange(n) / n))  # cosine: its peak is lr, at step 1


def write_wandb_csv(path, result, lr, *, zero_based=False):
  """A W&B history export written by pandas: one row per step, NaN as an empty cell."""
  n = result.config.total_steps
  evals = dict(zip(result.eval_steps.tolist(), range(result.eval_steps.size)))
  rows = [",_step,_runtime,train/loss,train/grad_norm,eval/loss,lr"]
  for i in range(n):
    j = evals.get(i + 1)
    ev = "" if j is None else _cell(result.eval_metrics["loss"][j])
    rows.append(f"{i},{i + (0 if zero_based else 1)},{0.1 * i:.1f},{_cell(result.train_loss[i])},"
                f"{_cell(result.grad_norms[i])},{ev},{float(_schedule(lr, n)[i])!r}")
  path.write_text("\n".join(rows) + "\n")


def write_hf_jsonl(path, result, lr):
  """A Hugging Face style log: training lines, and evaluation lines of their own; NaN as null."""
  n = result.config.total_steps
  lines = []
  for i in range(n):
    lines.append({"epoch": i / n, "step": i + 1, "loss": _cell(result.train_loss[i], None),
                  "grad_norm": _cell(result.grad_norms[i], None),
                  "learning_rate": float(_schedule(lr, n)[i])})
    if i + 1 in result.eval_steps:
      j = int(np.flatnonzero(result.eval_steps == i + 1)[0])
      lines.append({"step": i + 1, "eval_loss": _cell(result.eval_metrics["loss"][j], None)})
  path.write_text("".join(json.dumps({k: (None if v is None else float(v)) for k, v in l.items()})
                          + "\n" for l in lines))


def write_tensorboard_csv(path, result, *, every=1):
  """TensorBoard's CSV download of one scalar tag."""
  rows = ["Wall time,Step,Value"]
  for i in range(every - 1, result.config.total_steps, every):
    rows.append(f"{1.7e9 + i:.3f},{i + 1},{float(result.train_loss[i])!r}")
  path.write_text("\n".join(rows) + "\n")


@pytest.mark.parametrize("group", GROUPS)
def test_demo_runs_exported_like_wandb_give_the_sweeps_labels_and_verdict(group, demo_runs,
                                                                         tmp_path):
  trivial, runs = demo_runs[group]
  want = _replayed_sweep(runs, trivial)
  paths = []
  for lr, result in runs.items():
    paths.append(tmp_path / f"run-{len(paths)}.csv")
    write_wandb_csv(paths[-1], result, lr)
  got = optstab.diagnose_logs(paths, tmp_path / "out", trivial_loss=trivial)
  assert got.sweep.labels == want.labels and len(set(want.labels)) >= 2
  assert got.sweep.best_learning_rate == want.best_learning_rate
  assert got.sweep.at_edge_of_feasibility == want.at_edge_of_feasibility
  assert got.sweep.unstable_learning_rate == want.unstable_learning_rate
  np.testing.assert_array_equal(got.sweep.metric_values, want.metric_values)
  assert [t.describe() for t in got.sweep.trials] == [t.describe() for t in want.trials]
  expected = make_diagnosis(want, above_best=rates_above_best(want))
  assert got.verdict == expected.verdict
  assert [r.describe() for r in got.above_best] == [r.describe() for r in expected.above_best]
  # diagnose's layout, and the report says where every run came from.
  for name in ("diagnosis.md", "diagnosis.json", "sweep.png", "above_best_loss.png",
               "grad_norms.png"):
    assert (tmp_path / "out" / name).stat().st_size > 0, name
  report = (tmp_path / "out" / "diagnosis.md").read_text()
  assert "learning rate" in report and "column 'lr' (its largest value)" in report
  assert "'train/loss'" in report and "'eval/loss'" in report and "'_step'" in report
  assert "every step" in report and "Read from logs" in report
  assert json.loads((tmp_path / "out" / "diagnosis.json").read_text())["verdict"] == got.verdict


def test_demo_runs_as_json_lines_and_tensorboard_csv_downloads(demo_runs, tmp_path):
  trivial, runs = demo_runs["wrn:stride_1x1:w0:s1"]
  jsonl = []
  for lr, result in runs.items():
    jsonl.append(tmp_path / f"hf-{len(jsonl)}.jsonl")
    write_hf_jsonl(jsonl[-1], result, lr)
  want = _replayed_sweep(runs, trivial)
  got = optstab.diagnose_logs(jsonl, trivial_loss=trivial)
  assert got.sweep.labels == want.labels and got.sweep.best_learning_rate == want.best_learning_rate
  run = read_run_log(jsonl[0])
  assert run.columns == {"step": "step", "loss": "loss", "grad_norm": "grad_norm",
                         "eval/loss": "eval_loss"}
  assert "column 'learning_rate' (its largest value)" in run.learning_rate_source

  # A TensorBoard download holds one tag: the training loss, named "Value"; the rate is in
  # the file name TensorBoard gives it; lr* is then ranked by the final training loss. The
  # logs hold no gradient norms, so the judgement is the sweep's without them (an early
  # loss jump is not corroborated by the norm).
  tb = []
  for lr, result in runs.items():
    tb.append(tmp_path / f"run-lr_{lr:g}-tag-train_loss.csv")
    write_tensorboard_csv(tb[-1], result)
  without_norms = {lr: TrialResult(r.config, r.train_loss, r.eval_steps, r.eval_metrics,
                                   np.full(r.train_loss.size, np.nan)) for lr, r in runs.items()}
  want = _replayed_sweep(without_norms, trivial, metric="train_loss")
  got = optstab.diagnose_logs(tb, trivial_loss=trivial)
  assert got.sweep.metric == "train_loss"
  assert got.sweep.labels == want.labels and got.sweep.best_learning_rate == want.best_learning_rate
  notes = " ".join(f.text for f in got.findings)
  assert "columns: step 'Step', loss 'Value', grad_norm -" in notes and "(file name)" in notes
  assert "No gradient norms were used" in notes
  assert "ranked by the final training loss" in notes
  assert not any(f.topic == "Gradient norms" for f in got.findings)
  assert all(not t.diagnosis.grad_norm_outliers for t in got.sweep.trials)


def test_sparse_logs_are_judged_on_their_points_and_the_report_says_so(demo_runs, tmp_path):
  trivial, runs = demo_runs["transformer:post_ln:w0:s0"]
  paths = []
  for lr, result in runs.items():
    paths.append(tmp_path / f"lr={lr:g}.csv")
    write_tensorboard_csv(paths[-1], result, every=4)
  got = optstab.diagnose_logs(paths, tmp_path / "out", trivial_loss=trivial)
  # The same judgement as on the curves of the logged points.
  thinned = {lr: TrialResult(TrialConfig(lr, num_steps=r.train_loss[3::4].size),
                             r.train_loss[3::4], [], {}, np.full(r.train_loss[3::4].size, np.nan))
             for lr, r in runs.items()}
  want = _replayed_sweep(thinned, trivial, metric="train_loss")
  assert got.sweep.labels == want.labels
  assert got.sweep.best_learning_rate == want.best_learning_rate
  assert got.sweep.base_config.total_steps == 50
  report = (tmp_path / "out" / "diagnosis.md").read_text()
  assert "50 points, steps 4 to 200, every 4 steps" in report
  assert "step number in this report counts them" in report
  assert "a spike between two logged points cannot be seen" in report
  # No sentence claims 50 trained steps, or a training loss at every step.
  assert "were read from logs, the training loss at 50 points, steps 4 to 200" in report
  assert "trained for" not in report and "training loss at every step" not in report


def _csv(path, header, rows):
  path.write_text(header + "\n" + "\n".join(rows) + "\n")
  return path


def _curve(n=60, scale=1.0, seed=0):
  rng = np.random.default_rng(seed)
  return 2.3 * np.exp(-np.arange(n) / (12 / scale)) + 0.2 + 0.01 * rng.standard_normal(n)


def test_nan_and_empty_values_are_divergence_and_a_short_diverged_log_is_padded(tmp_path):
  a = _csv(tmp_path / "lr=0.1.csv", "step,loss",
           [f"{i + 1},{v}" for i, v in enumerate(_curve())])
  # Diverged: an empty cell (pandas' NaN) from step 31 on; the other stopped at an "inf".
  b = _csv(tmp_path / "lr=0.3.csv", "step,loss",
           [f"{i + 1},{'' if i >= 30 else v}" for i, v in enumerate(_curve(scale=3))])
  c = _csv(tmp_path / "lr=1.csv", "step,loss",
           [f"{i + 1},{v}" for i, v in enumerate(_curve(scale=5)[:20])] + ["21,inf"])
  d = optstab.diagnose_logs([c, a, b])
  assert d.sweep.learning_rates.tolist() == [0.1, 0.3, 1.0]
  assert d.sweep.labels == ("stable", "diverged", "diverged")
  assert "at step 31" in d.sweep.trials[1].reason and "at step 21" in d.sweep.trials[2].reason
  assert d.sweep.trials[2].result.train_loss.size == 60
  notes = " ".join(f.text for f in d.findings)
  assert "Ended early at a NaN/Inf and read as diverged from there" in notes and "lr=1.csv" in notes


def test_rows_without_a_training_loss_are_not_divergence(tmp_path):
  # W&B rows of metrics logged at their own steps: the loss is logged on even steps only.
  rows = []
  for i, v in enumerate(_curve(40)):
    rows.append(f"{2 * i + 1},,0.1,")
    rows.append(f"{2 * i + 2},{v},,{'1.5' if i % 10 == 9 else ''}")
  run = read_run_log(_csv(tmp_path / "lr=0.1.csv", "_step,train/loss,lr,val_loss", rows))
  assert np.isfinite(run.result.train_loss).all() and run.steps.tolist() == list(range(2, 81, 2))
  assert run.result.eval_steps.tolist() == [10, 20, 30, 40]
  assert run.learning_rate == 0.1 and run.columns["eval/loss"] == "val_loss"


def test_gradient_norms_with_gaps_are_not_used_and_none_logged_gives_no_outliers(tmp_path):
  loss = _curve()
  rows = [f"{i + 1},{v},{'' if i % 7 == 3 else 1.0 + 0.01 * i}" for i, v in enumerate(loss)]
  run = read_run_log(_csv(tmp_path / "lr=0.1.csv", "step,loss,grad_norm", rows))
  assert not run.has_grad_norms and "missing at 9 of 60 points" in run.describe()
  # As NaN at every step, the detectors see no outlier and no gradient evidence.
  assert optstab.classify_run(loss, run.result.grad_norms).grad_norm_outliers == ()
  full = [f"{i + 1},{v},{1.0 + 0.01 * i}" for i, v in enumerate(loss)]
  run = read_run_log(_csv(tmp_path / "lr=0.2.csv", "step,loss,grad_norm", full))
  assert run.has_grad_norms and run.notes == ()


def test_a_wandb_chart_export_and_a_zero_based_step(tmp_path, demo_runs):
  loss = _curve()
  rows = [f"{i},{v},{v - 0.01},{v + 0.01}" for i, v in enumerate(loss)]
  path = _csv(tmp_path / "chart.csv", "Step,lr=0.3 - train/loss,lr=0.3 - train/loss__MIN,"
              "lr=0.3 - train/loss__MAX", rows)
  run = read_run_log(path, learning_rate=0.3)
  assert run.columns["loss"] == "lr=0.3 - train/loss" and run.learning_rate_source == "given"
  np.testing.assert_array_equal(run.result.train_loss, loss)
  # A zero-based W&B step: the report says point 1 is step 0.
  trivial, runs = demo_runs["wrn:stride_1x1:w0:s0"]
  paths = []
  for lr, result in runs.items():
    paths.append(tmp_path / f"z{len(paths)}.csv")
    write_wandb_csv(paths[-1], result, lr, zero_based=True)
  d = optstab.diagnose_logs(paths, trivial_loss=trivial)
  notes = " ".join(f.text for f in d.findings)
  assert "point 1 is step 0 and point 100 step 99" in notes
  # Each evaluation is on the row of its training point.
  assert d.sweep.trials[0].result.eval_steps.tolist() == [25, 50, 75, 100]


def test_hugging_face_trainer_state_json(tmp_path):
  history = [{"loss": float(v), "grad_norm": 1.0, "learning_rate": 0.1, "step": 10 * (i + 1)}
             for i, v in enumerate(_curve(30))]
  history.insert(0, {"eval_loss": 2.5, "step": 0})
  history.append({"eval_loss": 0.5, "step": 300})
  path = tmp_path / "trainer_state.json"
  path.write_text(json.dumps({"global_step": 300, "log_history": history}))
  run = read_run_log(path)
  assert run.learning_rate == 0.1 and run.steps.tolist() == list(range(10, 301, 10))
  assert run.result.eval_steps.tolist() == [30] and run.result.eval_metrics["loss"].tolist() == [0.5]
  assert "1 evaluation value(s) logged before its first training loss" in run.describe()
  # JSON Lines in a file named .json read the same.
  lines = tmp_path / "lr=0.1.json"
  lines.write_text("".join(json.dumps(entry) + "\n" for entry in history))
  np.testing.assert_array_equal(read_run_log(lines).result.train_loss, run.result.train_loss)


@pytest.mark.parametrize(("header", "rows", "kwargs", "match"), [
    ("step,accuracy", ["1,0.5"], {}, r"lr=0.1.csv: has no loss column: none of its columns "
                                     r"\['step', 'accuracy'\]"),
    ("step,loss", ["1,2.3"], {"loss_column": "train/loss"},
     r"has no column 'train/loss' \(loss_column\)"),
    ("step,loss", ["1,2.3", "2,abc"], {}, r"lr=0.1.csv: line 3, column 'loss': 'abc' is not a number"),
    ("step,loss", ["1,2.3", "1.5,2.0"], {}, r"line 3, column 'step': the step must be an integer"),
    ("step,loss", ["1,2.3", "3,2.0", "2,1.9"], {},
     r"line 4: training-loss step 2 comes after step 3: the steps must increase"),
    ("step,loss", ["1,2.3", "2,2.0,7"], {}, r"line 3 has 3 fields, the header has 2"),
    ("loss", ["2.3"], {}, r"has no step column"),
    ("step,loss", [",2.3"], {}, r"line 2 logs values but no step \(column 'step'\)"),
    ("step,loss,val_loss", ["1,2.3,", "2,2.0,1.0", "3,1.9,", "1,,0.9"], {},
     r"line 5: evaluation step 1 comes after step 2: the steps must increase.*'val_loss'"),
    ("step,loss,val/loss,val/err", ["1,2.3,2,", "2,2.0,1.9,0.5"],
     {"eval_columns": {"loss": "val/loss", "error_rate": "val/err"}},
     r"the evaluation columns \['val/loss', 'val/err'\] are logged at different steps"),
    ("step,a - loss,b - loss", ["1,2.3,2.2"], {},
     r"has several loss columns \['a - loss', 'b - loss'\]: one file must hold one run"),
    ("step,loss", ["1,2.3"], {"step_column": "loss"}, r"column 'loss' cannot play two roles"),
])
def test_bad_csv_logs_name_the_file_line_and_column(tmp_path, header, rows, kwargs, match):
  path = _csv(tmp_path / "lr=0.1.csv", header, rows)
  with pytest.raises(ValueError, match=match):
    read_run_log(path, **kwargs)


def test_bad_logs_and_sweeps(tmp_path):
  with pytest.raises(ValueError, match=r"line 2 cannot be parsed as JSON Lines"):
    read_run_log(_csv(tmp_path / "lr=0.1.jsonl", '{"step": 1, "loss": 2}', ['{"step": 2, "loss"']))
  with pytest.raises(ValueError, match=r"line 2 is list, not an object"):
    read_run_log(_csv(tmp_path / "lr=0.2.jsonl", '{"step": 1, "loss": 2}', ["[1, 2]"]))
  with pytest.raises(ValueError, match=r"entry 0 is int, not an object"):
    read_run_log(_csv(tmp_path / "lr=0.2.json", "[1, 2]", []))
  garbage = tmp_path / "lr=0.3.csv"
  garbage.write_bytes(b"\x89PNG\r\n\x1a\n\x00\xff\xfe")
  with pytest.raises(ValueError, match=r"lr=0.3.csv: cannot be parsed: not UTF-8 text"):
    read_run_log(garbage)
  with pytest.raises(ValueError, match=r"has no learning rate: give it"):
    read_run_log(_csv(tmp_path / "run.csv", "step,loss", ["1,2.3"]))
  with pytest.raises(ValueError, match=r"holds no training-loss value"):
    read_run_log(_csv(tmp_path / "lr=1.csv", "step,loss,val_loss", ["1,,2.0"]))
  with pytest.raises(FileNotFoundError, match="no such file"):
    read_run_log(tmp_path / "missing.csv")
  a = read_run_log(_csv(tmp_path / "a_lr=0.1.csv", "step,loss", [f"{i},2" for i in range(1, 11)]))
  b = read_run_log(_csv(tmp_path / "b_lr=0.2.csv", "step,loss", [f"{i},2" for i in range(1, 9)]))
  c = read_run_log(_csv(tmp_path / "c_lr=0.2.csv", "step,loss",
                        [f"{i},2" for i in range(2, 21, 2)]))
  with pytest.raises(ValueError, match=r"mixed step counts: .*b_lr=0.2.csv ends at step 8 with "
                                       r"a finite loss"):
    sweep_from_logs([a, b])
  with pytest.raises(ValueError, match=r"mixed step counts: .*c_lr=0.2.csv logs the training loss "
                                       r"at 10 points, steps 2 to 20, every 2 steps"):
    sweep_from_logs([a, c])
  with pytest.raises(ValueError, match=r"two runs at learning rate 0.2: .*b_lr=0.2.csv and "
                                       r".*c_lr=0.2.csv"):
    sweep_from_logs([b, c])
  with pytest.raises(ValueError, match=r"a_lr=0.1.csv: metric must be one of the metrics"):
    sweep_from_logs([a], metric="error_rate")
  with pytest.raises(ValueError, match=r"learning_rates must give one rate per file \(1\); got 2"):
    optstab.diagnose_logs([tmp_path / "a_lr=0.1.csv"], learning_rates=[0.1, 0.2])
  with pytest.raises(ValueError, match=r"learning_rates\[0\] must be"):
    optstab.diagnose_logs([tmp_path / "a_lr=0.1.csv"], learning_rates=[-1.0])
  with pytest.raises(ValueError, match=r"paths must be a non-empty sequence"):
    optstab.diagnose_logs([])
  with pytest.raises(ValueError, match=r"mode must be 'min' or 'max'"):
    optstab.diagnose_logs([tmp_path / "a_lr=0.1.csv"], mode="lowest")
  for kwargs, name in (({"trivial_loss": "2.3"}, "trivial_loss"), ({"step_column": 3}, "step_column"),
                       ({"thresholds": 0.5}, "thresholds"), ({"above_count": 0}, "above_count"),
                       ({"eval_columns": {"loss": 1}}, "eval_columns")):
    with pytest.raises(ValueError, match=name):
      optstab.diagnose_logs([tmp_path / "missing.csv"], **kwargs)  # before any file is read


def test_guessed_names_cover_the_common_loggers():
  assert {"loss", "train/loss", "train_loss"} <= set(LOG_COLUMNS["loss"])
  assert {"step", "_step", "global_step"} <= set(LOG_COLUMNS["step"])
  assert {"eval/loss", "eval_loss", "val_loss"} <= set(LOG_COLUMNS["eval_loss"])
  assert {"lr", "learning_rate"} <= set(LOG_COLUMNS["learning_rate"])
  assert "grad_norm" in LOG_COLUMNS["grad_norm"]


def test_the_command_writes_the_report_and_fails_cleanly(tmp_path, capsys):
  paths = [str(_csv(tmp_path / f"run{i}.csv", "step,loss,grad_norm",
                    [f"{s + 1},{v},1.0" for s, v in enumerate(_curve(scale=1 + i))]))
           for i in range(3)]
  assert logs_cli.main(paths + ["--learning-rates", "0.1", "0.2", "0.4", "--out",
                                str(tmp_path / "out")]) == 0
  out = capsys.readouterr().out
  assert "verdict:" in out and "lr* = " in out and "diagnosis.md" in out
  assert (tmp_path / "out" / "diagnosis.md").exists() and (tmp_path / "out" / "sweep.png").exists()
  with pytest.raises(SystemExit) as exit_info:
    logs_cli.main(paths + ["--out", str(tmp_path / "out2")])
  assert exit_info.value.code == 2
  assert "run0.csv: has no learning rate" in capsys.readouterr().err
  with pytest.raises(SystemExit):
    logs_cli.main(paths + ["--out", str(tmp_path / "o"), "--eval-column", "val_loss"])
  assert "METRIC=COLUMN" in capsys.readouterr().err


def _write_events(folder, scalars):
  """One event file in ``folder``: tag -> (steps, values), as torch's SummaryWriter writes them."""
  from tensorboard.compat.proto import event_pb2, summary_pb2  # pylint: disable=import-outside-toplevel
  from tensorboard.summary.writer.event_file_writer import EventFileWriter  # pylint: disable=import-outside-toplevel

  writer = EventFileWriter(str(folder))
  for tag, (steps, values) in scalars.items():
    for step, value in zip(steps, values):
      summary = summary_pb2.Summary(value=[summary_pb2.Summary.Value(tag=tag,
                                                                     simple_value=value)])
      writer.add_event(event_pb2.Event(step=int(step), wall_time=1.7e9 + step, summary=summary))
  writer.close()


def test_tensorboard_event_files(tmp_path):
  pytest.importorskip("tensorboard", reason="the tensorboard extra: pip install 'optstab[tensorboard]'")
  folders = []
  for lr, scale in ((0.01, 0.05), (0.1, 1.0), (1.0, 3.0)):
    folder = tmp_path / f"lr_{lr:g}"
    folder.mkdir()
    loss = _curve(scale=scale)
    if lr == 1.0:
      loss[40:] = np.nan
    _write_events(folder, {"train/loss": (np.arange(60), loss),
                           "eval/loss": (np.arange(19, 60, 20), loss[19::20] + 0.1)})
    folders.append(folder)
  d = optstab.diagnose_logs(folders)
  assert d.sweep.labels == ("failed-to-train", "stable", "diverged")
  assert d.sweep.metric == "loss" and d.sweep.best_learning_rate == 0.1
  run = read_run_log(folders[1])
  assert run.columns["loss"] == "train/loss" and run.columns["eval/loss"] == "eval/loss"
  assert run.learning_rate_source == "file name" and run.steps[0] == 0
  # One event file named directly: the rate comes from its folder's name.
  (event_file,) = folders[0].glob("events.out.tfevents.*")
  assert read_run_log(event_file).learning_rate == 0.01


def test_tensorboard_without_the_extra_says_how_to_install(tmp_path, monkeypatch):
  import builtins  # pylint: disable=import-outside-toplevel

  real_import = builtins.__import__

  def no_tensorboard(name, *args, **kwargs):
    if name.startswith("tensorboard"):
      raise ImportError("No module named 'tensorboard'")
    return real_import(name, *args, **kwargs)

  monkeypatch.setattr(builtins, "__import__", no_tensorboard)
  folder = tmp_path / "lr_0.1"
  folder.mkdir()
  (folder / "events.out.tfevents.1.host").write_bytes(b"")
  with pytest.raises(ImportError, match=r"pip install \"optstab\[tensorboard\]\""):
    read_run_log(folder)
