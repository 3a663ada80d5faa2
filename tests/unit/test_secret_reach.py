"""A ``*_env`` secret comes from the start-time environment; a disabled provider needs none.

``sluice reload`` runs in the operator's shell, but the daemon reads the
file in its own process: a variable exported in that shell never reaches
it. The error says so and names what is read at each use instead. A
disabled provider sends nothing, so a secret it lacks does not stop a
start or a reload.
"""

from __future__ import annotations

import pytest

from relay.config import loads
from relay.errors import ConfigError
from relay.outbound.providers import ProviderSet
from relay.secrets import SecretError, SecretSource

VAR = "SLUICE_TEST_REACH_PW"

CONFIG = """\
admin:
  enabled: false
providers:
  - id: main
    host: smtp.example.com
    username: relay
    password: inline-pw
  - id: spare
    host: smtp2.example.com
    username: relay
    password_env: SLUICE_TEST_REACH_PW
    enabled: {enabled}
"""


def test_an_unset_variable_says_only_the_start_environment_counts() -> None:
    with pytest.raises(SecretError) as err:
        SecretSource(name="password", env=VAR).resolve({})
    message = err.value.message
    assert message.startswith(f"environment variable {VAR} is not set in the daemon's environment")
    assert "only the environment sluice was started with counts" in message
    assert "password_file" in message and "systemd credential (LoadCredential=)" in message
    assert err.value.key == "password_env"


def test_a_disabled_provider_is_not_refused_for_a_missing_secret() -> None:
    cfg = loads(CONFIG.format(enabled="false"), source="f.yaml", env={}, secrets=True)
    providers = ProviderSet.from_config(cfg, local_hostname="sluice.test")
    assert [p.id for p in providers.candidates()] == ["main"]
    # With the variable, the disabled provider's upstream has its password as before.
    cfg = loads(CONFIG.format(enabled="false"), source="f.yaml", env={VAR: "pw"}, secrets=True)
    assert cfg.provider("spare").password is not None


def test_an_enabled_provider_is_refused_for_it_with_its_line() -> None:
    with pytest.raises(ConfigError) as err:
        loads(CONFIG.format(enabled="true"), source="f.yaml", env={}, secrets=True)
    (issue,) = err.value.issues
    assert issue.startswith(
        f"f.yaml:11: providers.1.password_env: environment variable {VAR} is not set"
    )
