"""orchc: compile declarative YAML recipes into sbatch scripts for services and benchmark clients."""

__version__ = "0.1.0"
