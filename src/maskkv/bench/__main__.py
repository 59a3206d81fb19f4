"""``python -m maskkv.bench [OPTIONS]``: the ``maskkv bench`` command without the rest of the CLI."""

from .cli import bench

if __name__ == "__main__":
    bench(prog_name="maskkv bench")
