"""The trial interface, at its former path: every name of :mod:`optstab.trial`.

The trial types moved to :mod:`optstab.trial`, below both the runner and the
diagnosis. This module re-exports them, so code importing
``optstab.diagnosis.trial`` and objects pickled under that path (a
``TrialConfig``, a ``TrialResult``, a function from ``with_fix_support``) keep
working.
"""

from optstab.trial import FIX_FIELDS as FIX_FIELDS
from optstab.trial import RATE_DIGITS as RATE_DIGITS
from optstab.trial import SCHEDULES as SCHEDULES
from optstab.trial import FixAwareTrialFn as FixAwareTrialFn
from optstab.trial import FixSupport as FixSupport
from optstab.trial import TrialConfig as TrialConfig
from optstab.trial import TrialFn as TrialFn
from optstab.trial import TrialRecord as TrialRecord
from optstab.trial import TrialResult as TrialResult
from optstab.trial import fix_support as fix_support
from optstab.trial import to_jsonable as to_jsonable
from optstab.trial import with_fix_support as with_fix_support

__all__ = ["TrialConfig", "TrialResult", "TrialFn", "SCHEDULES", "to_jsonable", "FixSupport",
           "fix_support", "with_fix_support", "FIX_FIELDS", "RATE_DIGITS"]
