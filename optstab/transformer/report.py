"""The Transformer experiment's report: our numbers beside the published ones, and what reproduced.

``render_report`` reads only the summary (``results.json``); ``claims``
judges one seed's summary, two-sided (each claim's sentence says what was
found either way), and ``verdicts`` says on how many seeds each claim holds.
"""

from __future__ import annotations

import math
from typing import Any, Iterable, Optional

from optstab import runner
from optstab.harness import seeds as harness_seeds
from optstab.harness.report import fmt as _fmt
from optstab.harness.report import timing_line
from optstab.transformer.summary import CURVE_ORDER, published_order_holds

__all__ = ["render_report", "seed_table_lines", "verdicts", "claims", "PRETTY", "REPRODUCED", "NOT"]

REPRODUCED, NOT = "REPRODUCED", "NOT reproduced"


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
  seeds = harness_seeds.summary_seeds(s)
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
      f"Seeds: {', '.join(str(x) for x in seeds)}; the tables and figures show seed {seeds[0]}, "
      "the per-seed table every seed, and every verdict says on how many seeds it holds.",
      runner.environment_line(env) + " Results vary across machines.",
      timing_line(s),
      "",
      f"## Figure 8: validation loss at step {f8['step']} vs peak learning rate",
      "",
      "Each curve on its own grid; a dash: the rate is not on that curve's grid.",
      "",
      "| learning rate | " + " | ".join(PRETTY[k] for k in curves) + " |",
      "|---|" + "---|" * len(curves),
  ]
  rates = sorted({t["learning_rate"] for v in curves.values() for t in v["trials"]})
  for lr in rates:
    cells = [next((_cell(t) for t in curves[k]["trials"] if t["learning_rate"] == lr), "-")
             for k in curves]
    lines.append(f"| {lr:g} | " + " | ".join(cells) + " |")
  lines += [
      "",
      "| curve | published best rate | our best rate | our best loss (margin over the "
      "runner-up) | trains up to | failed to train from |",
      "|---|---|---|---|---|---|",
  ]
  for k, v in curves.items():
    edge = (" (grid top)" if v["at_grid_top"] else
            " (grid bottom)" if v.get("at_grid_bottom") else "")
    lines.append(f"| {PRETTY[k]} | ~{pub['figure8_best_learning_rate'][k]:g} | "
                 f"{_fmt(v['best_learning_rate'], 'g')}{edge} | {_fmt(v['best_eval_loss'], '.3f')} "
                 f"({_fmt(v['best_margin'], '.3f')}) | "
                 f"{_fmt(v['trains_up_to'], 'g', 'none')} | "
                 f"{_fmt(v['failed_to_train_from'], 'g', 'none on the grid')} |")
  lines += seed_table_lines(s)
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
  if p["long_check_factors"]:
    lines += ["", "## Figure 7b: long checks at multiples of Post-LN's lr*", ""]
    if f7["runs"]:
      lines += ["| factor | learning rate | final validation loss | outcome | largest rise of "
                "the smoothed training loss after 10% of training | classify_run label |",
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
  else:
    lines += ["", "Figure 7b's long checks are not part of this preset."]
  if s["diagnosis"]:
    lines += ["", f"## optstab.diagnose on each model (the same grid, seed {seeds[0]})", ""]
    for name, d in s["diagnosis"].items():
      lines += [f"### {PRETTY[name]}: verdict `{d['verdict']}`", ""]
      lines += [f"- {f}" for f in d["findings"]] + [""]
  lines += ["", "## What reproduced", ""] + [f"- {v}" for v in verdicts(s)]
  lines += ["", "A verdict's seed count says on how many of the seeds the same verdict holds "
            "(each seed is the whole experiment again, with its own initialization and data "
            "order)."]
  lines += ["", "Figures: " + ", ".join(f"`{v}`" for v in s.get("files", {}).values()
                                         if v.endswith(".png")), ""]
  return "\n".join(lines)


def seed_table_lines(s: dict[str, Any]) -> list[str]:
  """The per-seed table of best rates, each curve's spread, and the seeds where the order holds."""
  t = s.get("figure8_seeds")
  if not t:
    return []
  seeds = t["seeds"]
  pub = s["published"]["figure8_best_learning_rate"]
  lines = [
      "",
      "Best rate per seed (lr*, the feasible rate with the lowest validation loss; `edge`: the "
      "lowest or highest rate of the curve's grid, so the optimum may lie beyond it):",
      "",
      "| seed | " + " | ".join(PRETTY[k] for k in CURVE_ORDER) + " | published order holds |",
      "|---|" + "---|" * (len(CURVE_ORDER) + 1),
      "| published | " + " | ".join(f"~{pub[k]:g}" for k in CURVE_ORDER) + " | yes |",
  ]
  for i, seed in enumerate(seeds):
    cells = [_fmt(t["best_learning_rate"][k][i], "g", "none")
             + (" (edge)" if t["at_grid_edge"][k][i] else "") for k in CURVE_ORDER]
    holds = {True: "yes", False: "no", None: "not judged (a curve has no feasible rate)"}
    lines.append(f"| {seed} | " + " | ".join(cells) + f" | {holds[t['order_holds'][i]]} |")
  spread = []
  for k in CURVE_ORDER:
    sp = t["spread"][k]
    spread.append("n/a" if sp is None else f"{sp[0]:g}" if sp[0] == sp[1]
                  else f"{sp[0]:g}-{sp[1]:g} (x{sp[1] / sp[0]:.2g})")
  n = len(t["order_holds_on"])
  lines.append("| spread | " + " | ".join(spread) + f" | {n} of {len(seeds)} seeds |")
  lines += ["", f"The published order (Post-LN < Post-LN + warmup < Pre-LN <= Pre-LN + warmup) "
            f"holds on {n} of {len(seeds)} seeds"
            + (f" ({', '.join(str(x) for x in t['order_holds_on'])})." if n else ".")]
  return lines


def _best(s: dict[str, Any]) -> dict[str, Optional[float]]:
  return s["figure8"]["best_learning_rate"]


def _grid(curve: dict[str, Any]) -> list[float]:
  return curve["grid"] if "grid" in curve else [t["learning_rate"] for t in curve["trials"]]


def _grid_step(curves: Iterable[dict[str, Any]]) -> float:
  """The finest ratio between neighbouring rates of the curves' grids."""
  grids = [sorted(_grid(c)) for c in curves]
  return min((hi / lo for g in grids for lo, hi in zip(g, g[1:]) if hi > lo), default=10.0)


def claims(s: dict[str, Any]) -> list[tuple[str, Optional[str], str]]:
  """``(key, status, sentence)`` per published claim, judged on one seed's summary.

  Every claim is two-sided: it is either REPRODUCED or NOT reproduced, and its
  sentence states what was found in both cases.
  """
  curves = s["figure8"]["curves"]
  best = _best(s)
  out = []
  post_fail = curves["post_ln"]["failed_to_train_from"]
  pre_fail = curves["pre_ln"]["failed_to_train_from"]
  up = s["figure8"]["trains_up_to"]

  def whole(k):  # the curve trains on its whole grid: its limit lies beyond its top
    return up[k] is not None and up[k] == max(_grid(curves[k]))

  # A curve that trains on its whole grid has no failure edge on it: nothing to compare.
  beyond = (f" -- not judged: Post-LN trains on its whole grid (up to {up['post_ln']:g}), so "
            "its failure edge lies beyond it" if whole("post_ln") else "")
  ok = post_fail is not None and (pre_fail is None or pre_fail > post_fail)
  found = (f"Post-LN fails to train from rate {_fmt(post_fail, 'g', 'none on its grid')}, "
           f"Pre-LN from {_fmt(pre_fail, 'g', 'none on its grid')}")
  out.append(("post_ln_fails_first", REPRODUCED if ok else NOT,
              (f"{REPRODUCED}: without warmup, Post-LN fails to train at a rate where Pre-LN "
               f"still trains ({found}; a stalled run's loss stays at the unigram level, "
               "without NaN).") if ok else
              (f"{NOT}: without warmup, Post-LN fails to train at a rate where Pre-LN still "
               f"trains{beyond} ({found}).")))

  def limit(k):
    return math.inf if whole(k) else (up[k] or 0.0)

  raised = (not whole("post_ln") and limit("post_ln_warmup") > limit("post_ln")
            and limit("pre_ln") > limit("post_ln"))
  out.append(("highest_trainable_raised", REPRODUCED if raised else NOT,
              (REPRODUCED if raised else NOT) +
              f": the highest rate that trains is raised by warmup and by Pre-LN{beyond} "
              "(trains up to: " +
              ", ".join(f"{PRETTY[k]} {_fmt(up[k], 'g', 'none')}"
                        + (" (whole grid)" if whole(k) else "") for k in curves) +
              "); in the published Figure 8 the Post-LN curves also go unstable first."))
  b = [best[k] for k in CURVE_ORDER]
  judged = all(x is not None for x in b)

  def rel(x, y):
    return "above" if x > y else "equal to" if x == y else "below"

  pairs = (("warmup_raises_post_ln", 1, 0, "warmup raises Post-LN's best rate",
            "published 1e-4 -> 4.6e-4"),
           ("pre_ln_above_post_ln", 2, 0, "Pre-LN's best rate is above Post-LN's",
            "published 1.3e-3 vs 1e-4"),
           ("pre_ln_above_post_ln_warmup", 2, 1,
            "Pre-LN's best rate is above Post-LN + warmup's", "published 1.3e-3 vs 4.6e-4"))
  for key, i, j, claim, published in pairs:
    if not judged:
      out.append((key, NOT, f"{NOT}: {claim} -- not judged, a curve has no feasible rate "
                  f"({_rates(b)})."))
      continue
    ok = b[i] > b[j]
    out.append((key, REPRODUCED if ok else NOT,
                f"{REPRODUCED if ok else NOT}: {claim} ({PRETTY[CURVE_ORDER[i]]} {b[i]:g} is "
                f"{rel(b[i], b[j])} {PRETTY[CURVE_ORDER[j]]} {b[j]:g}; {published})."))
  order = published_order_holds(best)
  edges = [PRETTY[k] for k in CURVE_ORDER
           if curves[k]["at_grid_top"] or curves[k].get("at_grid_bottom")]
  edge_note = ("" if not edges else
               f"; at the edge of the grid: {', '.join(edges)}, so an optimum may lie beyond it")
  out.append(("published_order", REPRODUCED if order else NOT,
              f"{REPRODUCED if order else NOT}: the published order of the best rates, "
              f"Post-LN < Post-LN + warmup < Pre-LN <= Pre-LN + warmup, "
              + ("holds" if order else "does not hold" if order is not None else
                 "cannot be judged (a curve has no feasible rate)")
              + f" ({_rates(b)}; published 1e-4 / 4.6e-4 / 1.3e-3 / 3.6e-3{edge_note})."))
  if judged:
    # Ratios of grid rates differ by rounding alone: a gain counts from half a grid step.
    warm_post, warm_pre = b[1] / b[0], b[3] / b[2]
    step = _grid_step(curves.values())
    gap, half_step = math.log(warm_post / warm_pre), 0.5 * math.log(step)
    ok = gap > half_step
    tie = f", within half a grid step (x{step:.3g}) of each other" if abs(gap) <= half_step else ""
    out.append(("warmup_helps_post_ln_more", REPRODUCED if ok else NOT,
                f"{REPRODUCED if ok else NOT}: warmup helps Post-LN more than Pre-LN (best rate "
                f"x{warm_post:.3g} vs x{warm_pre:.3g}{tie}; published x4.6 vs x2.8)."))
  else:
    out.append(("warmup_helps_post_ln_more", NOT,
                f"{NOT}: warmup helps Post-LN more than Pre-LN -- not judged, a curve has no "
                f"feasible rate ({_rates(b)})."))
  f6 = s["figure6"]
  runs = sorted(((int(w), r) for w, r in f6["runs"].items()), key=lambda x: x[0])
  trains = [w for w, r in runs if not r["failed_to_train"]]
  fails = [w for w, r in runs if r["failed_to_train"]]
  monotone = bool(trains) and bool(fails) and max(fails) < min(trains)
  out.append(("figure6_shape", REPRODUCED if monotone else NOT,
              (REPRODUCED if monotone else NOT) +
              f": at peak rate {f6['learning_rate']:g}, short warmups fail and long ones train "
              f"(failed: {fails or 'none'}; trained: {trains or 'none'}; published: of 1, 1k, 4k, "
              f"10k and 40k only 40k trains)."))
  runs7 = s["figure7b"]["runs"]
  if s["preset"]["long_check_factors"]:
    rises = [r for r in runs7 if r.get("label") == "mid-training-unstable"]
    stalls = [r for r in runs7 if r["failed_to_train"]]
    if rises:
      text = (f"{REPRODUCED}: Figure 7b's mid-training rise after a steady decline appears ("
              + ", ".join(f"{r['factor']:g} x lr*" for r in rises) + ", by classify_run).")
    elif runs7:
      text = (f"{NOT}: Figure 7b's mid-training rise after a steady decline does not appear at "
              + ", ".join(f"{r['factor']:g} x lr*" for r in runs7)
              + (": those runs fail to train from the start (stall at the unigram level), "
                 "the Post-LN failure mode, not the FAQ's Figure 7b shape."
                 if len(stalls) == len(runs7) else " (see the table for their outcomes)."))
    else:
      text = (f"{NOT}: Figure 7b's mid-training rise -- no long checks ran, Post-LN has no "
              "feasible rate.")
    out.append(("figure7b_rise", REPRODUCED if rises else NOT, text))
  diag = s["diagnosis"]
  post, pre = diag.get("post_ln"), diag.get("pre_ln")
  if post is not None:
    found = post["verdict"] != "stable"
    out.append(("diagnose_post_ln", REPRODUCED if found else NOT,
                f"{REPRODUCED if found else NOT}: optstab.diagnose on Post-LN finds the "
                f"instability (verdict `{post['verdict']}`)."))
    rec = post["recommendation"]
    if not found:
      why = "it finds no instability, so it searches no fix"
    elif rec is not None:
      why = f"it recommends {rec['fix']}: {rec['reason']}"
    else:
      why = "it recommends no fix: " + ("; ".join(f"{f['fix']}: {f['status']} ({f['reason']})"
                                                  for f in post["fixes"]) or "no fix was searched")
    ok = rec is not None and rec["kind"] == "warmup"
    out.append(("diagnose_points_to_warmup", REPRODUCED if ok else NOT,
                f"{REPRODUCED if ok else NOT}: optstab.diagnose points to warmup on Post-LN "
                f"({why})."))
  if pre is not None:
    rec = pre["recommendation"]
    ok = pre["verdict"] == "stable"
    out.append(("diagnose_pre_ln_quiet", REPRODUCED if ok else NOT,
                f"{REPRODUCED if ok else NOT}: optstab.diagnose raises no alarm on Pre-LN "
                f"(verdict `{pre['verdict']}`" + ("" if rec is None else
                                                  f"; it recommends {rec['fix']}") + ")."))
  return out


def _rates(b: list[Optional[float]]) -> str:
  return " / ".join(_fmt(x, "g", "none") for x in b)


def verdicts(s: dict[str, Any]) -> list[str]:
  """Plain sentences: which published findings our numbers reproduce, and on how many seeds."""
  seeds = harness_seeds.summary_seeds(s)
  support = s.get("verdicts") or harness_seeds.verdict_support([s], seeds, claims)
  return harness_seeds.verdict_lines(support, seeds)
