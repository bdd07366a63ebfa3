"""Compiled recipes -> an output folder: the manifest (its one owner), the submission plan, staging, the compile pipeline."""
