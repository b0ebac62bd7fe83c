"""Running trials in parallel, at its former path: every name of :mod:`optstab.executors`.

The executors moved to :mod:`optstab.executors`, below both the runner and the
diagnosis. This module re-exports them, so code importing
``optstab.diagnosis.executors`` keeps working. (Module-level settings such as
``TRIAL_TIMEOUT_GRACE`` are read from :mod:`optstab.executors`: change them there.)
"""

from optstab.executors import CRASH_ERRORS as CRASH_ERRORS
from optstab.executors import InProcessExecutor as InProcessExecutor
from optstab.executors import ProcessPool as ProcessPool
from optstab.executors import SINGLE_THREADED_ENV as SINGLE_THREADED_ENV
from optstab.executors import SubmititExecutor as SubmititExecutor
from optstab.executors import TRIAL_TIMEOUT as TRIAL_TIMEOUT
from optstab.executors import TRIAL_TIMEOUT_GRACE as TRIAL_TIMEOUT_GRACE
from optstab.executors import TrialTimeout as TrialTimeout
from optstab.executors import WORKER_CRASHED as WORKER_CRASHED
from optstab.executors import check_trial_timeout as check_trial_timeout
from optstab.executors import default_executor as default_executor
from optstab.executors import execute_trials as execute_trials
from optstab.executors import in_process as in_process
from optstab.executors import plan_workers as plan_workers
from optstab.executors import run_trial as run_trial
from optstab.executors import run_trial_with_limit as run_trial_with_limit

__all__ = [
    "InProcessExecutor", "ProcessPool", "SubmititExecutor", "default_executor", "in_process",
    "plan_workers", "run_trial", "run_trial_with_limit", "execute_trials",
    "SINGLE_THREADED_ENV", "WORKER_CRASHED", "TRIAL_TIMEOUT", "CRASH_ERRORS", "TrialTimeout",
    "check_trial_timeout",
]
