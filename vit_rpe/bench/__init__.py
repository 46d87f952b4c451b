"""Benchmarks as commands: ``python -m vit_rpe.bench {attention,model,data}``.

Each subcommand is a module ``vit_rpe.bench.<name>`` with a ``main(argv)``; results are recorded
in docs/benchmarks.md.
"""
