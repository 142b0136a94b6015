# -*- test-case-name: tests.test_config -*-
"""
Value kinds for settings: each turns a command-line string or a value read
from a config file into a typed value, or raises L{ValueError} with a reason a
person can act on.

Command-line text is parsed (C{"5"} is a number); file values must already
have the right type (C{"5"} where a number is due is refused).
"""

from __future__ import annotations

import math
import reprlib
from typing import Any, Callable, Optional, Sequence, Tuple

import attrs


def isFinite(value: Any) -> bool:
    """
    Whether a number is finite and within a float's range (an L{int} may
    not be: C{math.isfinite} raises L{OverflowError} for it).
    """
    try:
        return math.isfinite(value)
    except OverflowError:
        return False


#: Shows values in error messages.  A value read from a file may be lists
#: of aliases of lists, a few bytes of YAML standing for billions of items:
#: only a few items and levels of it are shown.
_shown = reprlib.Repr()
_shown.maxlevel = 2
_shown.maxlist = _shown.maxtuple = _shown.maxdict = _shown.maxset = 6
_shown.maxstring = _shown.maxother = 200


def shown(value: Any) -> str:
    """
    C{repr(value)}, cut short for a large or deep value.
    """
    return _shown.repr(value)


class Kind:
    """
    How one setting's value is read.
    """

    @property
    def expected(self) -> str:
        """
        Shown in error messages: "must be {expected}".
        """
        return "a value"

    def fromText(self, text: str) -> Any:
        return self.fromValue(text)

    def fromValue(self, value: Any) -> Any:
        raise NotImplementedError(type(self).__name__)


@attrs.frozen
class Number(Kind):
    """
    A number within bounds; C{integer} refuses fractions.  C{maximum}, if
    given, is the largest value that makes sense, so that a typo of a few
    digits is refused rather than taken.
    """

    minimum: float = 0
    integer: bool = False
    exclusiveMinimum: bool = False
    maximum: Optional[float] = None

    @property
    def expected(self) -> str:
        what = "an integer" if self.integer else "a number"
        bound = ">" if self.exclusiveMinimum else ">="
        return f"{what} {bound} {self.minimum:g}"

    def fromText(self, text: str) -> Any:
        try:
            value: float = int(text) if self.integer else float(text)
        except ValueError:
            raise ValueError(f"must be {self.expected}, not {text!r}") from None
        return self.fromValue(value)

    def fromValue(self, value: Any) -> Any:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"must be {self.expected}, not {shown(value)}")
        if not isFinite(value):
            raise ValueError(f"must be {self.expected}, not {shown(value)}")
        if self.integer and not float(value).is_integer():
            raise ValueError(f"must be {self.expected}, not {shown(value)}")
        if value < self.minimum or (self.exclusiveMinimum and value == self.minimum):
            raise ValueError(f"must be {self.expected}, not {shown(value)}")
        if self.maximum is not None and value > self.maximum:
            limit = self.maximum
            shownLimit = f"{int(limit):,}" if float(limit).is_integer() else f"{limit:g}"
            raise ValueError(f"must be at most {shownLimit}, not {shown(value)}")
        return int(value) if self.integer else float(value)


@attrs.frozen
class Text(Kind):
    """
    A string, checked by C{check} (which raises L{ValueError} or returns the
    normalised string).
    """

    expected: str = "a string"
    check: Callable[[str], str] = str

    def fromValue(self, value: Any) -> Any:
        if not isinstance(value, str) or not value:
            raise ValueError(f"must be {self.expected}, not {shown(value)}")
        return self.check(value)


@attrs.frozen
class Endpoint(Text):
    """
    A Twisted endpoint string; a config file may give a bare port as a
    number.
    """

    expected: str = "a Twisted endpoint string"

    def fromValue(self, value: Any) -> Any:
        if isinstance(value, int) and not isinstance(value, bool):
            value = str(value)
        return super().fromValue(value)


@attrs.frozen
class Choice(Kind):
    """
    One of a few words.
    """

    choices: Tuple[str, ...] = ()

    @property
    def expected(self) -> str:
        return "one of " + ", ".join(self.choices)

    def fromValue(self, value: Any) -> Any:
        if value not in self.choices:
            raise ValueError(f"must be {self.expected}, not {shown(value)}")
        return value


@attrs.frozen
class ListOf(Kind):
    """
    A list of items of another kind; a flag given again adds an item.
    """

    item: Kind = Text()

    @property
    def expected(self) -> str:
        return f"a list of {self.item.expected}"

    def fromText(self, text: str) -> Any:
        return (self.item.fromText(text),)

    def fromValue(self, value: Any) -> Any:
        if isinstance(value, str) or not isinstance(value, Sequence):
            raise ValueError(f"must be {self.expected}, not {shown(value)}")
        items = []
        for index, each in enumerate(value):
            try:
                items.append(self.item.fromValue(each))
            except ValueError as e:
                raise ValueError(f"item {index}: {e}") from None
        return tuple(items)


@attrs.frozen
class Setting:
    """
    One setting: a long flag and the config-file key of the same name.
    """

    name: str
    kind: Kind
    help: str
    default: Any = None
    short: Optional[str] = None

    @property
    def attribute(self) -> str:
        """
        The name of the L{SidecarConfig} attribute that holds this setting.
        """
        return self.name.replace("-", "_")

    @property
    def repeatable(self) -> bool:
        return isinstance(self.kind, ListOf)
