"""The ``lillith`` command line: ``run``, ``replay``, ``inspect``, ``bench``."""

from __future__ import annotations

import argparse
import importlib
import inspect
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from lillith.errors import LillithError

BENCHMARKS = ("fabric", "som", "conv4d", "agent", "nab", "ingest")


def bench_dir() -> Path:
    """Directory of the benchmark scripts (``bench/`` of the source checkout)."""
    env = os.environ.get("LILLITH_BENCH_DIR")
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[3] / "bench"


def _flatten(d: dict[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    rows: list[tuple[str, Any]] = []
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            rows.extend(_flatten(v, key + "."))
        else:
            rows.append((key, v))
    return rows


def cmd_bench(args: argparse.Namespace) -> int:
    """Run one benchmark; print its JSON object or a table."""
    where = bench_dir()
    if not (where / f"bench_{args.name}.py").is_file():
        raise LillithError("benchmark script not found (bench/ of a source checkout)",
                           name=args.name, bench_dir=str(where))
    sys.path.insert(0, str(where))
    module = importlib.import_module(f"bench_{args.name}")
    kwargs: dict[str, Any] = {"quick": args.quick}
    params = inspect.signature(module.run).parameters
    for name in ("data", "out"):
        value = getattr(args, name)
        if value is not None:
            if name not in params:
                raise LillithError("this benchmark takes no such option", option=name)
            kwargs[name] = Path(value)
    result: dict[str, Any] = module.run(**kwargs)
    if args.json:
        print(json.dumps(result))
    else:
        rows = _flatten(result)
        width = max(len(k) for k, _ in rows)
        for k, v in rows:
            print(f"{k:<{width}}  {v}")
    return 0


def cmd_replay(args: argparse.Namespace) -> int:
    """Replay CSV files through fresh agents, writing per-row outputs."""
    import torch

    from lillith.runtime.config import load_settings
    from lillith.runtime.replay import replay_paths

    settings = load_settings(args.config, env=os.environ)
    torch.set_num_threads(settings.torch_threads)
    cols = args.value_columns.split(",") if args.value_columns else None
    results = replay_paths([Path(p) for p in args.inputs], Path(args.out), settings.agent,
                           timestamp_column=args.timestamp_column, value_columns=cols,
                           show_progress=not args.quiet)
    for r in results:
        print(json.dumps({"source": str(r.source), "output": str(r.output), "rows": r.rows,
                          "mean_loss": r.mean_loss}))
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    """Run an agent on a source until stopped (Ctrl-C), a frame count or a duration.

    This is the synchronous foreground loop of the embedded default (synthetic
    source); the asyncio MQTT daemon, snapshots and resume come with their
    own issues.
    """
    import time

    import torch

    from lillith.agents.agent import Agent
    from lillith.runtime.config import load_settings
    from lillith.runtime.logging import configure_logging, get_logger
    from lillith.sensors.csvfile import read_csv_stream
    from lillith.sensors.synthetic import SyntheticSignal

    settings = load_settings(args.config, env=os.environ)
    configure_logging(settings.log.level, settings.log.format)
    log = get_logger("run")
    torch.set_num_threads(settings.torch_threads)
    source = args.source
    if source == "synthetic":
        synth = SyntheticSignal(4, seed=settings.agent.seed)
        width = synth.n_channels

        def frames(start: int, n: int) -> Any:
            return synth.generate(start, n)
    elif source.startswith("replay:"):
        stream = read_csv_stream(Path(source[len("replay:"):]))
        width = stream.values.shape[1]

        def frames(start: int, n: int) -> Any:
            vals = stream.values[start:start + n]
            return vals, np.zeros(vals.shape[0], dtype=bool)
    elif source.startswith("mqtt://"):
        return _run_daemon(settings, source, args.config)
    else:
        raise LillithError("unknown source (synthetic | replay:PATH | mqtt://HOST:PORT[/FILTER])",
                           source=source)
    agent = Agent(width, settings.agent)
    log.info("agent_started", source=source, channels=width,
             fabric=list(settings.agent.fabric.shape), state_dir=str(settings.state_dir))
    start = time.monotonic()
    done = 0
    chunk = 256
    try:
        while args.max_frames is None or done < args.max_frames:
            if args.duration is not None and time.monotonic() - start >= args.duration:
                break
            n = chunk if args.max_frames is None else min(chunk, args.max_frames - done)
            values, labels = frames(done, n)
            if values.shape[0] == 0:
                break
            ms = agent.process_many(values)
            done += len(ms)
            top = max(ms, key=lambda m: m.anomaly_likelihood)
            log.info("frames_processed", step=agent.step, mean_loss=float(
                np.mean([m.loss for m in ms])), max_likelihood=round(top.anomaly_likelihood, 6),
                at_step=top.step, labelled_anomalies=int(np.sum(labels)),
                energy=round(ms[-1].energy, 4), mode=ms[-1].mode,
                frames_per_s=round(done / max(time.monotonic() - start, 1e-9), 1))
    except KeyboardInterrupt:
        log.info("interrupted", step=agent.step)
    log.info("agent_stopped", frames=done, seconds=round(time.monotonic() - start, 2))
    return 0


def _run_daemon(settings: Any, source: str, config_path: Path | None = None) -> int:
    """``lillith run --source mqtt://HOST:PORT[/FILTER]``: the asyncio daemon.

    SIGTERM / SIGINT stop intake, drain and publish offline status; a second
    signal forces exit. SIGHUP reloads the configuration (file and
    environment) and applies what can change live (see ``Daemon.reload``).
    """
    import asyncio
    import signal
    from urllib.parse import urlsplit

    from lillith.runtime.daemon import Daemon

    url = urlsplit(source)
    mqtt = settings.mqtt.model_copy(update={"host": url.hostname or settings.mqtt.host,
                                            "port": url.port or settings.mqtt.port})
    bindings = list(settings.agents)
    topic = url.path.lstrip("/")
    if topic:
        bindings[0] = bindings[0].model_copy(update={"topics": [topic]})
    daemon = Daemon(mqtt, bindings, settings.agent, metrics_port=settings.metrics_port)

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        hits = {"n": 0}

        def on_signal() -> None:
            hits["n"] += 1
            if hits["n"] > 1:
                os._exit(130)  # second signal: forced exit
            stop.set()

        def on_hup() -> None:
            from lillith.runtime.config import load_settings
            from lillith.runtime.logging import configure_logging, get_logger

            try:
                fresh = load_settings(config_path, env=os.environ)
            except LillithError as e:
                get_logger("run").error("config_reload_failed", error=str(e))
                return
            configure_logging(fresh.log.level, fresh.log.format)
            daemon.reload(fresh.agents)

        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, on_signal)
        loop.add_signal_handler(signal.SIGHUP, on_hup)
        await daemon.run(stop)

    asyncio.run(main())
    return 0


def build_parser() -> argparse.ArgumentParser:
    """Argument parser of every sub-command."""
    parser = argparse.ArgumentParser(prog="lillith", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run an agent on a source (default: synthetic)")
    run.add_argument("--config", type=Path, default=None, help="lillith.toml")
    run.add_argument("--source", default="synthetic",
                     help="synthetic | replay:PATH | mqtt://HOST:PORT[/TOPIC_FILTER]")
    run.add_argument("--max-frames", type=int, default=None)
    run.add_argument("--duration", type=float, default=None, help="seconds")
    run.set_defaults(func=cmd_run)
    b = sub.add_parser("bench", help="run a benchmark against its baseline, side by side")
    b.add_argument("name", choices=BENCHMARKS)
    b.add_argument("--json", action="store_true", help="print one JSON object")
    b.add_argument("--quick", action="store_true", help="shorter timing windows")
    b.add_argument("--data", default=None, help="data directory (nab)")
    b.add_argument("--out", default=None, help="output directory (nab)")
    b.set_defaults(func=cmd_bench)
    r = sub.add_parser("replay", help="stream CSV files through an agent, write per-row scores")
    r.add_argument("inputs", nargs="+", help="CSV files or directory trees (NAB layout)")
    r.add_argument("--out", required=True, help="output file, or directory for several inputs")
    r.add_argument("--config", type=Path, default=None, help="lillith.toml")
    r.add_argument("--timestamp-column", default="timestamp")
    r.add_argument("--value-columns", default=None, help="comma-separated; default: all others")
    r.add_argument("--quiet", action="store_true", help="no progress bar")
    r.set_defaults(func=cmd_replay)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``lillith`` script."""
    args = build_parser().parse_args(argv)
    try:
        code: int = args.func(args)
    except LillithError as e:
        print(f"lillith: error: {e}", file=sys.stderr)
        return 2
    return code


if __name__ == "__main__":
    sys.exit(main())
