"""Support for tests and benchmarks that run finexp's servers as processes: finexp's own test suite and
``scripts/bench_*.py`` use it, and so can a user's tests of a deployment. The library itself never imports it.

- :mod:`finexp.testing.loopback`: free ports on 127.0.0.1, waiting for a port (or ``/health``) to answer, stopping
  a process group by its leader's PID
"""
