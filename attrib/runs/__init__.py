"""Dataset runs: one attribution method over every prompt of a JSONL file, in chunks, resumable after a kill,
sharded over processes by torch.distributed; and an HTML report of a finished run (docs/runs.md).

>>> from attrib.runs import METHODS
>>> "integrated_gradients" in METHODS and "attribution_patching" in METHODS
True
"""

from .methods import ALIASES, METHODS
from .report import report_html, token_totals, write_report
from .runner import run_dataset
from .store import load_results, read_index

__all__ = ["run_dataset", "write_report", "report_html", "token_totals", "read_index", "load_results", "METHODS",
           "ALIASES"]
