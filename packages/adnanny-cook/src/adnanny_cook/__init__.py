"""adnanny-cook: reasoning-augmented data cooking (paper §3), task schemas, corpus schema, sample ads world.

The top level stays light (no torch, openai, polars or ray at import); heavy modules load inside functions.
"""

from adnanny_cook.__about__ import __version__
from adnanny_cook.client import TeacherClient
from adnanny_cook.config import CookConfig, CorpusConfig
from adnanny_cook.corpus import CORPUS_COLUMNS, make_row, read_corpus, write_corpus
from adnanny_cook.errors import (AdNannyCookError, BadRowError, ConfigError, CorpusSchemaError, ParseError,
                                 TeacherError)
from adnanny_cook.label_corpus import run_corpus
from adnanny_cook.pipeline import run_cook
from adnanny_cook.sample import make_sample
from adnanny_cook.tasks import TASK_NAMES, TaskSpec, get_task, load_task, load_task_from_dir, register_task

__all__ = [
    "CORPUS_COLUMNS",
    "AdNannyCookError",
    "BadRowError",
    "ConfigError",
    "CookConfig",
    "CorpusConfig",
    "CorpusSchemaError",
    "ParseError",
    "TASK_NAMES",
    "TaskSpec",
    "TeacherClient",
    "TeacherError",
    "__version__",
    "get_task",
    "load_task",
    "load_task_from_dir",
    "make_row",
    "make_sample",
    "read_corpus",
    "register_task",
    "run_cook",
    "run_corpus",
    "write_corpus",
]
