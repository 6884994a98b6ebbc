"""The public API is pinned, and importing it stays light."""

from __future__ import annotations

import subprocess
import sys

import adnanny_eval

EXPECTED_ALL = {
    "PARSE_ERROR_MODES",
    "VIEWS",
    "VIEW_NAMES",
    "AdNannyEvalError",
    "BinaryMetrics",
    "BootstrapCI",
    "ComparisonReport",
    "ConfusionCounts",
    "DatasetComparison",
    "DegenerateMetricWarning",
    "GateReport",
    "GateRule",
    "InputFileError",
    "JoinError",
    "LabelError",
    "QueryGenMetrics",
    "RegressionTable",
    "ScoreSourceWarning",
    "View",
    "__version__",
    "balanced_accuracy",
    "binary_metrics",
    "compare_dataset",
    "compare_tables",
    "confusion_counts",
    "defect_view",
    "encode_labels",
    "evaluate",
    "evaluate_files",
    "gate_report",
    "get_view",
    "join_on_id",
    "minilm_encoder",
    "minilm_model_dir",
    "normalize_label",
    "paired_bootstrap_bacc",
    "querygen_metrics",
    "querygen_table",
    "read_table",
    "regression_table",
    "roc_auc",
    "run_demo",
    "to_positive",
}


def test_all_is_pinned_and_resolvable():
    assert set(adnanny_eval.__all__) == EXPECTED_ALL
    assert len(adnanny_eval.__all__) == len(EXPECTED_ALL)
    for name in adnanny_eval.__all__:
        assert getattr(adnanny_eval, name) is not None


def test_import_is_light():
    code = (
        "import sys, adnanny_eval, adnanny_eval.cli, adnanny_eval.querygen, adnanny_eval.plots\n"
        "heavy = [m for m in ('torch', 'sentence_transformers', 'matplotlib', 'transformers', 'sklearn') "
        "if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr


def test_errors_share_a_base_class():
    for cls in (adnanny_eval.LabelError, adnanny_eval.JoinError, adnanny_eval.InputFileError):
        assert issubclass(cls, adnanny_eval.AdNannyEvalError)
