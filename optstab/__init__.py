"""optstab: the Deep Learning Tuning Playbook's FAQ on optimization failures, in JAX.

The public API is everything re-exported here (``import optstab``), grouped by
the module that defines it and the FAQ section it implements. Figures live in
``optstab.plots``; the WideResNet demo in ``optstab.wrn``.
"""

__version__ = "0.1.0"

# --- optimizers (the FAQ's update rules) ---
from optstab.optimizers import FaqRmsPropState as FaqRmsPropState
from optstab.optimizers import ScaleByFaqAdamState as ScaleByFaqAdamState
from optstab.optimizers import adam as adam
from optstab.optimizers import momentum as momentum
from optstab.optimizers import nadam as nadam
from optstab.optimizers import nesterov as nesterov
from optstab.optimizers import rmsprop as rmsprop
from optstab.optimizers import scale_by_faq_adam as scale_by_faq_adam
from optstab.optimizers import scale_by_faq_nadam as scale_by_faq_nadam
from optstab.optimizers import sgd as sgd

# --- schedules (warmup) ---
from optstab.schedules import post_warmup_steps_for as post_warmup_steps_for
from optstab.schedules import schedule_values as schedule_values
from optstab.schedules import prepend_warmup as prepend_warmup
from optstab.schedules import total_steps_with_warmup as total_steps_with_warmup
from optstab.schedules import warmup as warmup
from optstab.schedules import warmup_base_learning_rates as warmup_base_learning_rates
from optstab.schedules import warmup_length_advice as warmup_length_advice
from optstab.schedules import warmup_sweep_grid as warmup_sweep_grid

# --- clipping ---
from optstab.clipping import PercentileClipState as PercentileClipState
from optstab.clipping import clip_by_global_norm as clip_by_global_norm
from optstab.clipping import clip_threshold as clip_threshold
from optstab.clipping import thresholds_in_force as thresholds_in_force
from optstab.clipping import percentile_clip as percentile_clip

# --- spike guard ---
from optstab.spike_guard import SkipSpikesState as SkipSpikesState
from optstab.spike_guard import skip_spikes as skip_spikes

# --- telemetry ---
from optstab.telemetry import ClippingSummary as ClippingSummary
from optstab.telemetry import GradNormLogState as GradNormLogState
from optstab.telemetry import GradNormRecorder as GradNormRecorder
from optstab.telemetry import global_norm as global_norm
from optstab.telemetry import record_grad_norm as record_grad_norm
from optstab.telemetry import recorded_grad_norms as recorded_grad_norms
from optstab.telemetry import summarize_clip_state as summarize_clip_state
from optstab.telemetry import summarize_clipping as summarize_clipping

# --- trials (what a training function takes and returns) ---
from optstab.trial import FixSupport as FixSupport
from optstab.trial import TrialConfig as TrialConfig
from optstab.trial import TrialFn as TrialFn
from optstab.trial import TrialResult as TrialResult
from optstab.trial import with_fix_support as with_fix_support

# --- diagnosis (identifying unstable workloads) ---
from optstab.diagnosis import DIVERGED as DIVERGED
from optstab.diagnosis import EARLY_UNSTABLE as EARLY_UNSTABLE
from optstab.diagnosis import FAILED_TO_TRAIN as FAILED_TO_TRAIN
from optstab.diagnosis import LABELS as LABELS
from optstab.diagnosis import MID_TRAINING_UNSTABLE as MID_TRAINING_UNSTABLE
from optstab.diagnosis import STABLE as STABLE
from optstab.diagnosis import DetectorThresholds as DetectorThresholds
from optstab.diagnosis import Checks as Checks
from optstab.diagnosis import Diagnosis as Diagnosis
from optstab.diagnosis import FixLadder as FixLadder
from optstab.diagnosis import FeasibilityRule as FeasibilityRule
from optstab.diagnosis import SweepResult as SweepResult
from optstab.diagnosis import WarmupTuningResult as WarmupTuningResult
from optstab.diagnosis import classify_run as classify_run
from optstab.diagnosis import compare_with_baseline as compare_with_baseline
from optstab.diagnosis import detect_grad_norm_outliers as detect_grad_norm_outliers
from optstab.diagnosis import detect_loss_spikes as detect_loss_spikes
from optstab.diagnosis import diagnose as diagnose
from optstab.diagnosis import diagnose_logs as diagnose_logs
from optstab.diagnosis import final_loss_level as final_loss_level
from optstab.diagnosis import learning_rate_sweep as learning_rate_sweep
from optstab.diagnosis import log_grid as log_grid
from optstab.diagnosis import long_check as long_check
from optstab.diagnosis import rates_above_best as rates_above_best
from optstab.diagnosis import short_check as short_check
from optstab.diagnosis import tune_warmup as tune_warmup

# --- a TrialFn built from a model, a loss, data and an optimizer ---
from optstab.trial_builder import make_trial_fn as make_trial_fn

# --- running trials in parallel ---
from optstab.executors import SINGLE_THREADED_ENV as SINGLE_THREADED_ENV
from optstab.executors import InProcessExecutor as InProcessExecutor
from optstab.executors import ProcessPool as ProcessPool
from optstab.executors import SubmititExecutor as SubmititExecutor
from optstab.executors import default_executor as default_executor
