"""./manage.py bench NAME: benchmarks that start what they need and end with a RESULT line."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandParser


class Command(BaseCommand):
    help = (
        "Run a benchmark (engine, relayer, recovery, flow-a, flow-b, triggers, logs: on PostgreSQL and Redis, "
        "`make bench` sets them; "
        "soak: starts `manage.py up` on the embedded default itself)."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        sub = parser.add_subparsers(dest="name", required=True)
        engine = sub.add_parser("engine", help="Workflow engine vs a bare Celery chain.")
        engine.add_argument("--sequential", type=int, default=200, help="Runs timed one at a time.")
        engine.add_argument("--burst", type=int, default=1000, help="Runs started at once.")
        engine.add_argument("--concurrency", type=int, default=2, help="Worker processes.")
        engine.add_argument(
            "--tracing-rounds",
            type=int,
            default=3,
            help="Rounds of the tracing overhead measure (off, then on; a quarter of the runs each); 0 skips it.",
        )

        relayer = sub.add_parser("relayer", help="Relayer path vs a bare web3.py send loop on anvil.")
        relayer.add_argument(
            "--count",
            type=int,
            default=1000,
            help="Transactions per case (at 300 a case lasts half a second, and the last batch's "
            "confirmation, a fixed 0.1-0.2 s, weighs on the relayer's figure).",
        )
        relayer.add_argument("--concurrency", type=int, default=4, help="Worker processes.")
        relayer.add_argument(
            "--repeat", type=int, default=1, help="Rounds, bare loop and relayer in turn; median and worst ratio."
        )
        relayer.add_argument(
            "--profile", action="store_true", help="cProfile the relay worker's tasks and this process's requests."
        )

        flow_a = sub.add_parser("flow-a", help="Feed arrival to signed ExecutionIntent, vs a bare Celery round trip.")
        flow_a.add_argument("--feeds", type=int, default=500)
        flow_a.add_argument("--vaults", type=int, default=50)
        flow_a.add_argument(
            "--module-vaults",
            type=int,
            default=10,
            help="Safe vaults with the policy module, fed in turn with the others.",
        )
        flow_a.add_argument("--concurrency", type=int, default=2, help="Processes per worker.")
        flow_a.add_argument(
            "--rate",
            type=float,
            default=0.0,
            help="Feeds per second (paced arrivals). Default 0: each feed as soon as the last one's intent is stored.",
        )

        flow_b = sub.add_parser(
            "flow-b", help="A Safe vault's proposal: last signature to execTransaction confirmed, and its gas."
        )
        flow_b.add_argument("--proposals", type=int, default=100)
        flow_b.add_argument("--concurrency", type=int, default=2, help="Processes per worker.")

        triggers = sub.add_parser("triggers", help="INTERVAL firings at scale vs one PeriodicTask per subscription.")
        triggers.add_argument("--sizes", default="1000,10000", help="Comma-separated subscription counts.")
        triggers.add_argument(
            "--duration", type=int, default=180, help="Seconds per case (at least 180 for the issue)."
        )
        triggers.add_argument("--interval", type=int, default=30, help="Seconds between firings of one subscription.")
        triggers.add_argument("--registered", type=int, default=1_000_000, help="Registered, for the dispatch cost.")
        triggers.add_argument("--due", type=int, default=1000, help="Due among them, for the dispatch cost.")
        triggers.add_argument(
            "--prune-old",
            type=int,
            default=1_000_000,
            help="Old firings retention prunes during the retention case (0: no such case).",
        )
        triggers.add_argument(
            "--prune-subscriptions", type=int, default=1000, help="Subscriptions dispatched in the retention case."
        )
        triggers.add_argument("--prune-only", action="store_true", help="Only the retention case.")
        triggers.add_argument("--dispatch-only", action="store_true", help="Only the dispatch cost.")
        triggers.add_argument(
            "--scale",
            default="",
            help="Only the scale case: comma-separated subscription counts (e.g. 50000), CPU per process kind.",
        )
        triggers.add_argument(
            "--profile", action="store_true", help="cProfile and EXPLAIN ANALYZE of the largest dispatch cost."
        )

        logs = sub.add_parser(
            "logs", help="GET /v1/{sub_id}/logs over HTTP: one subscription with 1,000,000 firings, 100 with 10,000."
        )
        logs.add_argument("--big", type=int, default=1_000_000, help="Firings of the subscription read.")
        logs.add_argument("--others", type=int, default=100, help="Other subscriptions in the table.")
        logs.add_argument("--per-other", type=int, default=10_000, help="Firings of each other subscription.")
        logs.add_argument("--requests", type=int, default=400, help="Timed requests per case.")
        logs.add_argument("--rate", type=float, default=20.0, help="Requests per second (paced).")
        logs.add_argument("--deep", type=int, default=500_000, help="The deep offset case's offset.")
        logs.add_argument(
            "--keep", action="store_true", help="Keep the firings for the next run (reused if sizes match)."
        )
        logs.add_argument(
            "--explain", action="store_true", help="Print EXPLAIN (ANALYZE, BUFFERS) of the page queries."
        )

        recovery = sub.add_parser(
            "recovery", help="Relays while a pool process is SIGKILLed mid-batch every few seconds: time to run again."
        )
        recovery.add_argument("--count", type=int, default=300, help="Relays requested during the fault run.")
        recovery.add_argument("--seconds", type=float, default=60.0, help="Over how long they are requested.")
        recovery.add_argument("--workers", type=int, default=2, help="Celery workers.")
        recovery.add_argument("--concurrency", type=int, default=2, help="Processes per worker.")
        recovery.add_argument("--every", default="2,4", help="Seconds between kills: min,max (uniform).")
        recovery.add_argument(
            "--rpc-stall", type=float, default=15.0, help="Seconds the node's RPC hangs during the fault run (0: none)."
        )
        recovery.add_argument(
            "--rpc-stall-at", type=float, default=20.0, help="When the stall starts, seconds into the fault run."
        )

        soak = sub.add_parser(
            "soak", help="`manage.py up` on the embedded default, used as people would for N minutes."
        )
        soak.add_argument("--minutes", type=int, default=30)
        soak.add_argument(
            "--kill",
            default="",
            help="Comma-separated children to kill -9 in turn during the run (worker,beat,web,executor).",
        )
        soak.add_argument(
            "--external",
            action="store_true",
            help="Keep DATABASE_URL and CELERY_BROKER_URL from the environment instead of the embedded servers.",
        )

    def handle(self, *args: Any, name: str, **options: Any) -> None:
        if name == "engine":
            from orchestrator.devtools.benchmarks import engine

            engine.run(
                sequential=options["sequential"],
                burst=options["burst"],
                concurrency=options["concurrency"],
                out=self.stdout.write,
                tracing_rounds=options["tracing_rounds"],
            )
        elif name == "relayer":
            from orchestrator.devtools.benchmarks import relayer

            relayer.run(
                count=options["count"],
                concurrency=options["concurrency"],
                repeat=options["repeat"],
                profile=options["profile"],
                out=self.stdout.write,
            )
        elif name == "flow-a":
            from orchestrator.devtools.benchmarks import flow_a

            flow_a.run(
                feeds=options["feeds"],
                vault_count=options["vaults"],
                module_vault_count=options["module_vaults"],
                concurrency=options["concurrency"],
                rate=options["rate"],
                out=self.stdout.write,
            )
        elif name == "flow-b":
            from orchestrator.devtools.benchmarks import flow_b

            flow_b.run(proposals=options["proposals"], concurrency=options["concurrency"], out=self.stdout.write)
        elif name == "triggers":
            from orchestrator.devtools.benchmarks import triggers

            triggers.run(
                sizes=[int(n) for n in options["sizes"].split(",")],
                duration=options["duration"],
                interval=options["interval"],
                registered=options["registered"],
                due=options["due"],
                out=self.stdout.write,
                prune_old=options["prune_old"],
                prune_subscriptions=options["prune_subscriptions"],
                prune_only=options["prune_only"],
                dispatch_only=options["dispatch_only"],
                profile=options["profile"],
                scale=[int(n) for n in options["scale"].split(",") if n],
            )
        elif name == "logs":
            from orchestrator.devtools.benchmarks import logs

            logs.run(
                big=options["big"],
                others=options["others"],
                per_other=options["per_other"],
                requests=options["requests"],
                rate=options["rate"],
                deep=options["deep"],
                keep=options["keep"],
                explain_plans=options["explain"],
                out=self.stdout.write,
            )
        elif name == "recovery":
            from orchestrator.devtools.benchmarks import recovery

            low, high = (float(x) for x in options["every"].split(","))
            recovery.run(
                count=options["count"],
                seconds=options["seconds"],
                workers=options["workers"],
                concurrency=options["concurrency"],
                every=(low, high),
                rpc_stall=(options["rpc_stall_at"], options["rpc_stall"]),
                out=self.stdout.write,
            )
        elif name == "soak":
            from orchestrator.devtools.benchmarks import soak

            def out(line: str) -> None:
                self.stdout.write(line)
                self.stdout.flush()

            soak.run(
                minutes=options["minutes"],
                external=options["external"],
                kill=[n for n in options["kill"].split(",") if n],
                out=out,
            )
