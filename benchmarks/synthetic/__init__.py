"""Synthetic tasks that separate sequence mixers: associative recall (MQAR) and state tracking (parity, S3).

Run `python -m benchmarks.synthetic`; see `__main__.py` for the options.
"""
