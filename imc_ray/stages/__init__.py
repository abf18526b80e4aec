"""Pipeline stages, numbered in run order; each module holds pure per-batch functions and knows nothing of Ray.

1 catalog -> 2 retrieval -> 3 features -> 4 pairs -> 5 matching -> 6 orientation -> 7 mapping (7a cameras)
-> 8 submission
"""
