"""Diagnosing optimization instability, as the playbook FAQ prescribes (S2, S4)."""

from optstab.diagnosis.trial import SCHEDULES, TrialConfig, TrialFn, TrialResult

# --- diagnosis API ---
# --- end diagnosis API ---
