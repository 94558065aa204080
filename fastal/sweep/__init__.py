"""Grids of runs as Dask tasks: ``fastal sweep SWEEP.toml``.

``spec`` parses a sweep file into the grid of runs and the references (and first cycles) they
share; ``tasks`` is what a Dask worker runs (a reference, a first cycle, a run); ``driver``
submits them and follows them; ``cycles`` writes ``DIR/cycles.parquet``. The sweep directory::

    sweep.json               the resolved sweep (base configuration + [set], axes)
    runs/<name>/             one fastal run directory per point of the grid (plus sweep.log, classes.json)
    references/<name>.json   a fully supervised reference shared by the runs that match it
    references/<name>/       the directory it was trained in (config, full.json, sweep.log)
    first/<name>/            with share_first_cycle: the cycle 1 the runs that match it start from
    cycles.parquet           one row per evaluated cycle of every run
"""

from fastal.sweep.driver import Outcome, run_sweep
from fastal.sweep.spec import Sweep, load_sweep, open_sweep_dir

__all__ = ["Outcome", "Sweep", "load_sweep", "open_sweep_dir", "run_sweep"]
