"""A command-line argument naming a run's or an output's location: a local directory
(checked as ``click.Path`` checks it) or a store's URL, taken as it is (the store is asked
when the command reads it)."""

from __future__ import annotations

from typing import Any

import click

__all__ = ["RunLocation"]


class RunLocation(click.ParamType):
    """``local`` for a local path, a URL (``s3://bucket/out``) as given."""

    name = "location"

    def __init__(self, local: click.Path) -> None:
        self.local = local

    def convert(self, value: Any, param: click.Parameter | None,
                ctx: click.Context | None) -> Any:
        text = str(value)
        if "://" in text and not text.lower().startswith("file://"):
            return text
        return self.local.convert(value, param, ctx)
