"""Pipeline stages in data-flow order; each module holds pure per-batch functions and knows nothing of Ray.

catalog -> retrieval -> pairs -> features -> matching -> mapping -> submission
"""
