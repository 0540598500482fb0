"""natkit-csvlog: a natkit callback that logs each reassigning epoch to reassignment.csv."""

__version__ = "0.1.0"
