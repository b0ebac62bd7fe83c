"""optstab: the Deep Learning Tuning Playbook's FAQ on optimization failures, in JAX.

Each section below is owned by one module; the public API is everything
re-exported here.
"""

__version__ = "0.1.0"

# --- optimizers (S1) ---
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
# --- end telemetry ---

# --- diagnosis (S2) ---
# --- end diagnosis ---
