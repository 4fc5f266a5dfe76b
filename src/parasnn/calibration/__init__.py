"""Distribution-aware calibration (docs/maths.md §4): one module per stage, a guard, and the pipeline that runs them."""
