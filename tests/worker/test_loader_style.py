"""The handler's calling style: the code-object fast path agrees with inspect.signature."""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Any

import pytest

from fnd.worker.loader import _positional_parameters

pytestmark = pytest.mark.unit


def _by_inspect(handler: Callable[..., Any]) -> tuple[int, bool]:
    kinds = [p.kind for p in inspect.signature(handler).parameters.values()]
    positional = sum(kind in (inspect.Parameter.POSITIONAL_ONLY,
                              inspect.Parameter.POSITIONAL_OR_KEYWORD) for kind in kinds)
    return positional, inspect.Parameter.VAR_POSITIONAL in kinds


def three(context: Any, event: Any, callback: Any) -> None: ...
def two(context: Any, event: Any) -> None: ...
def defaults(context: Any, event: Any, callback: Any = None) -> None: ...
def star(context: Any, *rest: Any) -> None: ...
def positional_only(context: Any, event: Any, /, callback: Any) -> None: ...
def keyword_only(context: Any, event: Any, *, callback: Any = None) -> None: ...
async def coroutine(context: Any, event: Any) -> None: ...


@functools.wraps(three)
def wrapped(*args: Any, **kwargs: Any) -> None: ...


class Callable3:
    def __call__(self, context: Any, event: Any, callback: Any) -> None: ...

    def method(self, context: Any, event: Any) -> None: ...


@pytest.mark.parametrize("handler", [
    three, two, defaults, star, positional_only, keyword_only, coroutine, wrapped,
    lambda context, event: None, functools.partial(three, None), Callable3(),
    Callable3().method,
])
def test_fast_path_agrees_with_inspect(handler: Callable[..., Any]) -> None:
    assert _positional_parameters(handler) == _by_inspect(handler)


def test_builtin_without_signature_is_unknown() -> None:
    assert _positional_parameters(dict.fromkeys) in ((None, False), _by_inspect(dict.fromkeys))
