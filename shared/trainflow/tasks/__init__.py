"""One module per task, one registry (`trainflow.tasks.registry`): ask `get_task(name)`, never compare names."""

from trainflow.tasks.definition import MetricSpec, Predictor, RecordNeeds, Reference, TaskDefinition, TestRequest
from trainflow.tasks.registry import TASK_NAMES, get_task

__all__ = ["MetricSpec", "Predictor", "RecordNeeds", "Reference", "TASK_NAMES", "TaskDefinition", "TestRequest", "get_task"]
