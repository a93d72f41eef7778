"""The ``parley`` command: run the service, the demo, a terminal chat, contact import and
erasure, flow validation, an SMSC simulator."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import os
import shutil
import signal
import sys
import tempfile
from collections.abc import Callable, Coroutine
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from engine import __version__
from engine.app.settings import load_config
from engine.core import logs
from engine.core.config import ROLES, Config, parse_roles
from engine.core.errors import ConfigError, FlowErrors, ParleyError

if TYPE_CHECKING:
    from engine.app.runtime import Runtime

#: engine.core.metrics.MULTIPROC_ENV, spelled out: importing engine.core.metrics here would be too early.
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"


CONFIG_HELP = "YAML config file (default: $PARLEY_CONFIG, else ./parley.yaml if present)"


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="parley", description="Conversational SMS engine.")
    p.add_argument("--version", action="version", version=f"parley {__version__}")
    p.add_argument("--config", help=CONFIG_HELP)
    # ``--config`` after a command (``parley run --config parley.yaml``, as the docs write it)
    # is the same option: each command's parser has it too, with no default of its own, so
    # the top-level value stands unless the command line repeats it later (the later one wins).
    config = argparse.ArgumentParser(add_help=False)
    config.add_argument("--config", default=argparse.SUPPRESS, help=CONFIG_HELP)
    sub = _Commands(p.add_subparsers(dest="command", required=True, metavar="COMMAND"), config)

    run = sub.add_parser("run", help="run the engine: HTTP API, worker(s), senders (or some of them)")
    run.add_argument(
        "--role",
        metavar="ROLE",
        help="what this process runs: all (the default: engine.role), or api, worker, sender, "
        "or several joined by commas (docs/operations.md#roles)",
    )
    run.add_argument(
        "--workers",
        type=int,
        metavar="N",
        help="worker processes to start (default: engine.workers, 1 = inside this process)",
    )
    run.add_argument(
        "--api-processes",
        type=int,
        metavar="N",
        help="API processes sharing the HTTP port (SO_REUSEPORT; default: engine.api_processes, "
        "1 = this process only)",
    )
    run.add_argument(
        "--port",
        type=int,
        metavar="PORT",
        help="HTTP port (default: http.port): the API, or /healthz and /metrics without the api role",
    )
    worker = sub.add_parser(
        "worker", help="run one worker process against a shared Redis (what `run --workers N` starts)"
    )
    worker.add_argument("--index", type=int, default=0, help="this worker's number, for its name in logs")
    worker.add_argument(
        "--senders",
        action="store_true",
        help="also run the send pipeline on the lanes of the shards it leases (what `run --workers N` "
        "asks of its workers when it has the sender role)",
    )
    api = sub.add_parser(
        "api",
        help="run one API process on a port shared with others (what `run --api-processes N` starts)",
    )
    api.add_argument("--index", type=int, default=0, help="this process's number, for its name in logs")
    sub.add_parser("demo", help="run a complete NPS conversation over the real path and print it")

    chat = sub.add_parser(
        "chat",
        help="talk to a flow from the terminal (reads stdin, works piped)",
        description="Talk to a flow from the terminal: each line on stdin is the customer's text; "
        "'<' lines are the engine's answers, '~' lines what a turn did to the contact (set, tag) "
        "and the CRM calls it made, '--' how it ended. A line '/timer' (or '/fire') makes the "
        "contact's next pending timer (a wait's timeout, a reminder, the expiry) due now. Exits 2 "
        "when the flow needs contact fields the contact lacks (give them with --field), 1 when "
        "the contact cannot be started (opted out, suppressed).",
    )
    chat.add_argument("flow", help="flow name, e.g. nps")
    chat.add_argument("--contact", required=True, help="the customer's number, e.g. +447700900123")
    chat.add_argument(
        "--field",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a contact field (repeatable)",
    )
    chat.add_argument("--language", help="the contact's language, e.g. en")

    cts = sub.add_parser("contacts", help="bulk import and erasure of contacts (against redis.url)")
    csub = _Commands(cts.add_subparsers(dest="contacts_command", required=True, metavar="ACTION"), config)
    imp = csub.add_parser("import", help="import contacts from a JSONL or CSV file (docs/api.md)")
    imp.add_argument("file", help="the file: .jsonl/.ndjson (one object a line) or .csv (a header row)")
    imp.add_argument("--format", choices=["jsonl", "csv"], help="default: from the file's extension")
    imp.add_argument("--errors", metavar="FILE", help="write every refused row here (JSONL)")
    forget = csub.add_parser("forget", help="erase a contact; its consent history is kept hashed")
    forget.add_argument("number", help="the contact's number")
    csub.add_parser(
        "reindex",
        help="put every contact in the listing index (once after upgrading to a release with "
        "GET /v1/contacts; safe to run again, and beside a running service)",
    )

    sub.add_parser(
        "migrate",
        help="convert an earlier release's Redis data to this release's key layout, in place "
        "(every Parley process stopped; docs/operations.md#upgrading)",
    )

    flows = sub.add_parser("flows", help="work with flow files")
    fsub = _Commands(flows.add_subparsers(dest="flows_command", required=True, metavar="ACTION"), config)
    validate = fsub.add_parser("validate", help="check flow files (default: the configured flows dir)")
    validate.add_argument("paths", nargs="*", help="flow files or directories")
    graph = fsub.add_parser("graph", help="draw a flow as a text tree (or --mermaid)")
    graph.add_argument("flow", help="a flow name from the flows dir, or a path to a flow file")
    graph.add_argument("--mermaid", action="store_true", help="print a Mermaid flowchart instead")

    console = sub.add_parser("console", help="the browser console (docs/console.md)")
    consub = _Commands(
        console.add_subparsers(dest="console_command", required=True, metavar="ACTION"), config
    )
    consub.add_parser(
        "hash-password",
        help="print an argon2 hash of a password for console.users (reads it from stdin, or asks)",
    )

    smpp = sub.add_parser("smpp", help="the SMPP server ESMEs bind into (docs/smpp.md)")
    smppsub = _Commands(smpp.add_subparsers(dest="smpp_command", required=True, metavar="ACTION"), config)
    smppsub.add_parser(
        "hash-password",
        help="print an argon2 hash of a password for smpp_server.accounts (reads it from stdin, or asks)",
    )

    sim = sub.add_parser("smsc-sim", help="run a simulated SMPP 3.4 SMSC (demos, tests, load tests)")
    sim.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    sim.add_argument("--port", type=int, default=2775, help="SMPP port (default 2775; 0 = a free port)")
    sim.add_argument(
        "--mode",
        default="happy",
        help="happy, slow, throttling, erroring, disconnecting or no-response (default happy)",
    )
    sim.add_argument("--system-id", default="parley", help="the system_id ESMEs bind as")
    sim.add_argument("--password", default="secret", help="its password")
    sim.add_argument("--latency", type=float, default=0.0, help="seconds before each submit_sm_resp")
    sim.add_argument("--dlr-delay", type=float, default=0.05, help="seconds before a delivery receipt")
    sim.add_argument("--max-rate", type=int, default=100, help="throttling: submits accepted a second")
    sim.add_argument(
        "--control-port", type=int, default=0, help="HTTP control endpoint port (default 0: off)"
    )
    sim.add_argument("--duration", type=float, default=0.0, help="seconds to run (default 0: forever)")
    sim.add_argument("--tls-cert", default="", help="serve SMPP over TLS with this PEM certificate")
    sim.add_argument("--tls-key", default="", help="its PEM key (default: in --tls-cert)")
    sim.add_argument("--tls-client-ca", default="", help="require client certificates signed by this CA")
    return p


class _Commands:
    """A subparsers action whose every parser also takes the shared ``--config`` option."""

    def __init__(self, action: Any, config: argparse.ArgumentParser) -> None:
        self.action, self.config = action, config

    def add_parser(self, name: str, **kwargs: Any) -> argparse.ArgumentParser:
        parser: argparse.ArgumentParser = self.action.add_parser(name, parents=[self.config], **kwargs)
        return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command in ("console", "smpp"):  # needs no configuration (it makes a piece of one)
        return _hash_password()
    try:
        cfg = load_config(args.config)
        logs.setup(cfg.log.level, cfg.log.format)
        if args.command == "flows" and args.flows_command == "graph":
            return _graph(cfg, args.flow, args.mermaid)
        if args.command == "flows":
            return _validate(cfg, args.paths)
        if args.command == "run":
            cfg, roles = _run_options(cfg, args)
            many = ("worker" in roles and cfg.engine.workers > 1) or (
                "api" in roles and cfg.engine.api_processes > 1
            )
            if many and not os.environ.get(MULTIPROC_ENV):
                # Before anything imports prometheus_client: every process then writes its
                # figures to this directory and /metrics adds them up (engine.core.metrics).
                metrics_dir = tempfile.mkdtemp(prefix="parley-metrics-")
                os.environ[MULTIPROC_ENV] = metrics_dir
                try:
                    return _run_async(_serve(cfg, args.config, roles))
                finally:
                    shutil.rmtree(metrics_dir, ignore_errors=True)
            return _run_async(_serve(cfg, args.config, roles))
        if args.command == "worker":
            if not cfg.redis.url:
                raise ConfigError("redis.url", "a worker process needs a shared Redis (set redis.url)")
            return _run_async(_work(cfg, args.index, args.senders))
        if args.command == "api":
            if not cfg.redis.url:
                raise ConfigError("redis.url", "an API process needs a shared Redis (set redis.url)")
            return _run_async(_api(cfg, args.index))
        if args.command == "demo":
            from engine.app.demo import run_demo

            return _run_async(run_demo(cfg))
        if args.command == "chat":
            from engine.app.chat import run_chat

            fields = dict(_split_field(f) for f in args.field)
            return _run_async(run_chat(cfg, args.flow, args.contact, fields, args.language))
        if args.command == "contacts":
            from engine.app import contacts_cli

            if args.contacts_command == "import":
                return contacts_cli.run_import(cfg, args.file, args.format, args.errors, _run_async)
            if args.contacts_command == "reindex":
                return _run_async(contacts_cli.run_reindex(cfg))
            return _run_async(contacts_cli.run_forget(cfg, args.number))
        if args.command == "migrate":
            from engine.app.migrate import run_migrate

            return _run_async(run_migrate(cfg))
        if args.command == "smsc-sim":
            return _run_async(_smsc_sim(args))
    except ConfigError as exc:
        print(f"parley: {exc}", file=sys.stderr)
        return 2
    except FlowErrors as exc:
        print(f"parley: invalid flows ({len(exc.errors)} problem(s)):", file=sys.stderr)
        for e in exc.errors:
            print(f"  {e}", file=sys.stderr)
        return 2
    except ParleyError as exc:
        print(f"parley: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return 0


def _hash_password() -> int:
    """``parley console hash-password`` and ``parley smpp hash-password``: the password from stdin
    (its first line) when piped, else asked for twice without echo; prints its argon2 hash."""
    import getpass

    from engine.core.passwords import hash_password

    if sys.stdin.isatty():
        password = getpass.getpass("Password: ")
        if getpass.getpass("Again: ") != password:
            print("parley: the two passwords differ", file=sys.stderr)
            return 2
    else:
        password = sys.stdin.readline().rstrip("\r\n")
    if not password:
        print("parley: an empty password", file=sys.stderr)
        return 2
    print(hash_password(password))
    return 0


def _run_options(cfg: Config, args: argparse.Namespace) -> tuple[Config, frozenset[str]]:
    """``parley run``'s options over the configuration, checked; and the roles it runs."""
    engine = cfg.engine
    for flag, key, value in (("--workers", "workers", args.workers), ("--api-processes", "api_processes",
                                                                      args.api_processes)):  # fmt: skip
        if value is not None:
            if not 1 <= value <= 64:
                raise ConfigError(flag, f"must be 1..64, got {value}")
            engine = replace(engine, **{key: value})
    if args.role is not None:
        engine = replace(engine, role=args.role)
    roles = parse_roles(engine.role, "--role" if args.role is not None else "engine.role")
    # A count given on the command line for a role this process does not run is a mistake; one
    # in a configuration file shared by every host is not (it counts where that role runs).
    if args.workers is not None and args.workers > 1 and "worker" not in roles:
        raise ConfigError("--workers", f"starts worker processes, but this process's role is {engine.role}")
    if args.api_processes is not None and args.api_processes > 1 and "api" not in roles:
        raise ConfigError(
            "--api-processes", f"starts API processes, but this process's role is {engine.role}"
        )
    if roles != set(ROLES) and not cfg.redis.url:
        raise ConfigError(
            "redis.url", f"role {engine.role} shares work with other processes through Redis: set redis.url"
        )
    if args.port is not None and not 0 <= args.port <= 65535:
        raise ConfigError("--port", f"must be 0..65535, got {args.port}")
    http = cfg.http if args.port is None else replace(cfg.http, port=args.port)
    return replace(cfg, engine=engine, http=http), roles


def _split_field(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise ConfigError("--field", f"expected KEY=VALUE, got {text!r}")
    return key.strip(), value


def _run_async(coro: Coroutine[Any, Any, int]) -> int:
    factory: Callable[[], asyncio.AbstractEventLoop]
    try:
        import uvloop

        factory = uvloop.new_event_loop
    except ImportError:  # pragma: no cover - uvloop is a dependency except on Windows
        factory = asyncio.new_event_loop
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(coro)


#: Collector thresholds once running: a turn allocates many short-lived objects, so collecting
#: the youngest generation every 700 allocations (Python's default) runs it several times a turn.
GC_THRESHOLDS = (20_000, 20, 100)


def _settle_gc() -> None:
    """Once started: what exists now (modules, flows, config, pools) lives for the whole run, so
    it is frozen out of the collector's view (a full collection under load then walks only what
    the turns made: it paused a process 140-170 ms before), and young collections run less often."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


def _stop_on_signals() -> asyncio.Event:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    return stop


async def _work(cfg: Config, index: int, senders: bool = False) -> int:
    from engine.app.runtime import Runtime
    from engine.app.supervisor import report_ready

    stop = _stop_on_signals()
    async with Runtime(
        cfg, http=False, senders=senders, caller=False, worker_index=index, smpp_server=False
    ) as rt:
        assert rt.worker is not None
        _settle_gc()
        _reload_on_hup(rt)
        report_ready(rt.worker.me)
        print(f"parley worker {rt.worker.me} running; SIGTERM stops it gracefully", file=sys.stderr)
        await stop.wait()
    return 0


def _reload_on_hup(rt: Runtime, forward: Callable[[], None] | None = None) -> None:
    """SIGHUP reloads this process's flows (``forward`` passes it on to its child processes)."""
    reloads: set[asyncio.Task[None]] = set()

    async def reload() -> None:
        try:
            await rt.reload_flows()
        except FlowErrors as exc:
            print(f"parley: reload refused, flows unchanged ({len(exc.errors)} problem(s)):", file=sys.stderr)
            for e in exc.errors:
                print(f"  {e}", file=sys.stderr)

    def on_hup() -> None:
        if forward is not None:
            forward()
        task = asyncio.create_task(reload())
        reloads.add(task)
        task.add_done_callback(reloads.discard)

    with contextlib.suppress(NotImplementedError):
        asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, on_hup)


async def _api(cfg: Config, index: int) -> int:
    from engine.app.runtime import Runtime
    from engine.app.supervisor import report_ready

    stop = _stop_on_signals()
    async with Runtime(
        cfg, worker=False, senders=False, caller=False, reuse_port=True, smpp_server=False
    ) as rt:
        _settle_gc()
        _reload_on_hup(rt)
        report_ready(f"api-{index}-{os.getpid()}")
        print(
            f"parley API process {index} (pid {os.getpid()}) listening on http://{cfg.http.host}:{rt.http_port}",
            file=sys.stderr,
        )
        await stop.wait()
    return 0


async def _serve(cfg: Config, config_path: str | None, roles: frozenset[str] = frozenset(ROLES)) -> int:
    from engine.app.runtime import Runtime

    stop = _stop_on_signals()
    async with Runtime(
        cfg, worker_processes=True, config_path=config_path, api="api" in roles,
        worker="worker" in roles, senders="sender" in roles, smpp_server="smpp-server" in roles,
    ) as rt:  # fmt: skip

        def forward() -> None:  # the processes this one started reload too
            for sup in (rt.supervisor, rt.api_supervisor):
                if sup is not None:
                    sup.signal(signal.SIGHUP)

        _reload_on_hup(rt, forward)
        _settle_gc()
        workers = cfg.engine.workers if rt.supervisor else "in process" if rt.worker else "none"
        serves = "" if "api" in roles else " (/healthz and /metrics)"
        api = f"; API processes: {cfg.engine.api_processes}" if rt.api_supervisor else ""
        print(
            f"parley {__version__} listening on http://{cfg.http.host}:{rt.http_port}{serves} "
            f"(role: {'all' if roles == set(ROLES) else ','.join(rt.roles)}; "
            f"redis: {'embedded, ' + cfg.redis.embedded_dir if rt.embedded else cfg.redis.url}; "
            f"workers: {workers}{api}); Ctrl-C or SIGTERM stops it gracefully",
            file=sys.stderr,
        )
        await stop.wait()
        print("parley: stopping (finishing in-flight turns and sends)", file=sys.stderr)
    return 0


async def _smsc_sim(args: argparse.Namespace) -> int:
    from gateways.simulators.smsc import MODES, BindEvent, Message, SimulatedSmsc, SmscBehaviour
    from gateways.smpp.pdu import status_name

    if args.mode not in MODES:
        raise ConfigError("--mode", f"must be one of {', '.join(MODES)}, got {args.mode!r}")
    behaviour = SmscBehaviour(
        credentials={args.system_id: args.password},
        mode=args.mode,
        latency=args.latency,
        dlr_delay=args.dlr_delay,
        max_rate=args.max_rate,
    )
    tls = None
    if args.tls_cert:
        import ssl

        tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        tls.load_cert_chain(args.tls_cert, args.tls_key or None)
        if args.tls_client_ca:
            tls.verify_mode = ssl.CERT_REQUIRED
            tls.load_verify_locations(cafile=args.tls_client_ca)
    elif args.tls_key or args.tls_client_ca:
        raise ConfigError("--tls-cert", "is needed with --tls-key and --tls-client-ca")
    smsc: SimulatedSmsc

    def on_bind(e: BindEvent) -> None:
        print(f"bind {e.mode} as {e.system_id!r}: {status_name(e.status)}", flush=True)

    def on_message(m: Message) -> None:
        ids, answered = set(m.ids), []
        for s in reversed(smsc.received):  # the parts are among the latest submits
            if s.message_id in ids and s.answered_at is not None:
                answered.append(s.answered_at - s.at)
                if len(answered) == len(ids):
                    break
        parts = f"{len(m.ids)} parts, " if len(m.ids) > 1 else ""
        ms = 1000 * max(answered, default=0.0)
        print(f"message to {m.dest} ({parts}answered in {ms:.1f} ms): {m.text!r}", flush=True)

    stop = _stop_on_signals()
    smsc = SimulatedSmsc(
        host=args.host,
        port=args.port,
        behaviour=behaviour,
        control_port=args.control_port or None,
        on_bind=on_bind,
        on_message=on_message,
        tls=tls,
    )
    async with smsc:
        control = f"; control http://{smsc.host}:{smsc.control_port}" if smsc.control_port else ""
        scheme = "smpps" if tls else "smpp"
        print(
            f"parley smsc-sim listening on {scheme}://{smsc.host}:{smsc.port} (mode {args.mode}, "
            f"system_id {args.system_id!r}{control}); Ctrl-C or SIGTERM stops it",
            file=sys.stderr,
            flush=True,
        )
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), args.duration or None)
        stats = smsc.stats()
    print("stats: " + " ".join(f"{k}={v}" for k, v in stats.items()), flush=True)
    return 0


def _graph(cfg: Config, name: str, as_mermaid: bool) -> int:
    from engine.flows import graph
    from engine.flows.limits import Limits
    from engine.flows.loader import load_flow
    from engine.flows.registry import FlowRegistry

    path = Path(name)
    limits = Limits.of(cfg.engine)
    if path.suffix in (".yaml", ".yml"):
        flow = load_flow(path, limits=limits)
    else:
        registry = FlowRegistry.from_dir(cfg.engine.flows_dir, limits)
        found = registry.get(name)
        if found is None:
            raise ParleyError(
                f"no flow {name!r} in {cfg.engine.flows_dir} (loaded: {', '.join(sorted(registry.flows))})"
            )
        flow = found
    print(graph.mermaid(flow) if as_mermaid else graph.text(flow))
    return 0


def _validate(cfg: Config, paths: list[str]) -> int:
    from engine.flows.campaigns import load_dir
    from engine.flows.limits import Limits
    from engine.flows.loader import load_flow
    from engine.flows.registry import FlowRegistry

    targets = [Path(p) for p in paths] or [Path(cfg.engine.flows_dir)]
    limits = Limits.of(cfg.engine)
    problems = 0
    count = campaigns = 0
    for target in targets:
        try:
            if target.is_dir():
                registry = FlowRegistry.from_dir(target, limits)
                count += len(registry.flows)
                campaigns += len(load_dir(target / "campaigns", set(registry.flows)))
            else:
                load_flow(target, limits=limits)
                count += 1
        except FlowErrors as exc:
            problems += len(exc.errors)
            for e in exc.errors:
                print(e, file=sys.stderr)
    if problems:  # exit 2, as for invalid flows at start-up
        print(f"{problems} problem(s) found", file=sys.stderr)
        return 2
    print(f"{count} flow(s) valid" + (f", {campaigns} campaign(s) valid" if campaigns else ""))
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
