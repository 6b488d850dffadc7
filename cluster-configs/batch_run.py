"""A plain Python batch script: run a dagflow workflow on a Dask cluster that is already up.

``dagflow.run`` connects the way ``distributed.Client()`` does: to the scheduler file
given here, else to ``DASK_SCHEDULER_ADDRESS`` (set by the dask operator in a DaskJob's
job pod; export it yourself elsewhere). Without either this script refuses to start, so
a batch job never falls back to a cluster on its own node by mistake::

    DASK_SCHEDULER_ADDRESS=tcp://scheduler:8786 python batch_run.py WORKFLOW INPUT OUTPUT
    python batch_run.py WORKFLOW INPUT OUTPUT --scheduler-file scheduler.json

Exit code: dagflow's (0 all done, 1 some items failed, 2 invalid, 3 breaker open).
"""

from __future__ import annotations

import argparse
import sys

import dask.config

import dagflow
from dagflow.exceptions import ClusterStartError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("workflow", help="YAML workflow file")
    parser.add_argument("inputs", nargs="+", help="input directories, globs, manifests")
    parser.add_argument("output", help="output directory")
    parser.add_argument("--scheduler-file", default=None,
                        help="scheduler file written by 'dask scheduler --scheduler-file'")
    args = parser.parse_args(argv)
    if args.scheduler_file is None and not dask.config.get("scheduler-address", None):
        print("error: set DASK_SCHEDULER_ADDRESS or pass --scheduler-file", file=sys.stderr)
        return 2
    try:
        result = dagflow.run(args.workflow, args.inputs, args.output,
                             scheduler_file=args.scheduler_file, progress=False)
    except (dagflow.WorkflowValidationError, dagflow.ConfigError, dagflow.InputError,
            dagflow.ClusterUnreachableError, ClusterStartError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(result)
    return result.exit_code


if __name__ == "__main__":
    sys.exit(main())
