"""The command line as a user meets it: benchmarks from the package, --version,
./lillith.toml, flags a source cannot honour, ``config check`` (issue 21)."""

from __future__ import annotations

import importlib
import inspect

from lillith.runtime.cli import BENCHMARKS


def test_every_benchmark_is_a_module_of_the_package() -> None:
    # lillith bench NAME imports lillith.bench.bench_NAME: no checkout, no sys.path
    for name in BENCHMARKS:
        module = importlib.import_module(f"lillith.bench.bench_{name}")
        assert "quick" in inspect.signature(module.run).parameters, name
