"""The demos' shared experiment skeleton: one harness, each demo supplies only its science.

A demo of optstab (``optstab.wrn``, ``optstab.transformer``) reproduces some of
the playbook's figures. Every demo does the same things around its own
model: check where its trials run, open the resumable trial store, run the
trials that need no other trial's result in one batch, run its sweeps and
checks, record the machine and the timings, write ``results.json`` and
``report.md``, and offer a command line. Those live here:

* :mod:`optstab.harness.experiment` -- :func:`~optstab.harness.experiment.start`
  an experiment (mesh and executor checks, the output folder, the store, the
  clock), run its trials and sweeps (:class:`~optstab.harness.experiment.Run`),
  :func:`~optstab.harness.experiment.write_outputs`.
* :mod:`optstab.harness.plan` -- a preset's :class:`~optstab.harness.plan.TrialPlan`
  (its trials and steps, built without training) and its estimated cost.
* :mod:`optstab.harness.seeds` -- checking seeds, and counting on how many
  seeds each verdict holds.
* :mod:`optstab.harness.report` -- the number formats and the shared lines of
  a report.
* :mod:`optstab.harness.cli` -- a demo's command line: the shared options,
  the preset overrides, the run.

A demo supplies its model and data (``model.py``, ``data.py``, ``train.py``),
its presets (config as data), its trial plan (``experiment.py``), its
summaries, figures and verdicts. The harness sits above the runner and the
diagnosis and imports nothing from any demo.
"""

from optstab.harness.experiment import ExperimentResult as ExperimentResult
from optstab.harness.experiment import Run as Run
from optstab.harness.experiment import start as start
from optstab.harness.experiment import write_outputs as write_outputs
from optstab.harness.plan import CostModel as CostModel
from optstab.harness.plan import TrialPlan as TrialPlan
from optstab.harness.seeds import check_seeds as check_seeds
