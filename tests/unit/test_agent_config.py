"""The agent config's client block: spare_alloc_dirs (see isolation.spares) parses, defaults, and a bad value is
an error that names the file and the setting."""
from __future__ import annotations

import pytest

from manifests.agent_config import AgentConfig
from manifests.agent_config_load import ConfigError, parse_agent_config


def test_spare_alloc_dirs_defaults_to_two_and_can_be_set_or_turned_off():
    assert AgentConfig().spare_alloc_dirs == 2
    assert parse_agent_config("client {\n}\n").spare_alloc_dirs == 2
    assert parse_agent_config("client {\n  spare_alloc_dirs = 8\n}\n").spare_alloc_dirs == 8
    assert parse_agent_config("client {\n  spare_alloc_dirs = 0\n}\n").spare_alloc_dirs == 0


@pytest.mark.parametrize("value, message", [
    ("-1", "must be between 0 and 64"),
    ("65", "must be between 0 and 64"),
    ('"2"', "must be an integer"),
    ("true", "must be an integer"),
])
def test_a_bad_spare_alloc_dirs_names_the_file_and_the_setting(value, message):
    with pytest.raises(ConfigError) as e:
        parse_agent_config(f"client {{\n  spare_alloc_dirs = {value}\n}}\n", "/etc/tasksd/config.hcl")
    text = str(e.value)
    assert "/etc/tasksd/config.hcl" in text and "client.spare_alloc_dirs" in text and message in text


def test_a_chroot_env_path_with_a_nul_byte_is_refused_naming_the_setting():
    ok = parse_agent_config('client {\n  chroot_env = { "/bin" = "/bin" }\n}\n')
    assert ok.chroot_env == (("/bin", "/bin"),)
    for src, dst in (("/bin", "/bin\\u0000x"), ("/b\\u0000in", "/bin")):
        with pytest.raises(ConfigError) as e:
            parse_agent_config(f'client {{\n  chroot_env = {{ "{src}" = "{dst}" }}\n}}\n', "/etc/tasksd/config.hcl")
        assert "/etc/tasksd/config.hcl" in str(e.value) and "client.chroot_env" in str(e.value)
