"""Pipeline stages: one module each, a typed `run` function plus a `python -m tasks.<stage>` CLI."""
