"""The Transformer experiment's report: our numbers beside the published ones, and what reproduced.

``render_report`` and ``verdicts`` read only the summary (``results.json``).
"""

from __future__ import annotations

import math
from typing import Any

from optstab import runner
from optstab.harness.report import fmt as _fmt
from optstab.harness.report import timing_line

__all__ = ["render_report", "verdicts", "PRETTY"]


PRETTY = {"post_ln": "Post-LN", "post_ln_warmup": "Post-LN + warmup", "pre_ln": "Pre-LN",
           "pre_ln_warmup": "Pre-LN + warmup"}


def _cell(t: dict[str, Any]) -> str:
  cell = _fmt(t.get("final_eval_loss"), ".3f")
  if not t["feasible"]:
    return cell + " (infeasible)"
  if t["failed_to_train"]:
    return cell + " (failed to train)"
  if t.get("label") not in (None, "stable"):
    return cell + f" ({t['label']})"
  return cell


def render_report(s: dict[str, Any]) -> str:
  """The markdown report: our numbers beside the published ones, and what reproduced."""
  p, c, pub = s["preset"], s["corpus"], s["published"]
  f8 = s["figure8"]
  curves = f8["curves"]
  env = s["environment"]
  lines = [
      f"# Post-LN vs Pre-LN warmup experiment: preset `{p['name']}`",
      "",
      f"{p['description']}.",
      "",
      f"Corpus: {c['name']} ({c.get('num_files', '?')} files; {c['train_chars']:,} training / "
      f"{c['valid_chars']:,} validation characters; {c['vocab_size']} symbols"
      + (f"; Python {c['python_version']}" if "python_version" in c else "")
      + f"). Unigram entropy of the training text {c['unigram_entropy']:.3f} nats; unigram level "
      f"of the evaluation windows {s['trivial_levels']['eval_unigram_loss']:.3f} nats.",
      f"Model: decoder-only, {p['depth']} layers, width {p['width']}, {p['num_heads']} heads, "
      f"feed-forward {p['ff_width'] or 4 * p['width']}, ReLU, sequence {p['seq_len']}, batch "
      f"{p['batch_size']}, Xavier init, {p['compute_dtype']}. Adam (0.9, 0.98, 1e-9); linear "
      f"warmup then constant. Every run lasts {p['num_steps']} steps, warmup included.",
      f"Infeasible: {s['feasibility_rule']}. {s['stall_rule'][0].upper()}{s['stall_rule'][1:]}.",
      runner.environment_line(env) + " Results vary across machines.",
      timing_line(s),
      "",
      f"## Figure 8: validation loss at step {f8['step']} vs peak learning rate",
      "",
      "| learning rate | " + " | ".join(PRETTY[k] for k in curves) + " |",
      "|---|" + "---|" * len(curves),
  ]
  first = next(iter(curves.values()))
  for i, t0 in enumerate(first["trials"]):
    cells = [_cell(curves[k]["trials"][i]) for k in curves]
    lines.append(f"| {t0['learning_rate']:g} | " + " | ".join(cells) + " |")
  lines += [
      "",
      "| curve | published best rate | our best rate | our best loss (margin over the "
      "runner-up) | trains up to | failed to train from |",
      "|---|---|---|---|---|---|",
  ]
  for k, v in curves.items():
    top = " (grid top)" if v["at_grid_top"] else ""
    lines.append(f"| {PRETTY[k]} | ~{pub['figure8_best_learning_rate'][k]:g} | "
                 f"{_fmt(v['best_learning_rate'], 'g')}{top} | {_fmt(v['best_eval_loss'], '.3f')} "
                 f"({_fmt(v['best_margin'], '.3f')}) | "
                 f"{_fmt(v['trains_up_to'], 'g', 'none')} | "
                 f"{_fmt(v['failed_to_train_from'], 'g', 'none on the grid')} |")
  f6 = s["figure6"]
  lines += [
      "",
      f"## Figure 6: Post-LN warmup lengths at peak rate {f6['learning_rate']:g}",
      "",
      "| warmup steps | final validation loss | outcome | classify_run label |",
      "|---|---|---|---|",
  ]
  for w, r in f6["runs"].items():
    outcome = "failed to train" if r["failed_to_train"] else "trains"
    lines.append(f"| {w} | {_fmt(r.get('final_eval_loss'), '.3f')} | {outcome} | "
                 f"{r.get('label', 'n/a')} |")
  lines.append(f"| published (peak ~{pub['figure6_peak_learning_rate']:g}) | warmups "
               f"{', '.join(map(str, pub['figure6_warmups']))} | only "
               f"{pub['figure6_only_trains']} trains | |")
  f7 = s["figure7b"]
  lines += ["", "## Figure 7b: long checks at multiples of Post-LN's lr*", ""]
  if f7["runs"]:
    lines += ["| factor | learning rate | final validation loss | outcome | largest rise of the "
              "smoothed training loss after 10% of training | classify_run label |",
              "|---|---|---|---|---|---|"]
    for r in f7["runs"]:
      rise = r.get("mid_training_rise") or {}
      lines.append(f"| {r['factor']:g} x | {r['learning_rate']:.3g} | "
                   f"{_fmt(r.get('final_eval_loss'), '.3f')} | "
                   f"{'failed to train' if r['failed_to_train'] else 'trains'} | "
                   f"{_fmt(rise.get('rise'), '.3f')} nats at step {rise.get('step', 'n/a')} | "
                   f"{r.get('label', 'n/a')} |")
  else:
    lines.append("No long checks: Post-LN has no feasible rate on the grid.")
  if s["diagnosis"]:
    lines += ["", "## optstab.diagnose on each model (the same grid)", ""]
    for name, d in s["diagnosis"].items():
      lines += [f"### {PRETTY[name]}: verdict `{d['verdict']}`", ""]
      lines += [f"- {f}" for f in d["findings"]] + [""]
  lines += ["", "## What reproduced", ""] + [f"- {v}" for v in verdicts(s)]
  lines += ["", "Figures: " + ", ".join(f"`{v}`" for v in s.get("files", {}).values()
                                         if v.endswith(".png")), ""]
  return "\n".join(lines)


def verdicts(s: dict[str, Any]) -> list[str]:
  """Plain sentences: which published findings our numbers reproduce."""
  curves = s["figure8"]["curves"]
  best = s["figure8"]["best_learning_rate"]
  out = []
  post_fail = curves["post_ln"]["failed_to_train_from"]
  pre_fail = curves["pre_ln"]["failed_to_train_from"]
  if post_fail is not None and (pre_fail is None or pre_fail > post_fail):
    out.append(f"REPRODUCED: without warmup, Post-LN fails to train from rate {post_fail:g} "
               f"(its loss stays at the unigram level, without NaN), where Pre-LN "
               + ("trains on the whole grid." if pre_fail is None else
                  f"still trains (it fails only from {pre_fail:g})."))
  else:
    out.append("NOT reproduced: Post-LN does not fail to train at lower rates than Pre-LN on "
               "this grid.")
  up = s["figure8"]["trains_up_to"]
  grid_top = max(t["learning_rate"] for t in curves["post_ln"]["trials"])

  def limit(k):  # a curve that trains on the whole grid trains beyond its top
    return math.inf if up[k] == grid_top else (up[k] or 0.0)

  raised = limit("post_ln_warmup") > limit("post_ln") and limit("pre_ln") > limit("post_ln")
  out.append(("REPRODUCED" if raised else "NOT reproduced") +
             ": the highest rate that trains is raised by warmup and by Pre-LN (trains up to: " +
             ", ".join(f"{PRETTY[k]} {_fmt(up[k], 'g', 'none')}"
                       + (" (whole grid)" if up[k] == grid_top else "") for k in curves) +
             "); in the published Figure 8 the Post-LN curves also go unstable first.")
  names = ("post_ln", "post_ln_warmup", "pre_ln", "pre_ln_warmup")
  if all(best[k] is not None for k in names):
    b = [best[k] for k in names]
    warm_post, warm_pre = b[1] / b[0], b[3] / b[2]
    out.append(("REPRODUCED" if b[1] > b[0] else "NOT reproduced") +
               f": warmup raises Post-LN's best rate ({b[0]:g} -> {b[1]:g}; published 1e-4 -> "
               f"4.6e-4).")
    out.append(("REPRODUCED" if b[2] > b[0] else "NOT reproduced") +
               f": Pre-LN's best rate is above Post-LN's ({b[2]:g} vs {b[0]:g}; published "
               f"1.3e-3 vs 1e-4).")
    order = b[0] < b[1] <= b[2] <= b[3]
    out.append(("REPRODUCED" if order else "NOT reproduced") +
               f": the published order Post-LN < Post-LN + warmup <= Pre-LN <= Pre-LN + warmup "
               f"({' / '.join(f'{x:g}' for x in b)}; published 1e-4 / 4.6e-4 / 1.3e-3 / 3.6e-3).")
    out.append(("REPRODUCED" if warm_post > warm_pre else "NOT reproduced") +
               f": warmup helps Post-LN more than Pre-LN (best rate x{warm_post:.3g} vs "
               f"x{warm_pre:.3g}; published x4.6 vs x2.8).")
  else:
    out.append("NOT reproduced: some curve has no feasible rate, so the best rates cannot be "
               "compared.")
  f6 = s["figure6"]
  runs = sorted(((int(w), r) for w, r in f6["runs"].items()), key=lambda x: x[0])
  trains = [w for w, r in runs if not r["failed_to_train"]]
  fails = [w for w, r in runs if r["failed_to_train"]]
  monotone = bool(trains) and bool(fails) and max(fails) < min(trains)
  out.append(("REPRODUCED" if monotone else "NOT reproduced") +
             f": at peak rate {f6['learning_rate']:g}, short warmups fail and long ones train "
             f"(failed: {fails or 'none'}; trained: {trains or 'none'}; published: of 1, 1k, 4k, "
             f"10k and 40k only 40k trains).")
  runs7 = s["figure7b"]["runs"]
  if runs7:
    rises = [r for r in runs7 if r.get("label") == "mid-training-unstable"]
    stalls = [r for r in runs7 if r["failed_to_train"]]
    if rises:
      out.append("Figure 7b: a mid-training rise appears ("
                 + ", ".join(f"{r['factor']:g} x lr*" for r in rises) + ", by classify_run).")
    else:
      out.append("Figure 7b: NO mid-training rise after a steady decline at "
                 + ", ".join(f"{r['factor']:g} x lr*" for r in runs7)
                 + (": those runs fail to train from the start (stall at the unigram level), "
                    "the Post-LN failure mode, not the FAQ's Figure 7b shape."
                    if len(stalls) == len(runs7) else " (see the table for their outcomes)."))
  diag = s["diagnosis"]
  if diag:
    post, pre = diag.get("post_ln"), diag.get("pre_ln")
    if post is not None:
      out.append(("REPRODUCED" if post["verdict"] != "stable" else "NOT reproduced") +
                 f": optstab.diagnose on Post-LN finds the instability (verdict "
                 f"`{post['verdict']}`).")
      if post["verdict"] != "stable":
        rec = post["recommendation"]
        found = (f"it recommends {rec['fix']}: {rec['reason']}" if rec is not None else
                 "it recommends no fix: " + ("; ".join(f"{f['fix']}: {f['status']} ({f['reason']})"
                                             for f in post["fixes"]) or "no fix was searched"))
        out.append(("REPRODUCED" if rec is not None and rec["kind"] == "warmup" else
                    "NOT reproduced") + f": optstab.diagnose points to warmup on Post-LN ({found})."
                   )
    if pre is not None:
      rec = pre["recommendation"]
      out.append(("REPRODUCED" if pre["verdict"] == "stable" else "NOT reproduced") +
                 f": optstab.diagnose raises no alarm on Pre-LN (verdict `{pre['verdict']}`"
                 + ("" if rec is None else f"; it recommends {rec['fix']}") + ").")
  return out
