"""Diagnosing optimization instability, as the playbook FAQ prescribes ("Identifying unstable workloads",
"Learning rate warmup")."""

from optstab.trial import (
    SCHEDULES,
    FixSupport,
    TrialConfig,
    TrialFn,
    TrialResult,
    fix_support,
    with_fix_support,
)

from optstab.diagnosis.confirm import (
    ConfirmationRun,
    long_check,
    judge_long_checks,
    judge_short_check,
    long_check_configs,
    rates_above_best,
    short_check,
    short_check_config,
)
from optstab.diagnosis.detectors import (
    DIVERGED,
    EARLY_UNSTABLE,
    FAILED_TO_TRAIN,
    LABELS,
    LABELS_BY_SEVERITY,
    MID_TRAINING_UNSTABLE,
    STABLE,
    DetectorThresholds,
    GradNormOutlier,
    LossSpike,
    RunDiagnosis,
    classify_run,
    detect_grad_norm_outliers,
    detect_loss_spikes,
    final_loss_level,
    most_severe,
)
from optstab.executors import (
    SINGLE_THREADED_ENV,
    TRIAL_TIMEOUT,
    WORKER_CRASHED,
    InProcessExecutor,
    ProcessPool,
    SubmititExecutor,
    TrialTimeout,
    default_executor,
    execute_trials,
    in_process,
    plan_workers,
    run_trial,
    run_trial_with_limit,
)
from optstab.diagnosis.feasibility import Feasibility, FeasibilityRule, check_feasibility
from optstab.diagnosis.logs import LOG_COLUMNS, RunLog, diagnose_logs, read_run_log, sweep_from_logs
from optstab.diagnosis.fixes import Fix, FixLadder, FixResult, SeedComparison
from optstab.diagnosis.plan import Plan, PlannedRound
from optstab.diagnosis.procedure import Checks, diagnose
from optstab.diagnosis.verdict import VERDICTS, decide_verdict, unstable_learning_rate
from optstab.diagnosis.report import Diagnosis, Finding, make_diagnosis, write_report
from optstab.diagnosis.store import StoreInUse, TrialRecord, TrialStore
from optstab.diagnosis.sweep import (
    ERROR,
    SweepResult,
    SweepTrial,
    learning_rate_sweep,
    log_grid,
    metric_value,
    run_trials,
)
from optstab.diagnosis.warmup_tuner import (
    WarmupComparison,
    WarmupSearch,
    WarmupTrial,
    WarmupTuningResult,
    compare_with_baseline,
    tune_warmup,
)
