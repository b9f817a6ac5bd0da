"""Analysis: sweep storage -> pandas -> Parquet tables, ablation pivots and plots.

>>> import analysis
>>> tables = analysis.load("tables")                       # what `csweep tables NAME --out tables` wrote
>>> analysis.ablation(tables.trials, rows="selfcon_pos", cols="selfcon_size", metric="linear_top1")
"""

from analysis.api import Tables, ablation, bin_setting, format_ablation, load
from analysis.report import write_report
from analysis.tables import SweepTables, build_tables, write_tables

__all__ = [
    "SweepTables", "Tables", "ablation", "bin_setting", "build_tables", "format_ablation", "load", "write_report",
    "write_tables",
]
