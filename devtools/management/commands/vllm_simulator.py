"""`python manage.py vllm_simulator`: run the in-repo vLLM 0.32 simulator (devtools.simulator)
as a fake upstream for the gateway, for demos, tests and benchmarks."""

import sys
from argparse import ArgumentParser
from typing import Any

from django.core.management.base import BaseCommand, CommandError

from devtools.simulator import SimulatorConfig, serve
from devtools.simulator.generation import reply_tokens


class Command(BaseCommand):
    help = (
        "Run a simulated vLLM 0.32 OpenAI-compatible server (no model needed) until "
        "SIGTERM/SIGINT. Prints one line once it accepts connections."
    )
    # Starts in a fraction of a second and touches neither the database nor the URLconf.
    requires_system_checks = ()
    requires_migrations_checks = False

    def add_arguments(self, parser: ArgumentParser) -> None:
        defaults = SimulatorConfig()
        parser.add_argument(
            "--model",
            default=defaults.model,
            help="What vLLM loads; also the served name unless --served-model-name is given.",
        )
        parser.add_argument(
            "--served-model-name", help="The name clients use (as vLLM's option of that name)."
        )
        parser.add_argument("--host", default="127.0.0.1")
        parser.add_argument("--port", type=int, default=8001)
        parser.add_argument(
            "--tokens",
            type=int,
            default=defaults.tokens,
            help="Tokens generated when the request does not force more (ignore_eos).",
        )
        parser.add_argument(
            "--token-delay",
            type=float,
            default=defaults.token_delay,
            help="Seconds before each generated token, alone in the batch.",
        )
        parser.add_argument(
            "--max-num-seqs",
            type=int,
            default=defaults.max_num_seqs,
            help="Requests generated at once (as vLLM's option); more wait first come, "
            "first served, counted by vllm:num_requests_waiting.",
        )
        parser.add_argument(
            "--batch-slowdown",
            type=float,
            default=defaults.batch_slowdown,
            help="Each token takes token_delay * (1 + F * (running - 1)); 0 (the default) "
            "keeps it at --token-delay whatever the batch.",
        )
        parser.add_argument(
            "--startup-delay",
            type=float,
            default=defaults.startup_delay,
            help="Seconds of simulated model loading before the port is bound.",
        )
        parser.add_argument("--max-model-len", type=int, default=defaults.max_model_len)
        parser.add_argument(
            "--answer-log",
            help="Tests: append each answered request's X-Request-Id to this file.",
        )
        parser.add_argument(
            "--reply",
            help="A fixed reply (e.g. Markdown), streamed a word at a time; --tokens is "
            "then its length.",
        )
        parser.add_argument(
            "--pooling",
            action="store_true",
            help="Also serve /v1/rerank and /v1/score as a pooling (cross-encoder) model; "
            "without it they are 404, as on vLLM with a generate-only model.",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        served_name = options["served_model_name"]
        reply = options["reply"]
        try:
            config = SimulatorConfig(
                model=served_name or options["model"],
                root=options["model"] if served_name else None,
                max_model_len=options["max_model_len"],
                tokens=len(reply_tokens(reply)) if reply else options["tokens"],
                token_delay=options["token_delay"],
                max_num_seqs=options["max_num_seqs"],
                batch_slowdown=options["batch_slowdown"],
                startup_delay=options["startup_delay"],
                answer_log=options["answer_log"],
                reply=reply,
                pooling=options["pooling"],
            )
        except ValueError as exc:  # an option SimulatorConfig refuses, e.g. --max-num-seqs 0
            raise CommandError(str(exc)) from exc
        host, port = options["host"], options["port"]

        def listening() -> None:
            self.stdout.write(
                f"vLLM simulator: model {config.model!r} listening on http://{host}:{port}"
            )
            self.stdout.flush()

        try:
            serve(config, host=host, port=port, on_listening=listening)
        except KeyboardInterrupt:
            sys.exit(0)
