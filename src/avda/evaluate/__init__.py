"""Evaluation: metrics, tables and reports over run directories."""
