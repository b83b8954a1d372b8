"""Analysis of sweep results: read the Parquet files, find the Pareto front, draw the figures.

Knows pandas, pyarrow and matplotlib, never torch or Ray. Entry point:
``python -m analysis.plots`` (see ``analysis/plots.py``).
"""
