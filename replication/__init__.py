"""Data: catalog, chunk store, transfers, access trends, replica policy.

Nothing here yet; see docs/ and the issues for what lands next.
"""
