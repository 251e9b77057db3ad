"""The ``lillith`` command line: ``run``, ``replay``, ``report``, ``inspect``, ``bench``,
``config check``."""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import inspect
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from lillith.errors import ConfigError, LillithError
from lillith.runtime.report_cli import add_report_parser
from lillith.sensors.csvfile import AUTO_TIME, LABEL_COLUMNS, TIME_COLUMNS

CONFIG_HELP = "configuration file (default: ./lillith.toml when present)"
BENCHMARKS = ("fabric", "som", "conv4d", "agent", "nab", "skab", "ingest", "latency",
              "checkpoint", "evolution", "cluster")


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
    module = importlib.import_module(f"lillith.bench.bench_{args.name}")
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


def _load(config: Path | None, overrides: dict[str, Any] | None = None) -> Any:
    """The settings: ``config``, else ``./lillith.toml`` when present, then the
    environment, then ``overrides`` (:func:`lillith.runtime.config.load_settings`)."""
    from lillith.runtime.config import default_config_path, load_settings

    return load_settings(default_config_path(config), env=os.environ, overrides=overrides)


def cmd_config_check(args: argparse.Namespace) -> int:
    """Validate the configuration (file, environment) and say which file was read;
    with ``--show`` print the effective settings as JSON."""
    from lillith.runtime.config import default_config_path

    path = default_config_path(args.config)
    settings = _load(args.config)
    if args.show:
        print(json.dumps(settings.model_dump(mode="json"), indent=2))
    source = str(path) if path is not None else "no file (the defaults)"
    print(f"configuration valid: {source}, agents: "
          f"{', '.join(b.name for b in settings.agents)}", file=sys.stderr)
    return 0


def cmd_replay(args: argparse.Namespace) -> int:
    """Replay CSV files through agents (fresh, or resumed with ``--state``),
    writing per-row outputs."""
    import torch

    from lillith.runtime.replay import replay_paths

    if args.state is None and (args.fresh or args.checkpoint_every is not None):
        raise ConfigError("--fresh and --checkpoint-every apply with --state DIR (a replay "
                          "without --state starts fresh and writes no snapshot)")
    settings = _load(args.config)
    torch.set_num_threads(settings.torch_threads)
    cols = args.columns.split(",") if args.columns else None
    exclude = ([c for c in args.exclude.split(",") if c] if args.exclude is not None
               else list(LABEL_COLUMNS))
    state = None
    if args.state is not None:
        from lillith.runtime.replay import ReplayState

        st = settings.state
        state = ReplayState(args.state, fresh=args.fresh, every=args.checkpoint_every,
                            keep_last=st.keep_last, keep_every=st.keep_every,
                            storage_options=st.storage_options or None)
    from contextlib import nullcontext

    from lillith.state.lock import StateLock

    with StateLock(str(args.state)) if args.state is not None else nullcontext():
        results = replay_paths([Path(p) for p in args.inputs], Path(args.out), settings.agent,
                               timestamp_column=args.timestamp_column, value_columns=cols,
                               exclude=exclude, show_progress=not args.quiet, state=state)
    for r in results:
        print(json.dumps({"source": str(r.source), "output": str(r.output), "rows": r.rows,
                          "mean_loss": r.mean_loss, "start_step": r.start_step,
                          "snapshot": r.snapshot, "times_back": r.times_back,
                          "times_repeated": r.times_repeated}))
    return 0


def parse_mqtt_url(source: str) -> tuple[str | None, int | None, str]:
    """``mqtt://HOST[:PORT][/FILTER]`` as (host or None, port or None, filter or "").

    The topic filter is everything after ``HOST:PORT/``, taken literally (a URL
    parser would cut ``#``, MQTT's multi-level wildcard, off as a fragment).

    Raises
    ------
    ConfigError
        A port that is not a number in 1..65535, or an authority that is not
        ``HOST[:PORT]`` (``[v6 address]:PORT`` for IPv6).
    """
    from urllib.parse import urlsplit

    authority, _, topic = source.removeprefix("mqtt://").partition("/")
    try:
        url = urlsplit(f"mqtt://{authority}")
        port = url.port
    except ValueError as e:
        what = ("the port must be a number in 1..65535" if "port" in str(e).lower()
                else "expected mqtt://HOST[:PORT][/FILTER]")
        raise ConfigError(f"invalid MQTT URL: {what}", source=source, detail=str(e)) from None
    if port is not None and not 1 <= port <= 65535:
        raise ConfigError("invalid MQTT URL: the port must be in 1..65535", source=source,
                          port=port)
    if url.username is not None or url.password is not None:
        raise ConfigError("invalid MQTT URL: credentials go in [mqtt] username / password "
                          "(or LILLITH_MQTT__PASSWORD), not in the URL", source=source)
    return url.hostname or None, port, topic


def _stop_on_signals(loop: Any, stop: Any) -> None:
    """SIGTERM / SIGINT: a graceful stop (``stop`` is set). Repeating SIGTERM
    changes nothing (supervisors and ``timeout`` may send it to the whole
    group, or twice): the drain and final snapshot go on. A second SIGINT
    (Ctrl-C twice) forces the exit at once (code 130)."""
    import signal

    from lillith.runtime.logging import get_logger

    ints = {"n": 0}

    def on_term() -> None:
        if stop.is_set():
            get_logger("run").warning("shutdown_in_progress", signal="SIGTERM",
                                      detail="already stopping; SIGINT twice forces the exit")
        stop.set()

    def on_int() -> None:
        ints["n"] += 1
        if ints["n"] > 1:
            os._exit(130)  # Ctrl-C twice: forced exit
        stop.set()

    loop.add_signal_handler(signal.SIGTERM, on_term)
    loop.add_signal_handler(signal.SIGINT, on_int)


def _state_lock(settings: Any) -> Any:
    from lillith.state.lock import StateLock

    return StateLock(str(settings.state.dir))


def daemon_options(settings: Any) -> dict[str, Any]:
    """The daemon's keyword options read from the settings (issue 21's: metrics
    address, summary log period, Home Assistant discovery, one agent per topic)."""
    return {"metrics_addr": settings.metrics_addr,
            "summary_every_s": settings.log.summary_every_s,
            "homeassistant": settings.homeassistant}


def cmd_run(args: argparse.Namespace) -> int:
    """Run an agent on a source until stopped (Ctrl-C / SIGTERM), a frame count or a duration.

    Local sources (``synthetic``, ``replay:PATH``) run the agent on a worker
    thread with snapshots on the configured cadence; ``mqtt://`` runs the
    MQTT daemon. Both resume from the newest snapshot unless ``--fresh``.
    """
    import asyncio

    from lillith.runtime.logging import configure_logging, get_logger

    mqtt_source = args.source.startswith("mqtt://")
    if mqtt_source and args.until_step is not None:
        raise ConfigError("--until-step applies to local sources (synthetic, replay:PATH); "
                          "for mqtt:// use --max-frames or --duration")
    settings = _load(args.config, None if args.cluster is None
                     else {"cluster": {"address": args.cluster}})  # over [cluster]
    if args.state is not None:
        settings = settings.model_copy(update={"state": settings.state.model_copy(
            update={"dir": args.state})})
    if settings.cluster is not None and not args.source.startswith("mqtt://"):
        raise ConfigError("a cluster serves the MQTT daemon: use --source mqtt://...",
                          source=args.source)
    if settings.cluster is not None and any(b.agent_per_topic for b in settings.agents):
        raise ConfigError("agent_per_topic creates agents as topics appear; a cluster's "
                          "actors are placed at start: use one or the other",
                          agents=[b.name for b in settings.agents if b.agent_per_topic])
    configure_logging(settings.log.level, settings.log.format)
    if mqtt_source:
        parse_mqtt_url(args.source)  # a bad URL fails before anything else
    with _state_lock(settings):  # one process per state directory
        import torch

        from lillith.runtime.kernels import warm_kernels
        from lillith.runtime.local import open_source, run_local

        torch.set_num_threads(settings.torch_threads)
        warm_kernels(get_logger("run"))
        if mqtt_source:
            return _run_daemon(settings, args.source, args.config, fresh=args.fresh,
                               checkpoint_every=args.checkpoint_every,
                               max_frames=args.max_frames, duration=args.duration)
        src = open_source(args.source, settings.agent.seed)

        async def main() -> int:
            stop = asyncio.Event()
            _stop_on_signals(asyncio.get_running_loop(), stop)
            await run_local(settings, src, stop, max_frames=args.max_frames,
                            until_step=args.until_step, duration=args.duration,
                            fresh=args.fresh, checkpoint_every=args.checkpoint_every)
            return 0

        return asyncio.run(main())


def _run_daemon(settings: Any, source: str, config_path: Path | None = None, *,
                fresh: bool = False, checkpoint_every: int | None = None,
                max_frames: int | None = None, duration: float | None = None) -> int:
    """``lillith run --source mqtt://HOST:PORT[/FILTER]``: the asyncio daemon.

    ``max_frames`` (frames processed, all agents together) and ``duration``
    (seconds) stop it as SIGTERM does. SIGTERM / SIGINT stop intake, drain and
    publish offline status; a
    repeated SIGTERM changes nothing, a second SIGINT forces exit. SIGHUP
    reloads the configuration (file and environment) and applies what can
    change live (see ``Daemon.reload``).
    """
    import asyncio
    import signal

    from lillith.runtime.daemon import Daemon

    host, port, topic = parse_mqtt_url(source)
    mqtt = settings.mqtt.model_copy(update={"host": host or settings.mqtt.host,
                                            "port": port or settings.mqtt.port})
    bindings = list(settings.agents)
    if topic:
        bindings[0] = bindings[0].model_copy(update={"topics": [topic]})
    state = settings.state
    if checkpoint_every is not None:
        state = state.model_copy(update={"checkpoint_every_frames": checkpoint_every})
    cluster = None
    if settings.cluster is not None:  # agents in Ray actors (Ray imported from here on)
        from lillith.runtime.cluster import RayCluster

        cluster = RayCluster(settings.cluster, settings.agent, state=state, fresh=fresh,
                             client_id=mqtt.client_id, log=settings.log,
                             torch_threads=settings.torch_threads)
    daemon = Daemon(mqtt, bindings, settings.agent, metrics_port=settings.metrics_port,
                    state=state, fresh=fresh, commands=settings.commands,
                    max_frames=max_frames, cluster=cluster, **daemon_options(settings))

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()

        def on_hup() -> None:
            from lillith.runtime.config import default_config_path, load_settings
            from lillith.runtime.logging import configure_logging, get_logger

            try:
                fresh = load_settings(default_config_path(config_path), env=os.environ)
            except LillithError as e:
                get_logger("run").error("config_reload_failed", error=str(e))
                return
            configure_logging(fresh.log.level, fresh.log.format)
            daemon.reload(fresh.agents)

        _stop_on_signals(loop, stop)
        loop.add_signal_handler(signal.SIGHUP, on_hup)
        if duration is not None:
            loop.call_later(duration, stop.set)
        await daemon.run(stop)

    try:
        asyncio.run(main())
    finally:
        if cluster is not None:
            cluster.close()
    return 0


def cmd_inspect(args: argparse.Namespace) -> int:
    """List snapshots with integrity status and the newest agent's statistics
    (with ``--lineage``: also its lineage and specialization reports).

    Exit status 1 with ``--verify`` when any snapshot is broken or ``LATEST``
    is (empty, or naming a snapshot that is not there), 2 when there is no
    snapshot at all.
    """
    from lillith.runtime.inspect import inspect_store, render
    from lillith.runtime.inspect_lineage import render_lineage
    from lillith.state.snapshot import SnapshotStore

    root = str(args.state)
    stores = {"default": SnapshotStore(root)}
    if "://" not in root and (Path(root) / "agents").is_dir():
        for d in sorted((Path(root) / "agents").iterdir()):
            stores[d.name] = SnapshotStore(str(d))
    lineage = bool(args.lineage or args.per_neuron)
    reports = {name: inspect_store(st, lineage=lineage, per_neuron=bool(args.per_neuron))
               for name, st in stores.items()}
    if "default" in reports and not reports["default"]["snapshots"] and len(reports) > 1:
        del reports["default"]
    if not any(r["snapshots"] for r in reports.values()):
        print(f"lillith: error: no snapshot under {root}", file=sys.stderr)
        return 2
    if args.json:
        first = next(iter(reports.values()))
        doc = dict(first)
        if len(reports) > 1:
            doc["agents"] = reports
        print(json.dumps(doc, indent=2))
    else:
        def text(r: dict[str, Any]) -> str:
            if not lineage:
                return render(r)
            return render(r) + "\n" + render_lineage(r["lineage"], r["specialization"])

        print("\n\n".join(f"[{n}]\n{text(r)}" if len(reports) > 1 else text(r)
                          for n, r in reports.items()))
    bad = any(not s["ok"] for r in reports.values() for s in r["snapshots"]) or any(
        r.get("latest_problem") for r in reports.values())
    return 1 if args.verify and bad else 0


def build_parser() -> argparse.ArgumentParser:
    """Argument parser of every sub-command."""
    from lillith.version import __version__

    parser = argparse.ArgumentParser(prog="lillith", description=__doc__)
    parser.add_argument("--version", action="version", version=f"lillith {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run an agent on a source (default: synthetic)")
    run.add_argument("--config", type=Path, default=None, help=CONFIG_HELP)
    run.add_argument("--source", default="synthetic",
                     help="synthetic | replay:PATH | mqtt://HOST:PORT[/TOPIC_FILTER]")
    run.add_argument("--max-frames", type=int, default=None,
                     help="frames of this run (mqtt://: processed by all agents together)")
    run.add_argument("--until-step", type=int, default=None,
                     help="stop when the agent's step (resumed frames included) reaches this "
                          "(local sources only)")
    run.add_argument("--duration", type=float, default=None, help="seconds (any source)")
    run.add_argument("--state", default=None,
                     help="state directory or fsspec URL (default: [state] dir)")
    run.add_argument("--fresh", action="store_true",
                     help="start a new agent (older snapshots are kept)")
    run.add_argument("--checkpoint-every", type=int, default=None, metavar="N",
                     help="snapshot every N frames (default: [state] checkpoint_every_frames)")
    run.add_argument("--cluster", default=None, metavar="ray[://ADDRESS]",
                     help="agents as Ray actors (pip install lillith[ray]): 'ray' starts a "
                          "local Ray, ray://ADDRESS joins a cluster (default: [cluster])")
    run.set_defaults(func=cmd_run)
    b = sub.add_parser("bench", help="run a benchmark against its baseline, side by side")
    b.add_argument("name", choices=BENCHMARKS)
    b.add_argument("--json", action="store_true", help="print one JSON object")
    b.add_argument("--quick", action="store_true", help="shorter timing windows")
    b.add_argument("--data", default=None,
                   help="data directory (nab, skab, evolution; default $LILLITH_DATA/NAME)")
    b.add_argument("--out", default=None, help="output directory")
    b.set_defaults(func=cmd_bench)
    r = sub.add_parser("replay", help="stream CSV files through an agent, write per-row scores")
    r.add_argument("inputs", nargs="+", help="CSV files or directory trees (NAB layout)")
    r.add_argument("--out", required=True, help="output file, or directory for several inputs")
    r.add_argument("--config", type=Path, default=None, help=CONFIG_HELP)
    r.add_argument("--timestamp-column", default=AUTO_TIME,
                   help="the time column (ISO 8601 or epoch seconds / milliseconds); default: "
                        "auto, the first of " + ", ".join(TIME_COLUMNS) + " (any case), with a "
                        "warning when there is none")
    r.add_argument("--columns", "--value-columns", dest="columns", default=None,
                   help="comma-separated input columns; default: all but the time column and "
                        "--exclude")
    r.add_argument("--exclude", default=None,
                   help="comma-separated columns never fed as input (default: label columns "
                        f"{','.join(LABEL_COLUMNS)}); '' for none")
    r.add_argument("--quiet", action="store_true", help="no progress bar")
    r.add_argument("--state", default=None,
                   help="resume from / snapshot to this state directory (one per input file "
                        "when several)")
    r.add_argument("--fresh", action="store_true", help="with --state: start a new agent")
    r.add_argument("--checkpoint-every", type=int, default=None, metavar="N",
                   help="with --state: also snapshot every N rows")
    r.set_defaults(func=cmd_replay)
    i = sub.add_parser("inspect", help="snapshots, their integrity, and agent statistics")
    i.add_argument("state", help="state directory or fsspec URL")
    i.add_argument("--json", action="store_true", help="print one JSON object")
    i.add_argument("--verify", action="store_true",
                   help="exit non-zero when any snapshot is broken")
    i.add_argument("--lineage", action="store_true",
                   help="lineage (generations, turnover, dynasties, fitness correlation, "
                        "consistency) and specialization / redundancy of the newest snapshot")
    i.add_argument("--per-neuron", action="store_true",
                   help="with --lineage: list every neuron (implies --lineage)")
    i.set_defaults(func=cmd_inspect)
    c = sub.add_parser("config", help="check the configuration")
    csub = c.add_subparsers(dest="config_command", required=True)
    check = csub.add_parser("check", help="validate the configuration (file and environment); "
                                          "exit 2 with one line per problem")
    check.add_argument("--config", type=Path, default=None, help=CONFIG_HELP)
    check.add_argument("--show", action="store_true", help="print the effective settings (JSON)")
    check.set_defaults(func=cmd_config_check)
    add_report_parser(sub)
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
