"""Pass-wise evaluation of FANet's test-time refinement: per-pass scores, early stop, tables and figures."""

from fanet_monai.evaluation.passwise import PassWiseEvaluationHandler, PassWiseInferer
from fanet_monai.evaluation.plots import plot_metrics_per_pass, plot_qualitative
from fanet_monai.evaluation.reports import (
    METRIC_LABELS,
    TABLE_IX_COLUMNS,
    markdown_metrics,
    markdown_table,
    write_metrics_csv,
)

__all__ = [
    "METRIC_LABELS",
    "TABLE_IX_COLUMNS",
    "PassWiseEvaluationHandler",
    "PassWiseInferer",
    "markdown_metrics",
    "markdown_table",
    "plot_metrics_per_pass",
    "plot_qualitative",
    "write_metrics_csv",
]
