"""``python -m edgetune.export '[task, source, out_dir, {options}]'``: the child of :func:`export_isolated`."""

from edgetune.process.child import child_main
from edgetune.export import export_model


def _export(task: str, source: str, out_dir: str, options: dict) -> str:
    return str(export_model(task, source, out_dir, **options))


if __name__ == "__main__":
    child_main(_export)
