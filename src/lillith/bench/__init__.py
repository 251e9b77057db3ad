"""The benchmarks of ``lillith bench NAME``: one module ``bench_NAME`` each, with ``run``.

Each ``bench_NAME`` module has ``run(*, quick=False[, data=None][, out=None])``
returning the JSON object the CLI prints, and runs alone as
``python -m lillith.bench.bench_NAME``. The helpers beside them
(``local_broker``: a private mosquitto for the benchmarks and the tests;
``torch_fabric``: the torch baseline of the fabric; ``fabric_memory``,
``constants``, ``behaviour_hash``: diagnostics run as modules) ship with the
package, so ``lillith bench`` works from an installed wheel.
"""
