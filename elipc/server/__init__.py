"""The Twisted side of elipc: storage through adbapi, long-poll waiters, the broker's use
cases, the Klein app and its site, and the service tree that `twist elipc` runs.

Nothing outside this package imports Twisted except the treq client (elipc.client).
"""
