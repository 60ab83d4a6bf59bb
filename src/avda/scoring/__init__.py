"""Scoring: metrics and the datasets' evaluation protocols, on arrays of scores and labels.

The lowest layer of stage 2: ``avda.train`` logs these metrics while it trains and
``avda.evaluate`` builds its tables from them; neither imports the other.
"""
