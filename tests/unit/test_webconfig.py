"""--web-config: node_exporter's format, read whole or refused in one line
naming the file; a file others can write is not obeyed."""

from __future__ import annotations

import os

import pytest

from procnetmon.output import webconfig

pytest.importorskip("yaml", reason="--web-config needs PyYAML (python3-yaml)")
HASH = "$2y$10$u/Xsk4CkNe/q7gGGggrPbe4pZgwGrtgbvhRD9H8q.V56ppb7uczNu"


def config(tmp_path, text: str, mode: int = 0o600) -> str:
    path = tmp_path / "web.yml"
    path.write_text(text)
    os.chmod(path, mode)
    return str(path)


def refusal(path: str) -> str:
    with pytest.raises(webconfig.WebConfigError) as e:
        webconfig.load(path)
    message = str(e.value)
    assert "\n" not in message
    return message


def test_an_empty_file_is_plain_http_without_auth(tmp_path):
    web = webconfig.load(config(tmp_path, ""))
    assert web.tls is None and not web.users


def test_basic_auth_users_are_read_and_checked(tmp_path):
    web = webconfig.load(config(tmp_path, f"basic_auth_users:\n  prometheus: '{HASH}'\n"))
    assert web.check("prometheus", "procnetmon-no-such-user")
    assert not web.check("prometheus", "wrong")
    assert not web.check("other", "procnetmon-no-such-user")
    assert not web.check("prometheus", "nul\0inside")


@pytest.mark.parametrize("text, says", [
    ("http_server_config:\n  http2: false\n", "http_server_config is not supported"),
    ("tls_server_config:\n  cert_file: a.crt\n", "tls_server_config.key_file is missing"),
    ("tls_server_config:\n  cert_file: a.crt\n  key_file: a.key\n  cipher_suites: [x]\n",
     "tls_server_config.cipher_suites is not supported"),
    ("tls_server_config:\n  cert_file: a.crt\n  key_file: a.key\n  min_version: SSL3\n", "min_version 'SSL3'"),
    ("tls_server_config:\n  cert_file: a.crt\n  key_file: a.key\n  client_auth_type: RequireAndVerifyClientCert\n",
     "needs client_ca_file"),
    ("tls_server_config:\n  cert_file: nosuch.crt\n  key_file: nosuch.key\n", "cannot load the TLS certificate"),
    ("basic_auth_users:\n  alice: plaintext\n", "basic_auth_users.alice is not a bcrypt hash"),
    ("basic_auth_users: [alice]\n", "basic_auth_users must be a mapping"),
    ("- a list\n", "expected a mapping"),
    ("basic_auth_users:\n  alice: 'x\n", "line"),
])
def test_what_cannot_be_used_is_refused_in_one_line(tmp_path, text, says):
    path = config(tmp_path, text)
    message = refusal(path)
    assert path in message and says in message, message


def test_a_file_others_can_write_is_refused(tmp_path):
    path = config(tmp_path, "", mode=0o666)
    assert "writable by group or others" in refusal(path)


def test_a_missing_file_is_refused(tmp_path):
    assert "cannot read the web config" in refusal(str(tmp_path / "nosuch.yml"))


def test_a_directory_is_refused(tmp_path):
    directory = tmp_path / "dir"
    directory.mkdir(mode=0o700)
    assert "not a regular file" in refusal(str(directory))
