"""NetBox's webhook template environment: sandboxed Jinja2 for URLs, headers and bodies.

It matches what NetBox's ``render_jinja2`` does for a Webhook — a ``SandboxedEnvironment`` with
autoescaping off and the default ``Undefined`` — plus the two filters NetBox provides there:
``header_safe`` (strips CR, LF and the other control characters that would let data smuggle
headers) and ``env`` (an environment variable, only for names matching the configured
allow-list of fnmatch patterns). Environment values come from a mapping injected by the caller
and are looked up at render time only.

One hardening beyond NetBox: in ``additional_headers`` every ``{{ expression }}`` passes through
``header_safe`` automatically, so object data can never start a header line of its own even when
a template forgets the filter (the template's own literal line breaks still separate headers).
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Mapping, Sequence
from types import MappingProxyType
from typing import Any
from urllib.parse import urlsplit

from jinja2 import BaseLoader, Template, TemplateSyntaxError
from jinja2.sandbox import SandboxedEnvironment

from sinks.base import PermanentError, SinkConfigError

__all__ = [
    "TemplateEnvironment",
    "header_safe",
    "is_template",
    "parse_headers",
    "validate_url",
]

# C0 controls and DEL are invalid in a header value; CR and LF among them would split headers.
_HEADER_UNSAFE = re.compile(r"[\x00-\x1f\x7f]")
# RFC 9110 token: the characters a header name may hold.
_HEADER_NAME = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
# The start of a Jinja2 expression, statement or comment: the text must be rendered.
_TEMPLATE_MARK = re.compile(r"\{[{%#]")
_SCHEMES = ("http", "https")


def header_safe(value: object) -> str:
    """Return ``value`` as text with CR, LF and every other control character removed."""
    return _HEADER_UNSAFE.sub("", str(value))


def is_template(text: str) -> bool:
    """Return whether ``text`` holds Jinja2 syntax (otherwise it is used literally)."""
    return _TEMPLATE_MARK.search(text) is not None


def parse_headers(text: str) -> dict[str, str]:
    """Return the headers of NetBox's ``Name: Value`` lines; raise PermanentError on a bad one."""
    # Blank lines are skipped; names and values are stripped and made header-safe.
    headers: dict[str, str] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        name, sep, value = line.partition(":")
        name = header_safe(name).strip()
        if not sep or not _HEADER_NAME.fullmatch(name):
            raise PermanentError(f"additional_headers line {number} is not 'Name: Value'")
        headers[name] = header_safe(value).strip()
    return headers


def validate_url(url: str) -> str:
    """Return ``url`` stripped if it is an absolute http or https URL; raise PermanentError."""
    url = url.strip()
    try:
        parts = urlsplit(url)
    except ValueError as err:
        raise PermanentError(f"payload_url is not a valid URL: {err}") from None
    if parts.scheme.lower() not in _SCHEMES:
        raise PermanentError(
            f"payload_url scheme {parts.scheme or '(none)'!r} is not allowed; use http or https"
        )
    if not parts.hostname:
        raise PermanentError("payload_url has no host")
    return url


class TemplateEnvironment:
    """A sandbox configured as NetBox configures it for webhooks, caching compiled templates."""

    def __init__(
        self, env_allow: Sequence[str] = (), environ: Mapping[str, str] | None = None
    ) -> None:
        self._env_allow = tuple(env_allow)
        self._environ: Mapping[str, str] = (
            environ if environ is not None else MappingProxyType({})
        )
        # NetBox's render_jinja2: a sandbox, no autoescape (bodies are JSON, not HTML), the
        # default Undefined, no loader, so templates cannot include or import anything.
        self._jinja = SandboxedEnvironment(loader=BaseLoader(), autoescape=False)
        # Header templates also pass every {{ expression }} through header_safe: data can then
        # never start a header line of its own, whether or not the template uses the filter.
        self._jinja_headers = SandboxedEnvironment(
            loader=BaseLoader(), autoescape=False, finalize=header_safe
        )
        for env in (self._jinja, self._jinja_headers):
            env.filters["header_safe"] = header_safe
            env.filters["env"] = self._env_filter
        self._compiled: dict[tuple[bool, str], Template] = {}
        self._static_headers: dict[str, dict[str, str]] = {}

    def _env_filter(self, name: object) -> str:
        """Return an allowed environment variable's value; empty for any other name."""
        key = str(name)
        if not any(fnmatch.fnmatchcase(key, pattern) for pattern in self._env_allow):
            return ""
        return self._environ.get(key, "")

    def compile(self, source: str, where: str, *, headers: bool = False) -> Template:
        """Return the compiled template (``headers``: header-safe output); raise SinkConfigError."""
        template = self._compiled.get((headers, source))
        if template is None:
            env = self._jinja_headers if headers else self._jinja
            try:
                template = env.from_string(source)
            except TemplateSyntaxError as err:
                raise SinkConfigError(
                    f"{where}: invalid template (line {err.lineno}): {err.message}"
                ) from None
            self._compiled[(headers, source)] = template
        return template

    def render(
        self, source: str, context: Mapping[str, Any], *, headers: bool = False
    ) -> str:
        """Return ``source`` rendered with ``context``; raise PermanentError if rendering fails."""
        try:
            template = self.compile(source, "template", headers=headers)
            return template.render(**context)
        except SinkConfigError as err:
            raise PermanentError(str(err)) from None
        except Exception as err:  # sandbox escapes, undefined names, bad operations, ...
            # Rendering is deterministic: whatever raised now raises on every retry, so the
            # record is dead-lettered, with the template error as the reason.
            raise PermanentError(f"template error: {type(err).__name__}: {err}") from None

    def render_headers(self, additional_headers: str, context: Mapping[str, Any]) -> dict[str, str]:
        """Return the rendered ``Name: Value`` lines as a dict; raise PermanentError."""
        if not additional_headers:
            return {}
        if not is_template(additional_headers):
            static = self._static_headers.get(additional_headers)
            if static is None:
                static = self._static_headers[additional_headers] = parse_headers(
                    additional_headers
                )
            return dict(static)
        return parse_headers(self.render(additional_headers, context, headers=True))

    def render_url(self, payload_url: str, context: Mapping[str, Any]) -> str:
        """Return the rendered, validated http(s) URL; raise PermanentError."""
        if not is_template(payload_url):
            return validate_url(payload_url)
        return validate_url(self.render(payload_url, context))
