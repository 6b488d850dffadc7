"""What to compute: nodes, workflows, conditions, the YAML form and validation.

Pure data and checks; nothing here imports Dask.
"""

from dagflow.workflow.conditions import FIELDS, Condition, ConditionError, parse_condition
from dagflow.workflow.node import Node
from dagflow.workflow.validate import survives_key_split, validate
from dagflow.workflow.workflow import Workflow

__all__ = [
    "FIELDS",
    "Condition",
    "ConditionError",
    "Node",
    "Workflow",
    "parse_condition",
    "survives_key_split",
    "validate",
]
