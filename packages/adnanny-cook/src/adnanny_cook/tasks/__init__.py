"""Task schemas shared by every AdNanny package: fields, label sets, output tags, prompts and strict parsers.

Tasks are data: TOML task files (see `adnanny_cook.tasks.schema` for the format), the built-in ones included.

    >>> from adnanny_cook.tasks import get_task
    >>> t = get_task("query_ad")
    >>> t.parse("<think>x</think><Label>Fair</Label><LocationLabel>Good</LocationLabel><AdQuality>Good</AdQuality>").labels
    {'label': 'fair', 'location_label': 'good', 'quality_label': 'good'}
    >>> t.select_labels(("label",)).format_target({"label": "good"}, None)
    '<Label>Good</Label>'
"""

from adnanny_cook.errors import (InvalidLabelError, MalformedOutputError, MissingTagError, ParseError,
                                 TaskDefinitionError)
from adnanny_cook.tasks.registry import (KEYWORD_RULES, TASK_NAMES, all_tasks, get_task, load_task,
                                         load_task_from_dir, register_task, save_task, task_names)
from adnanny_cook.tasks.schema import load_task_file, spec_from_dict, task_to_toml
from adnanny_cook.tasks.spec import CONTROL_TAGS, ParsedOutput, PromptVariant, TaskSpec, defang, render_chat

__all__ = [
    "CONTROL_TAGS",
    "InvalidLabelError",
    "KEYWORD_RULES",
    "MalformedOutputError",
    "MissingTagError",
    "ParseError",
    "ParsedOutput",
    "PromptVariant",
    "TASK_NAMES",
    "TaskDefinitionError",
    "TaskSpec",
    "all_tasks",
    "defang",
    "get_task",
    "load_task",
    "load_task_file",
    "load_task_from_dir",
    "register_task",
    "render_chat",
    "save_task",
    "spec_from_dict",
    "task_names",
    "task_to_toml",
]
