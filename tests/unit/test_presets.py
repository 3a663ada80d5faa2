"""Every preset makes a provider ``sluice check`` accepts, and says where its figures come from."""

from __future__ import annotations

import datetime
import re
from typing import Any

import pytest
import yaml

from relay.config import loads
from relay.presets import PRESETS, preset


def _provider(name: str) -> dict[str, Any]:
    values = PRESETS[name].values(region="eu-west-1", tenant="contoso.onmicrosoft.com")
    values.update({"id": f"p-{name}", "username": "user@example.com"})
    if "oauth2" in values:
        values["oauth2"]["client_id"] = "00000000-0000-0000-0000-000000000000"
    if not values["host"]:  # "any SMTP server": the operator gives the host
        values["host"] = "smtp.example.com"
    return values


@pytest.mark.parametrize("name", list(PRESETS))
def test_each_preset_is_a_valid_provider_with_a_dated_source(name: str) -> None:
    p = PRESETS[name]
    text = yaml.safe_dump({"providers": [_provider(name)]})
    provider = loads(text, env={}, secrets=False).providers[0]
    assert provider.port == p.port and provider.encryption == p.encryption
    assert provider.daily_limit == p.daily_limit
    assert re.match(r"^(https://|RFC )", p.source)
    assert datetime.date.fromisoformat(p.checked) <= datetime.date(2026, 12, 7)
    assert p.label and p.username_hint


def test_the_documented_limits_are_those_of_config_example() -> None:
    m365 = PRESETS["microsoft365"]
    assert (m365.daily_limit, m365.limit_unit, m365.limit_window, m365.rate) == (
        10000,
        "recipients",
        "rolling_24h",
        "30/m",
    )
    assert m365.oauth2 is not None and m365.oauth2.device_authorization_url
    assert (PRESETS["gmail"].daily_limit, PRESETS["gmail"].limit_window) == (2000, "rolling_24h")
    ses = PRESETS["ses"]
    assert (ses.daily_limit, ses.rate, ses.rate_unit) == (50000, "14/s", "recipients")


def test_a_template_left_unfilled_is_refused_in_words() -> None:
    with pytest.raises(ValueError, match="needs the region"):
        preset("ses").values()
    assert preset("ses").values(region="us-east-1")["host"] == "email-smtp.us-east-1.amazonaws.com"
    with pytest.raises(KeyError, match="known: smtp, sendgrid"):
        preset("postmark")
