"""One error family for the package, so callers can catch `AdNannyCookError` and nothing else.

Messages follow the house style: what was wrong, the parameter in backticks, the value received, how to fix.
"""

from __future__ import annotations

__all__ = [
    "AdNannyCookError",
    "BadRowError",
    "ConfigError",
    "CorpusSchemaError",
    "InvalidLabelError",
    "MalformedOutputError",
    "MissingTagError",
    "ParseError",
    "TaskDefinitionError",
    "TeacherError",
    "UnknownTaskError",
]


class AdNannyCookError(Exception):
    """Base class of every error adnanny-cook raises on purpose."""


class UnknownTaskError(AdNannyCookError, KeyError):
    """A task name that is neither built in nor registered (`register_task`), or a task file that is absent."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class ParseError(AdNannyCookError, ValueError):
    """A model output that does not follow the task's output format.

    Parsers never fall back to a default label: a caller that gets this error decides what to do (count it as
    a parse failure, reject the candidate, ...). `kind` is a short machine-readable code.
    """

    kind = "parse_error"

    def __init__(self, message: str, *, task: str = "", field: str | None = None, text: str = "") -> None:
        super().__init__(message)
        self.task = task
        self.field = field
        self.text = text


class MalformedOutputError(ParseError):
    """Structure is wrong: unclosed `<think>`, text outside the tags, duplicated or unknown tags."""

    kind = "malformed"


class MissingTagError(ParseError):
    """A required output tag is absent."""

    kind = "missing_tag"


class InvalidLabelError(ParseError):
    """A tag is present but its value is not in the task's label set."""

    kind = "invalid_label"


class BadRowError(AdNannyCookError, ValueError):
    """An input row that misses fields or carries labels outside the task's label set."""

    def __init__(self, message: str, *, row: int | str | None = None, reasons: list[str] | None = None) -> None:
        super().__init__(message)
        self.row = row
        self.reasons = list(reasons or [])


class CorpusSchemaError(AdNannyCookError, ValueError):
    """A corpus file whose columns, types or values break the corpus schema."""


class ConfigError(AdNannyCookError, ValueError):
    """A cook configuration with unknown keys or invalid values (all problems reported at once)."""


class TaskDefinitionError(ConfigError):
    """A task definition (TOML task file) with unknown keys or invalid values; every problem is listed, each
    naming the file (`source`) and the dotted key."""

    def __init__(self, message: str, *, source: str = "", problems: list[str] | None = None) -> None:
        super().__init__(message)
        self.source = source
        self.problems = list(problems or [])


class TeacherError(AdNannyCookError, RuntimeError):
    """A teacher call that failed after all retries (`retryable=True`), or a non-retryable API error.

    `status` is the HTTP status of a non-retryable answer. `per_request` tells an error caused by this one
    request (400 / 413 / 422: a prompt too long for the teacher's context, a parameter the provider rejects),
    which the pipeline quarantines with its input, from one that every request would get (401, 403, 404: a
    wrong key, model or URL), which stops the run.
    """

    PER_REQUEST_STATUS = (400, 413, 422)

    def __init__(self, message: str, *, retryable: bool = False, status: int | None = None) -> None:
        super().__init__(message)
        self.retryable = retryable
        self.status = status

    @property
    def per_request(self) -> bool:
        return not self.retryable and self.status in self.PER_REQUEST_STATUS
