"""`make bench`: the performance harness of issue 7 (ssmd against two reference pipelines).

Only the bench imports this package; nothing on ssmd's own path depends on it.
"""
