"""Every figure optstab draws, with matplotlib, written to PNG.

Plot functions take plain numbers and arrays (never diagnosis or experiment
objects), so this module depends on nothing else in optstab and any layer can
call it. Each function writes one PNG and returns its path.
"""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")  # headless by default; a notebook's inline backend still works via savefig

import matplotlib.pyplot as plt  # noqa: E402

# --- gradient norms (telemetry, S5) ---
# --- end gradient norms ---

# --- sweeps and diagnosis (S2, S4) ---
# --- end sweeps and diagnosis ---

# --- WideResNet figures (S6) ---
# --- end WideResNet figures ---
