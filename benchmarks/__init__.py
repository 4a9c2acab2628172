"""pyfusedbn's benchmarks, in three layers; a module imports only from its own layer or below
(`make check-imports` fails on a cycle):

- common/: leaf helpers (command line, markdown tables, figures, timing, results JSON, progress
  bars); they import nothing else of benchmarks.
- stages, each a `python -m benchmarks.<name>` entry point with the helpers it alone uses:
  microbench (+ cases), group_norm_bench, cpu_dtypes, host_overhead, steady_loop (kernels);
  memory, saved_tensors (memory); train, e2e, model_zoo (+ models, resnet, trainer, data: models
  and end-to-end steps); study (+ study_cell, study_axes). Their results are rendered by
  tables.py and study_axes_report.py (markdown) and plots.py (figures), which import only
  common/ and one another.
- report (REPORT.md from the stages' JSON) and run (every stage, then the report): on top.
"""
