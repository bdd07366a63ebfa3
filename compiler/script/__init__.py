"""A resolved job -> the text of its sbatch script: rendering, #SBATCH directives, `allocation: one`."""
