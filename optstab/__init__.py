"""optstab: the Deep Learning Tuning Playbook's FAQ on optimization failures, in JAX.

Each section below is owned by one module; the public API is everything
re-exported here.
"""

__version__ = "0.1.0"

# --- optimizers (S1) ---
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
# --- end optimizers ---

# --- schedules (S4) ---
from optstab.schedules import post_warmup_steps_for
from optstab.schedules import prepend_warmup
from optstab.schedules import total_steps_with_warmup
from optstab.schedules import warmup
from optstab.schedules import warmup_base_learning_rates
from optstab.schedules import warmup_length_advice
from optstab.schedules import warmup_sweep_grid
# --- end schedules ---

# --- clipping (S5) ---
from optstab.clipping import PercentileClipState
from optstab.clipping import clip_by_global_norm
from optstab.clipping import clip_threshold
from optstab.clipping import percentile_clip
# --- end clipping ---

# --- telemetry ---
from optstab.telemetry import ClippingSummary
from optstab.telemetry import GradNormLogState
from optstab.telemetry import GradNormRecorder
from optstab.telemetry import global_norm
from optstab.telemetry import record_grad_norm
from optstab.telemetry import recorded_grad_norms
from optstab.telemetry import summarize_clip_state
from optstab.telemetry import summarize_clipping
# --- end telemetry ---

# --- diagnosis (S2) ---
from optstab.diagnosis import DetectorThresholds
from optstab.diagnosis import Diagnosis
from optstab.diagnosis import FeasibilityRule
from optstab.diagnosis import SweepResult
from optstab.diagnosis import TrialConfig
from optstab.diagnosis import TrialFn
from optstab.diagnosis import TrialResult
from optstab.diagnosis import WarmupTuningResult
from optstab.diagnosis import classify_run
from optstab.diagnosis import detect_grad_norm_outliers
from optstab.diagnosis import detect_loss_spikes
from optstab.diagnosis import diagnose
from optstab.diagnosis import learning_rate_sweep
from optstab.diagnosis import log_grid
from optstab.diagnosis import long_check
from optstab.diagnosis import rates_above_best
from optstab.diagnosis import short_check
from optstab.diagnosis import tune_warmup
# --- end diagnosis ---
