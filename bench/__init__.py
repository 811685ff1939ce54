"""The benchmark suite of issue 6: `python -m bench` (see docs/PERFORMANCE.md).

Every item starts its own servers (uvicorn subprocesses on loopback ports, real SQLite files
in a temporary directory), drives them from a separate process (wrk, or locust for the mixed
scenario), alternates the two sides of each comparison and reports the median ratio of the
pairs with its min and max.
"""
