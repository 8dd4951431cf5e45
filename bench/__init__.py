"""The bridge's benchmarks, run with ``python -m bench`` from the checkout (see ``bench/__main__.py``).

``harness`` holds a run's settings and what it starts, ``load`` the load generator,
``report`` what is printed; ``overhead``, ``slow_vendor``, ``scale`` and ``tokens`` are
one benchmark each; ``servers`` and ``token_worker`` are the processes they start.
"""
