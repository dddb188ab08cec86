"""Sinks: the data lake's record files and dead-letter files (`lake`)."""
