"""optstab: the Deep Learning Tuning Playbook's FAQ on optimization failures, in JAX.

Each section below is owned by one module; the public API is everything
re-exported here.
"""

__version__ = "0.1.0"

# --- optimizers (S1) ---
# --- end optimizers ---

# --- schedules (S4) ---
# --- end schedules ---

# --- clipping (S5) ---
# --- end clipping ---

# --- telemetry ---
# --- end telemetry ---

# --- diagnosis (S2) ---
# --- end diagnosis ---
