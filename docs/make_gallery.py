"""Regenerates the figure gallery and the measured tables from the demos' ``quick`` presets.

Run from the repository root::

  python docs/make_gallery.py                  # train both quick presets, then copy
  python docs/make_gallery.py --workers 1      # every trial in one process per demo
  python docs/make_gallery.py --no-run         # only rewrite the pages from docs/gallery/
  python docs/make_gallery.py --preset standard   # the standard presets' measured tables
  python docs/make_gallery.py --preset spikes     # the Transformer's Figure 7b study

It runs ``optstab-wrn --preset quick`` and ``optstab-transformer --preset
quick`` into ``--runs`` (default ``runs/gallery``; an existing folder resumes:
finished trials are read back, not trained again), then copies into
``docs/gallery/<demo>/``:

* every PNG the run wrote, palette-quantized with Pillow (a few tens of KB each);
* ``report.md`` and the Transformer's ``diagnosis/<model>/diagnosis.md``, as
  pages of the site;
* ``results.json``, the run's every number,

and writes ``docs/gallery.md`` (the figures, with the pages in its table of
contents) and ``docs/gallery/<demo>/measured.md``, the measured tables that
``docs/guide/figures.md`` includes. Those tables are made from the committed
``results.json`` only, so ``--no-run`` rebuilds them, and the docs build trains
nothing.

``--preset standard`` runs both demos' ``standard`` presets (3 seeds, about 20
minutes each on 2 idle cores) into ``runs/standard`` and keeps only their
``results.json`` and run record, in ``docs/gallery/<demo>/standard/``, with the
``measured.md`` made from them.

``--preset spikes`` runs the Transformer demo's Figure 7b study (about 3
minutes) into ``runs/spikes/transformer`` and keeps its ``results.json``, run
record and figure in ``docs/gallery/transformer/spikes/``, with its
``measured.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import shutil
import resource
import subprocess
import sys
import time
from typing import Any, Optional

ROOT = pathlib.Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
GALLERY = DOCS / "gallery"
PAGE = DOCS / "gallery.md"
PRESET = "quick"  # the gallery's figures and reports
STANDARD = "standard"  # measured tables only, in docs/gallery/<demo>/standard/
SPIKES = "spikes"  # the Transformer's Figure 7b study: its table and figure, in .../spikes/
RUN_RECORD = "gallery_run.json"  # the command, its wall and CPU time, the load
COLORS = 128  # palette size of the committed PNGs: the figures use a few dozen colours

# demo folder -> (module, command, title)
DEMOS = {
    "wrn": ("optstab.wrn", "optstab-wrn",
            "The WideResNet stride instability (FAQ Figures 4, 5 and 9)"),
    "transformer": ("optstab.transformer", "optstab-transformer",
                    "Post-LN vs Pre-LN Transformer warmup (FAQ Figures 6, 7 and 8)"),
}
DIAGNOSED = {"post_ln": "Post-LN", "pre_ln": "Pre-LN"}
# The presets each demo has beside the gallery's own.
PRESETS = {"wrn": (PRESET, STANDARD), "transformer": (PRESET, STANDARD, SPIKES)}

# What each figure shows, by file name (a figure without an entry gets its name only).
CAPTIONS = {
    "fig4_test_error_vs_lr.png":
        "Figure 4: final test error vs base learning rate, standard and stride (1,1) models, "
        "each without and with warmup.",
    "fig5_loss_first_steps.png":
        "Figure 5: training loss at the high rate, as the evaluation cadence sees it (left) and "
        "at every step of the first steps (right).",
    "fig9_grad_norms.png":
        "Figure 9: the stride (1,1) model's unclipped gradient norm at the high rate, without "
        "clipping and with percentile clipping (the thresholds as they adapt).",
    "fig8_loss_vs_lr.png":
        "Figure 8: validation loss vs peak learning rate, Post-LN and Pre-LN, without and "
        "with warmup.",
    "fig6_warmup_sweep.png":
        "Figure 6: Post-LN's training loss at one high rate for several warmup lengths.",
    "fig7a_post_ln_sweep.png":
        "Figure 7a: Post-LN's learning-rate sweep without warmup, lr* marked.",
    "fig7b_long_checks.png":
        "Figure 7b: Post-LN trained at multiples of its lr*.",
    "fig7b_midtraining.png":
        "Figure 7b (`--preset spikes`): Post-LN trains, then fails mid-run; the same runs with "
        "the step guard (skipped steps marked) and with clipping, on 3 seeds.",
    "sweep.png": "The learning-rate sweep `optstab.diagnose` ran, lr* marked.",
    "above_best_loss.png": "Training loss at the rates above lr*.",
    "short_check_every_step.png": "The short check at every step.",
    "long_checks_loss.png": "The long checks at multiples of lr*.",
    "grad_norms.png": "Unclipped gradient norm at lr*, with the suggested clipping threshold.",
    "grad_norm_histogram.png": "Histogram of the gradient norms at lr*.",
    "fixes_loss.png": "Training loss with each fix tried.",
}


def destination(demo: str, preset: str = PRESET) -> pathlib.Path:
  """Where a preset's committed outputs live: the gallery's own folder, or its ``standard/``."""
  return GALLERY / demo if preset == PRESET else GALLERY / demo / preset


def run_demo(demo: str, out: pathlib.Path, workers: Optional[str], preset: str = PRESET) -> None:
  """Runs ``demo``'s ``preset`` into ``out``, resuming whatever trials are there.

  A folder with ``results.json`` holds a finished run and is left alone (delete it to
  train again). ``out/gallery_run.json`` records the command, its wall and CPU time
  (the demo's worker processes included) and the machine's load average; a resumed
  run adds its times to the record's and counts the invocations.
  """
  module, command, _ = DEMOS[demo]
  if (out / "results.json").exists():
    print(f"{out}: finished already (delete the folder to train again)", flush=True)
    return
  flags = ["--preset", preset, "--out", str(out)] + (["--workers", workers] if workers else [])
  print(f"$ {command} {' '.join(flags)}", flush=True)
  env = {**os.environ, "MPLBACKEND": "Agg",
         "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
  load, start = os.getloadavg(), time.perf_counter()
  cpu = resource.getrusage(resource.RUSAGE_CHILDREN)
  subprocess.run([sys.executable, "-m", module, *flags, "--no-progress"], check=True, env=env)
  end = resource.getrusage(resource.RUSAGE_CHILDREN)
  record = {
      "command": f"{command} {' '.join(flags)}",
      "wall_seconds": round(time.perf_counter() - start, 1),
      "cpu_seconds": round(end.ru_utime + end.ru_stime - cpu.ru_utime - cpu.ru_stime, 1),
      "load_average_at_start": [round(x, 2) for x in load],
      "load_average_at_end": [round(x, 2) for x in os.getloadavg()],
      "cpu_count": os.cpu_count(),
      "invocations": 1,
  }
  if (out / RUN_RECORD).exists():  # a resumed run: its cost is the sum of every invocation's
    before = json.loads((out / RUN_RECORD).read_text(encoding="utf-8"))
    record.update(
        wall_seconds=round(before["wall_seconds"] + record["wall_seconds"], 1),
        cpu_seconds=round(before["cpu_seconds"] + record["cpu_seconds"], 1),
        load_average_at_start=before["load_average_at_start"],
        invocations=before.get("invocations", 1) + 1)
  (out / RUN_RECORD).write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")


def optimize_png(src: pathlib.Path, dst: pathlib.Path) -> None:
  """Writes ``src`` to ``dst`` as a palette PNG (``COLORS`` colours, no dithering)."""
  from PIL import Image  # matplotlib's own dependency

  with Image.open(src) as image:
    rgb = image.convert("RGB")  # the figures are drawn on an opaque white background
  small = rgb.quantize(colors=COLORS, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE)
  small.save(dst, optimize=True)


def copy_outputs(demo: str, out: pathlib.Path, preset: str = PRESET) -> None:
  """Copies a finished run's outputs into ``destination(demo, preset)``.

  The quick preset's figures, reports and ``results.json`` make the gallery; of the
  standard preset only ``results.json`` and the run record are kept, for its tables; of
  the spikes study, those and its figure.
  """
  dest = destination(demo, preset)
  if not (out / "results.json").exists():
    raise SystemExit(f"{out} has no results.json: the run did not finish")
  if preset != PRESET:
    shutil.rmtree(dest, ignore_errors=True)
    dest.mkdir(parents=True)
    for name in ("results.json", RUN_RECORD):
      if (out / name).exists():
        shutil.copyfile(out / name, dest / name)
    for png in sorted(out.glob("*.png")) if preset == SPIKES else ():
      optimize_png(png, dest / png.name)
    return
  for old in (dest.iterdir() if dest.exists() else ()):  # keep the other presets' folders
    if old.name not in PRESETS[demo]:
      shutil.rmtree(old) if old.is_dir() else old.unlink()
  for src in sorted(out.rglob("*")):
    rel = src.relative_to(out)
    if rel.parts[0].startswith(".") or not src.is_file():
      continue
    target = dest / rel
    if src.suffix == ".png":
      target.parent.mkdir(parents=True, exist_ok=True)
      optimize_png(src, target)
    elif rel.as_posix() in ("report.md", "results.json", RUN_RECORD) or (
        rel.parts[0] == "diagnosis" and src.name == "diagnosis.md"):
      target.parent.mkdir(parents=True, exist_ok=True)
      shutil.copyfile(src, target)


def _seeds(s: dict[str, Any]) -> list[int]:
  """The seeds a ``results.json`` covers (``optstab.harness.seeds.summary_seeds``)."""
  from optstab.harness.seeds import summary_seeds  # pylint: disable=import-outside-toplevel

  return summary_seeds(s)


def _load(folder: pathlib.Path) -> dict[str, Any]:
  return json.loads((folder / "results.json").read_text(encoding="utf-8"))


def _pct(x: Optional[float]) -> str:
  return "n/a" if x is None else f"{100 * x:.1f}%"


def _g(x: Optional[float], spec: str = "g", none: str = "n/a") -> str:
  return none if x is None else format(x, spec)


def _machine(folder: pathlib.Path, s: dict[str, Any]) -> str:
  """Where and how the committed run in ``folder`` was measured."""
  env = s.get("environment") or {}
  v = env.get("versions", {})
  seeds = _seeds(s)
  text = ("one seed" if len(seeds) == 1 else f"seeds {', '.join(map(str, seeds))}")
  text += (f", on {env.get('cpu', 'an unrecorded CPU')} ({env.get('cpu_count', '?')} "
           f"cores), jax {v.get('jax')}, optax {v.get('optax')}, flax {v.get('flax')}")
  record_path = folder / RUN_RECORD
  if record_path.exists():
    r = json.loads(record_path.read_text(encoding="utf-8"))
    runs = r.get("invocations", 1)
    text += (f"; `{r['command']}` took {r['wall_seconds']:.0f} s wall time and "
             f"{r['cpu_seconds']:.0f} CPU-seconds (worker processes included"
             + (f"; summed over {runs} invocations, each resuming the last" if runs > 1 else "")
             + f"); the machine's 1-minute load average was "
             f"{r['load_average_at_start'][0]:.1f} at its start and "
             f"{r['load_average_at_end'][0]:.1f} at its end")
    # The run's own workers load the machine by the end; only the load it started on is other jobs'.
    if r["load_average_at_start"][0] >= 1:
      text += f" (other jobs were sharing its {r['cpu_count']} cores: an idle machine is faster)"
  return text


def _wrn_label(t: dict[str, Any]) -> str:
  from optstab.wrn import report  # pylint: disable=import-outside-toplevel

  label = t.get("label")
  if t.get("feasible", True) and label in (None, "stable"):
    return ""
  return f" ({report._headline(t)})"  # pylint: disable=protected-access


def wrn_tables(s: dict[str, Any], folder: pathlib.Path) -> str:
  """The WideResNet demo's measured tables, from the ``results.json`` in ``folder``."""
  from optstab.wrn import report  # pylint: disable=import-outside-toplevel

  p, f4 = s["preset"], s["figure4"]
  rates = [t["learning_rate"] for t in f4["standard"]["trials"]]
  lines = [f"Measured by `optstab-wrn --preset {p['name']}`: {_machine(folder, s)}. "
           f"{s['data']['test_images']} test images, so one image is "
           f"{100 / s['data']['test_images']:.2f} points. In brackets the run's label when not "
           "stable; **bold**: the curve's lr*.", "",
           "| test error | " + " | ".join(f"lr {r:g}" for r in rates) + " |",
           "|---|" + "---|" * len(rates)]
  for key, curve in f4.items():
    cells = []
    for t in curve["trials"]:
      cell = _pct(t.get("final_test_error"))
      if t["learning_rate"] == curve.get("best_learning_rate"):
        cell = f"**{cell}**"
      cells.append(cell + _wrn_label(t))
    lines.append(f"| {report.pretty(key)} | " + " | ".join(cells) + " |")
  f9 = s["figure9"]
  lines += ["", f"| mitigation (stride (1,1), lr {p['high_learning_rate']:g}) | test error | "
            "max loss / initial | label |", "|---|---|---|---|"]
  for r in s["mitigations"]:
    name = r["mitigation"]
    clip = next((d for k, d in f9.items() if k != "none" and k in name), None)
    if clip is not None:
      name += f": {_pct(clip.get('fraction_clipped'))} of updates clipped"
    lines.append(f"| {name} | {_pct(r.get('final_test_error'))}"
                 f"{'' if r.get('feasible', True) else ' (infeasible)'} | "
                 f"{_g(r.get('max_loss_ratio'), '.3g')} | {report._headline(r)} |")  # pylint: disable=protected-access
  if len(_seeds(s)) > 1:
    lines += report.seed_table_lines(s)
  lines += ["", "What reproduced (the report's verdicts):", ""]
  lines += [f"- {v}" for v in report.verdicts(s)]
  return "\n".join(lines) + "\n"


def transformer_tables(s: dict[str, Any], folder: pathlib.Path) -> str:
  """The Transformer demo's measured tables, from the ``results.json`` in ``folder``."""
  from optstab.transformer import report  # pylint: disable=import-outside-toplevel

  p, c, f8 = s["preset"], s["corpus"], s["figure8"]
  curves = f8["curves"]
  rates = sorted({t["learning_rate"] for curve in curves.values() for t in curve["trials"]})
  lines = [f"Measured by `optstab-transformer --preset {p['name']}`: {_machine(folder, s)}. "
           f"Corpus: {c['name']}" + (f" (Python {c['python_version']})" if "python_version" in c
                                      else "")
           + f", {c.get('num_files', '?')} files, {c['train_chars']:,} training / "
           f"{c['valid_chars']:,} validation characters, {c['vocab_size']} symbols; unigram level "
           f"of the validation windows {s['trivial_levels']['eval_unigram_loss']:.2f} nats. "
           "*failed*: failed to train (within 0.1 nats of that level); **bold**: the curve's "
           "best rate; a dash: the rate is not on that curve's grid.", "",
           f"| validation loss at step {f8['step']} | " + " | ".join(f"{r:g}" for r in rates)
           + " |", "|---|" + "---|" * len(rates)]
  for key, curve in curves.items():
    cells = []
    by_rate = {t["learning_rate"]: t for t in curve["trials"]}
    for lr in rates:
      t = by_rate.get(lr)
      if t is None:
        cells.append("-")
        continue
      cell = _g(t.get("final_eval_loss"), ".3f")
      if t["learning_rate"] == curve.get("best_learning_rate"):
        cell = f"**{cell}**"
      if t.get("failed_to_train"):
        cell += " (failed)"
      elif not t.get("feasible", True):
        cell += " (infeasible)"
      cells.append(cell)
    lines.append(f"| {report.PRETTY[key]} | " + " | ".join(cells) + " |")
  f6 = s["figure6"]
  runs = f6["runs"]
  lines += ["", f"| Post-LN at {f6['learning_rate']:g}, warmup steps | " + " | ".join(runs) + " |",
            "|---|" + "---|" * len(runs),
            "| validation loss at the last step | " + " | ".join(
                _g(r.get("final_eval_loss"), ".3f") + (" (failed)" if r["failed_to_train"] else "")
                for r in runs.values()) + " |"]
  if len(_seeds(s)) > 1:
    lines += report.seed_table_lines(s)
  lines += ["", "What reproduced (the report's verdicts):", ""]
  lines += [f"- {v}" for v in report.verdicts(s)]
  return "\n".join(lines) + "\n"


def spikes_tables(s: dict[str, Any], folder: pathlib.Path) -> str:
  """The Figure 7b study's measured table and verdicts (``optstab.transformer.spikes``)."""
  from optstab.transformer import spikes  # pylint: disable=import-outside-toplevel

  lines = [f"Measured by `optstab-transformer --preset {s['study']['name']}`: "
           f"{_machine(folder, s)}.", ""] + spikes.results_table(s)
  lines += ["", "What the runs show:", ""] + [f"- {v}" for v in spikes.verdicts(s)]
  return "\n".join(lines) + "\n"


TABLES = {"wrn": wrn_tables, "transformer": transformer_tables}


def tables(demo: str, preset: str):
  """The function that writes ``preset``'s ``measured.md`` for ``demo``."""
  return spikes_tables if preset == SPIKES else TABLES[demo]


def _figure(path: str, caption: str) -> str:
  return f"```{{figure}} {path}\n:width: 90%\n\n{caption}\n```\n"


def gallery_page() -> str:
  """``docs/gallery.md``: every committed figure, and the reports in its table of contents."""
  parts = [
      "<!-- Written by docs/make_gallery.py; edit that script, not this page. -->",
      "# Figure gallery", "",
      "Every figure the demos draw, from real runs of their `quick` presets (on a CPU, "
      "offline; their cost is measured in [Reproducing the figures](guide/figures.md)), copied here by `python docs/make_gallery.py`. Each demo's report, written by "
      "the same run, is a page below; the measured tables and what reproduced are also in "
      "[Reproducing the figures](guide/figures.md). Results vary across machines: your run "
      "may land on the other side of the stability edge in a few cells.", ""]
  pages = []
  for demo, (_, command, title) in DEMOS.items():
    folder = GALLERY / demo
    if not folder.exists():
      continue
    parts += [f"## {title}", "", f"Drawn by `{command} --preset {PRESET}`; its report: "
              f"[{command} report](gallery/{demo}/report.md).", ""]
    pages.append(f"gallery/{demo}/report")
    for png in sorted(folder.glob("*.png")):
      parts.append(_figure(f"gallery/{demo}/{png.name}",
                           f"{CAPTIONS.get(png.name, png.stem)} (`{png.name}`)"))
    for preset in PRESETS[demo][1:]:  # a study's own figures, drawn by its own preset
      for png in sorted(destination(demo, preset).glob("*.png")):
        parts.append(_figure(f"gallery/{demo}/{preset}/{png.name}",
                             f"{CAPTIONS.get(png.name, png.stem)} (`{preset}/{png.name}`)"))
    diagnosis = folder / "diagnosis"
    for model in sorted(p.name for p in diagnosis.glob("*") if p.is_dir()) if diagnosis.exists() else []:
      pretty = DIAGNOSED.get(model, model)
      parts += [f"### `optstab.diagnose` on {pretty}", "",
                f"Its report: [diagnosis of {pretty}](gallery/{demo}/diagnosis/{model}/diagnosis.md).",
                ""]
      pages.append(f"gallery/{demo}/diagnosis/{model}/diagnosis")
      for png in sorted((diagnosis / model).glob("*.png")):
        parts.append(_figure(f"gallery/{demo}/diagnosis/{model}/{png.name}",
                             f"{pretty}: {CAPTIONS.get(png.name, png.stem)} (`{png.name}`)"))
  parts += ["```{toctree}", ":caption: The reports", ":maxdepth: 1", ""] + pages + ["```", ""]
  return "\n".join(parts)


def retitle_diagnosis(path: pathlib.Path, model: str) -> None:
  """Names the model in a diagnosis report's title (both reports share one title)."""
  text = path.read_text(encoding="utf-8")
  first, _, rest = text.partition("\n")
  suffix = f": {DIAGNOSED.get(model, model)}"
  if first.startswith("# ") and not first.endswith(suffix):
    path.write_text(first + suffix + "\n" + rest, encoding="utf-8")


def write_pages() -> dict[pathlib.Path, str]:
  """Writes the gallery page and the measured tables from the committed files; returns them."""
  written = {}
  for demo in DEMOS:
    for md in (GALLERY / demo / "diagnosis").glob("*/diagnosis.md"):
      retitle_diagnosis(md, md.parent.name)
    for preset in PRESETS[demo]:
      folder = destination(demo, preset)
      if (folder / "results.json").exists():
        written[folder / "measured.md"] = tables(demo, preset)(_load(folder), folder)
  written[PAGE] = gallery_page()
  for path, text in written.items():
    path.write_text(text, encoding="utf-8")
  return written


def _size(paths) -> int:
  return sum(p.stat().st_size for p in paths)


def main(argv: Optional[list[str]] = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--runs", default=None,
                      help="the runs' folder (default runs/gallery, runs/standard for "
                      "--preset standard; an existing one resumes)")
  parser.add_argument("--preset", choices=(PRESET, STANDARD, SPIKES), default=PRESET,
                      help="quick: the gallery's figures, reports and tables (default); "
                      "standard: the standard presets' measured tables only; spikes: the "
                      "Transformer's Figure 7b study")
  parser.add_argument("--workers", default=None,
                      help="the demos' --workers (default: theirs, one process per core)")
  parser.add_argument("--no-run", action="store_true",
                      help="train nothing: rewrite the pages from docs/gallery/ as committed")
  args = parser.parse_args(argv)
  if not args.no_run:
    runs = pathlib.Path(args.runs or f"runs/{'gallery' if args.preset == PRESET else args.preset}")
    demos = [d for d in DEMOS if args.preset in PRESETS[d]]
    for demo in demos:
      run_demo(demo, runs / demo, args.workers, args.preset)
    for demo in demos:
      copy_outputs(demo, runs / demo, args.preset)
    if args.preset == PRESET:  # the standard presets' PNGs are not copied
      before = _size(p for demo in DEMOS for p in (runs / demo).rglob("*.png")
                     if not p.relative_to(runs / demo).parts[0].startswith("."))
      after = _size(GALLERY.rglob("*.png"))
      print(f"PNGs: {before / 1e6:.2f} MB as drawn, {after / 1e6:.2f} MB optimized")
  write_pages()
  print(f"docs/gallery/: {_size(p for p in GALLERY.rglob('*') if p.is_file()) / 1e6:.2f} MB")
  return 0


if __name__ == "__main__":
  sys.exit(main())
