"""Task schemas shared by every AdNanny package: fields, label sets, output tags, prompts and strict parsers.

    >>> from adnanny_cook.tasks import get_task
    >>> t = get_task("query_ad")
    >>> t.parse("<think>x</think><Label>Fair</Label><LocationLabel>Good</LocationLabel><AdQuality>Good</AdQuality>").labels
    {'label': 'fair', 'location_label': 'good', 'quality_label': 'good'}
"""

from adnanny_cook.errors import InvalidLabelError, MalformedOutputError, MissingTagError, ParseError
from adnanny_cook.tasks.registry import KEYWORD_RULES, TASK_NAMES, all_tasks, get_task
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
    "TaskSpec",
    "all_tasks",
    "defang",
    "get_task",
    "render_chat",
]
