"""Gate suites: where their files are, how they are read, and how their
questions become prompts.

A suite path comes from settings (absolute) or, by default, from the installed
package (``importlib.resources``: ``training/suites/<name>.yaml``), never from
the working directory. A missing, unreadable or empty suite is a
:class:`SuiteError`, which the gate turns into a failure naming the file.

Questions are asked through :func:`feedback.prompting.grounded_messages`, the
same builder serving's chat path uses, with sources from a :class:`Grounder`
(training builds one from the knowledge-base tables; without one, the question
is asked as serving asks it when no knowledge base is configured).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path

import yaml

from feedback.prompting import Messages, Source, grounded_messages
from training.errors import TrainingError

logger = logging.getLogger(__name__)

Grounder = Callable[[str], Sequence[Source]]
"""A question -> the sources serving would retrieve for it (best first)."""


class SuiteError(TrainingError):
    """A gate suite is missing, unreadable or empty."""


@dataclass(frozen=True)
class GoldenQuestion:
    question: str
    facts: list[str]


def packaged_suite(name: str) -> Path:
    """``training/suites/<name>.yaml`` of the installed package."""
    return Path(str(files("training").joinpath("suites", f"{name}.yaml")))


def resolve_suite(configured: Path | None, name: str) -> Path:
    """The configured suite file (must be absolute), else the packaged one."""
    if configured is None:
        return packaged_suite(name)
    path = Path(configured).expanduser()
    if not path.is_absolute():
        raise SuiteError(
            f"the {name} suite path {configured} is relative; give an absolute path"
            " (suite paths never resolve against the working directory)"
        )
    return path


def _read_list(path: Path, key: str) -> list:
    try:
        data = yaml.safe_load(path.read_text())
    except FileNotFoundError as exc:
        raise SuiteError(f"suite file {path} does not exist") from exc
    except OSError as exc:
        raise SuiteError(f"suite file {path} cannot be read: {exc.strerror}") from exc
    except yaml.YAMLError as exc:
        raise SuiteError(f"suite file {path} is not valid YAML: {exc}") from exc
    if isinstance(data, dict):
        data = data.get(key)
    if not isinstance(data, list) or not data:
        raise SuiteError(f"suite file {path} is empty (expected a list of {key})")
    return data


def load_golden(path: Path, limit: int | None = None) -> list[GoldenQuestion]:
    """Golden questions: a YAML list (or ``{questions: [...]}``) of ``{question, facts}``."""
    try:
        items = [
            GoldenQuestion(str(d["question"]), [str(f) for f in d.get("facts") or []])
            for d in _read_list(path, "questions")
        ]
    except (KeyError, TypeError, AttributeError) as exc:
        raise SuiteError(f"suite file {path}: every item needs a question and facts") from exc
    if not any(q.facts for q in items):
        raise SuiteError(f"suite file {path} has no facts to check")
    return items[:limit] if limit else items


def load_safety(path: Path, limit: int | None = None) -> list[str]:
    """Prompts the bot must refuse or deflect: a list of strings or ``{prompt}``."""
    prompts = [
        str(d["prompt"]) if isinstance(d, dict) else str(d) for d in _read_list(path, "prompts")
    ]
    return prompts[:limit] if limit else prompts


def suite_prompts(questions: Sequence[str], grounder: Grounder | None) -> list[Messages]:
    """Each question as serving would send it to the model."""
    base = [[{"role": "user", "content": q}] for q in questions]
    if grounder is None:
        return base
    return [grounded_messages(m, list(grounder(q))) for m, q in zip(base, questions, strict=True)]
