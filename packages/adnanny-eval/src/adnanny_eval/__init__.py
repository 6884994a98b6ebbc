"""adnanny-eval: the AdNanny paper's §5 metrics and tables.

Metrics return fractions in [0, 1]; tables, reports and ``--json`` print percent, as the paper does.
Positive = non-defect, negative = defect. Heavy dependencies (matplotlib, sentence-transformers/torch) are
imported only when a chart is drawn or MiniLM is loaded.
"""

from adnanny_eval.__about__ import __version__
from adnanny_eval.bootstrap import BootstrapCI, paired_bootstrap_bacc
from adnanny_eval.compare import DatasetComparison, compare_dataset, compare_tables
from adnanny_eval.demo import run_demo
from adnanny_eval.encoders import minilm_encoder, minilm_model_dir
from adnanny_eval.errors import (
    AdNannyEvalError,
    DegenerateMetricWarning,
    InputFileError,
    JoinError,
    LabelError,
    ScoreSourceWarning,
)
from adnanny_eval.evaluate import PARSE_ERROR_MODES, evaluate, evaluate_files
from adnanny_eval.gate import GateReport, GateRule, gate_report
from adnanny_eval.io import join_on_id, read_table
from adnanny_eval.metrics import (
    BinaryMetrics,
    ConfusionCounts,
    balanced_accuracy,
    binary_metrics,
    confusion_counts,
    roc_auc,
)
from adnanny_eval.querygen import QueryGenMetrics, querygen_metrics, querygen_table
from adnanny_eval.regression import RegressionTable, regression_table
from adnanny_eval.report import ComparisonReport
from adnanny_eval.views import (
    VIEW_NAMES,
    VIEWS,
    View,
    defect_view,
    encode_labels,
    get_view,
    normalize_label,
    to_positive,
)

__all__ = [
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
]
