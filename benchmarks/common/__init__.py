"""The benchmarks' leaf helpers: they import nothing else of `benchmarks`, every other module may
import them.

- cli:      the command line every stage shares (--quick/--full, --device, --threads, --out),
            the device choice, and a stage's main (arguments, run, JSON, table)
- markdown: markdown tables and number formatting
- figures:  matplotlib, imported only when a figure is drawn, and saving a figure
- timing:   contenders timed round-robin; the device's copy bandwidth
- results:  the results folder (JSON per entry point) and the machine they came from
- progress: tqdm progress bars when tqdm is installed
"""
