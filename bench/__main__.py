"""Benchmarks and the docs rendered from their results, one subcommand each.

    python -m bench COMMAND [flags]     # serve, peers, models, grpc, train, train-variants,
                                        # train-loop, log-cost, decode, shm, profile, replicas,
                                        # screenshot, drift, calibration, feedback,
                                        # grpc-models, inline-hop, asgi-cost, pinned-pair,
                                        # alternate, classify-cost, held-bodies,
                                        # hostile-heads, large-load, thread-cpu,
                                        # render
    python -m bench COMMAND --help      # its flags

Every benchmark writes its figures to ``docs/results/<name>.json`` (unless ``--no-write``) and then
re-renders the docs from those files; ``render`` does only the latter.
"""

from __future__ import annotations

import argparse
import importlib

# subcommand -> (module under bench/, one line of help)
COMMANDS = {
    "serve": ("serve", "the real server under load from another process, layouts side by side"),
    "peers": ("peers", "this service beside PyTriton, the lecture recipe beside Keras, one run"),
    "models": ("models", "the model table: every model's card figures and onnxruntime speed"),
    "grpc": ("grpc_h2load", "gRPC against REST binary with one C client (h2load) for both"),
    "train": ("train", "training throughput of the lecture recipe's own step, onnxruntime too"),
    "train-variants": ("train_variants", "training: threads against DDP processes, bf16, Adam"),
    "train-loop": ("train_loop", "training: the package's epoch loop against the bare step"),
    "log-cost": ("log_cost", "the prediction log's cost: record per answer, writer per row"),
    "decode": ("decode", "what decoding one v2 infer request costs, step by step"),
    "shm": ("shm", "system shared memory against the binary extension, 256-image batches"),
    "profile": ("profile_serve", "where a request's time goes under load (probes, py-spy)"),
    "replicas": ("replicas", "1 and 2 api processes behind nginx against WORKERS=1 and 2"),
    "screenshot": ("screenshot", "the README's screenshot of the explorer page"),
    "drift": ("drift", "the monitor's drift score on clean and shifted test streams"),
    "calibration": ("calibration", "each served model's temperature, ECE and coverage (cards)"),
    "feedback": ("feedback", "JPEG traffic and its labels through the real service; scoring"),
    "grpc-models": ("grpc_models", "grpcio's server models per call against REST binary (h2load)"),
    "inline-hop": ("inline_hop", "the batcher's thread hop alone, in process (INLINE_RUN_MAX_US)"),
    "asgi-cost": ("asgi_cost", "what each ASGI layer adds to one request, in process, no sockets"),
    "pinned-pair": ("pinned_pair", "builds of the service in turn, pinned: 1-client p50, 64 req/s"),
    "alternate": ("alternating", "builds served at once, one client alternating requests: gaps"),
    "classify-cost": ("classify_cost", "the codecs' cost with and without classification"),
    "held-bodies": ("held_bodies", "the server's memory while many large bodies are held"),
    "hostile-heads": ("hostile_heads", "oversized request heads: the server's memory and loop"),
    "large-load": ("large_load", "a large model published while serving: the loop and memory"),
    "thread-cpu": ("thread_cpu", "builds pinned at 64 clients: each thread's CPU per request"),
    "render": ("render", "rewrite the docs' figures from docs/results/*.json (--check: test)"),
}


def main(argv: list[str] | None = None) -> None:
    """Pick the subcommand, then parse its flags with its own module's parser; a module is
    imported only when it runs, so ``render`` needs neither torch nor onnxruntime."""
    top = argparse.ArgumentParser(
        prog="python -m bench",
        description=__doc__,
        epilog="commands:\n" + "\n".join(f"  {n:15} {h}" for n, (_, h) in COMMANDS.items()),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    top.add_argument("command", choices=COMMANDS, metavar="COMMAND")
    top.add_argument("flags", nargs=argparse.REMAINDER, help="the command's flags")
    chosen = top.parse_args(argv)
    module = importlib.import_module(f"bench.{COMMANDS[chosen.command][0]}")
    sub = argparse.ArgumentParser(
        prog=f"python -m bench {chosen.command}",
        description=module.__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    module.add_arguments(sub)
    module.main(sub.parse_args(chosen.flags))


if __name__ == "__main__":
    main()
