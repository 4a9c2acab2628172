"""`python -m benchmarks` runs the whole suite (see benchmarks/run.py)."""
from .run import main

main()
