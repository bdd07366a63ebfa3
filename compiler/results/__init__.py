"""What a run measured: results by sweep point, metric names and units, comparisons, the HTML report."""
