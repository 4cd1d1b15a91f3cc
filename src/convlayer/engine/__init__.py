"""Compute kernels behind the functional ops. No argument checking in here."""
