"""Research on top of train/: configs, sweeps, analysis, figures, and the ``isoflop`` CLI."""
