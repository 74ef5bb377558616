"""NetBox's webhook template environment: sandbox, filters, header lines, URL schemes."""

from __future__ import annotations

import pytest

from sinks.base import PermanentError, SinkConfigError
from sinks.templating import (
    TemplateEnvironment,
    header_safe,
    is_template,
    parse_headers,
    validate_url,
)


def test_header_safe_strips_every_control_character() -> None:
    """CR, LF, NUL, tab and DEL go; printable text (unicode included) stays."""
    assert header_safe("a\r\nb\x00c\td\x7fé") == "abcdé"
    assert header_safe(42) == "42"


def test_parse_headers_follows_netbox_lines() -> None:
    """'Name: Value' lines, split at the first colon, stripped; blank lines skipped."""
    assert parse_headers("X-A: 1\n\n  X-B :  two: parts  \r\nAuthorization: Bearer x") == {
        "X-A": "1", "X-B": "two: parts", "Authorization": "Bearer x"}


@pytest.mark.parametrize("text", ["no colon", ": empty name", "Bad Name: x", "X(y): z"])
def test_parse_headers_rejects_malformed_lines(text: str) -> None:
    """A line that is not a valid 'Name: Value' is a permanent error naming the line."""
    with pytest.raises(PermanentError, match="line 1"):
        parse_headers(text)


@pytest.mark.parametrize("url", ["http://h/x", "https://h:8443/x?q=1", " HTTPS://h/ "])
def test_http_and_https_urls_pass(url: str) -> None:
    """Only absolute http(s) URLs with a host are accepted."""
    assert validate_url(url) == url.strip()


@pytest.mark.parametrize("url", ["ftp://h/x", "file:///etc/passwd", "javascript:alert(1)",
                                 "//h/x", "h/x", "http:///x", "http://[::1/x"])
def test_other_urls_are_refused(url: str) -> None:
    """Any other scheme, or no host, is a permanent error."""
    with pytest.raises(PermanentError):
        validate_url(url)


def test_is_template_detects_jinja_syntax() -> None:
    """Expressions, statements and comments mark a template; plain braces do not."""
    assert all(map(is_template, ["{{ x }}", "{% if x %}{% endif %}", "{# c #}"]))
    assert not any(map(is_template, ["http://h/x", '{"a": 1}', "{ x }"]))


def test_env_filter_reads_only_allowed_names_from_the_injected_mapping() -> None:
    """fnmatch allow-list; anything else, or an unset variable, renders empty."""
    env = TemplateEnvironment(["NB_*", "EXACT"], {"NB_A": "1", "EXACT": "2", "OTHER": "3"})
    out = env.render("{{ 'NB_A'|env }}-{{ 'EXACT'|env }}-{{ 'OTHER'|env }}-{{ 'NB_B'|env }}", {})
    assert out == "1-2--"
    assert TemplateEnvironment(environ={"NB_A": "1"}).render("[{{ 'NB_A'|env }}]", {}) == "[]"


def test_render_is_netbox_like() -> None:
    """No autoescaping (bodies are JSON), default Undefined renders empty at top level."""
    env = TemplateEnvironment()
    assert env.render('{"a": "{{ v }}", "b": "{{ nope }}"}', {"v": "<&>"}) == \
        '{"a": "<&>", "b": ""}'


def test_header_templates_cannot_split_lines_through_data() -> None:
    """In header templates every expression is made header-safe; literal lines still split."""
    env = TemplateEnvironment()
    headers = env.render_headers("X-A: {{ v }}\nX-B: {{ v | upper }}", {"v": "a\r\nX-Evil: 1"})
    assert headers == {"X-A": "aX-Evil: 1", "X-B": "AX-EVIL: 1"}


def test_render_url_renders_then_validates() -> None:
    """A templated URL is rendered and then held to http(s)."""
    env = TemplateEnvironment()
    assert env.render_url("https://h/{{ k }}", {"k": "v"}) == "https://h/v"
    with pytest.raises(PermanentError, match="scheme 'gopher'"):
        env.render_url("{{ s }}://h/x", {"s": "gopher"})


def test_compile_reports_syntax_errors_with_the_key() -> None:
    """Bad syntax is a configuration error naming the key and the line."""
    match = r"sinks\.a\.body_template: invalid template \(line 2"
    with pytest.raises(SinkConfigError, match=match):
        TemplateEnvironment().compile("ok\n{{ broken", "sinks.a.body_template")


def test_templates_are_compiled_once() -> None:
    """Repeated renders reuse the compiled template."""
    env = TemplateEnvironment()
    first = env.compile("{{ x }}", "t")
    assert env.compile("{{ x }}", "t") is first
