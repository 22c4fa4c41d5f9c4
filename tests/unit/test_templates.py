"""The template renderer (consul-template's cluster-free subset) and the validation that rejects cluster calls."""
from __future__ import annotations

import pytest

from isolation.templates import TemplateError, parse_env_file, render
from manifests.validate import check_template, template_calls
from manifests.model import Template

ENV = {"NOMAD_TASK_DIR": "/local", "NOMAD_ALLOC_INDEX": "2", "LIST": "a, b ,c", "EMPTY": ""}


@pytest.mark.parametrize("text,expected", [
    ('{{ env "NOMAD_TASK_DIR" }}/app.conf', "/local/app.conf"),
    ('{{ env "MISSING" }}|', "|"),
    ('{{ env "NOMAD_TASK_DIR" | toUpper }}', "/LOCAL"),
    ('{{ "  x  " | trimSpace }}', "x"),
    ('{{ env "LIST" | split "," | join ";" }}', "a; b ;c"),
    ('{{ range env "LIST" | split "," }}[{{ . | trimSpace }}]{{ end }}', "[a][b][c]"),
    ('{{ range $i, $v := split "," "x,y" }}{{ $i }}{{ $v }} {{ end }}', "0x 1y "),
    ('{{ "a-b-c" | replaceAll "-" "." }}', "a.b.c"),
    ('{{ env "EMPTY" | default "fallback" }}', "fallback"),
    ('{{ envOrDefault "NOPE" "d" }}', "d"),
    ('{{ if eq (env "NOMAD_ALLOC_INDEX") "2" }}two{{ else }}other{{ end }}', "two"),
    ('{{ if gt (parseInt (env "NOMAD_ALLOC_INDEX")) 5 }}big{{ else if true }}small{{ end }}', "small"),
    ('{{ $port := add 8000 (parseInt (env "NOMAD_ALLOC_INDEX")) }}port={{ $port }}', "port=8002"),
    ('{{ printf "%s-%03d" "w" 7 }}', "w-007"),
    ('a  {{- " b " -}}  c', "a b c"),
    ("x{{/* a comment */}}y", "xy"),
    ('{{ with env "NOPE" }}set{{ else }}unset{{ end }}', "unset"),
    ('{{ range loop 3 }}{{ . }}{{ end }}', "012"),
    ('{{ "hello" | toTitle }} {{ "ABC" | toLower }} {{ "x}}y" }}', "Hello abc x}}y"),
    ('{{ and 1 0 }} {{ or 0 "" "z" }} {{ not false }}', "0 z true"),
])
def test_renders(text, expected):
    assert render(text, ENV) == expected


def test_custom_delimiters():
    assert render('[[ env "NOMAD_TASK_DIR" ]] {{ raw }}', ENV, left="[[", right="]]") == "/local {{ raw }}"


@pytest.mark.parametrize("text,needle", [
    ('{{ key "service/x" }}', "needs Consul"),
    ('{{ with secret "kv/data/x" }}{{ end }}', "needs Vault"),
    ('{{ range nomadService "db" }}{{ end }}', "Nomad servers"),
    ('{{ file "/etc/shadow" }}', "reads host files as root"),
    ('{{ nosuchfunc }}', "not defined"),
    ('{{ if true }}unclosed', "without {{end}}"),
    ('{{ end }}', "unexpected"),
    ('{{ env "X"', "unclosed action"),
])
def test_rejected(text, needle):
    with pytest.raises(TemplateError, match="line 1") as e:
        render(text, ENV)
    assert needle in str(e.value)


def test_validation_rejects_cluster_functions_but_not_strings_that_name_them():
    bad = Template(destination="local/x", data='{{ key "a" }} {{ "service" }} {{ env "secret" }}')
    findings = check_template(bad)
    assert [f for f in findings if "needs Consul" in f[1]]
    assert not [f for f in findings if "'service'" in f[1] or "'secret'" in f[1]]
    assert template_calls('{{/* key */}}{{ .key }}{{ $key }}') == set()
    assert check_template(Template(destination="local/x", data='{{ env "A" | toUpper }}')) == []


def test_env_file_parsing():
    text = "# comment\n\nexport A=1\nB=\"two words\\n\"\nC='lit $x'\nD=v # trailing\n"
    assert parse_env_file(text) == {"A": "1", "B": "two words\n", "C": "lit $x", "D": "v"}
    with pytest.raises(TemplateError, match="line 1"):
        parse_env_file("not a pair")
