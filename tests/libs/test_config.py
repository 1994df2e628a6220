"""Config loading: TOML, environment overrides, and errors that name the field."""

import os

import pytest

from libs import config
from libs.config import ConfigError

TOML = """
[nats]
servers = ["nats://a:4222"]
[hsm]
timeout_ms = 1500
[[hsm_nodes]]
id = "hsm-1"
token_label = "t1"
pin_file = "PIN"
"""


def write(tmp_path, text):
    p = tmp_path / "lantau.toml"
    p.write_text(text)
    return p


def test_loads_file_and_defaults(tmp_path):
    cfg = config.load(write(tmp_path, TOML), env={})
    assert cfg.nats.servers == ["nats://a:4222"]
    assert cfg.hsm.timeout_ms == 1500
    assert cfg.policy.clock_skew_ms == 30_000
    assert cfg.hsm_node("hsm-1").token_label == "t1"


def test_env_overrides_nested_and_list_items(tmp_path):
    env = {
        "LANTAU__HSM__MAX_ATTEMPTS": "5",
        "LANTAU__NATS__SERVERS": '["nats://b:1", "nats://c:2"]',
        "LANTAU__HSM_NODES__0__REGION": "hk",
    }
    cfg = config.load(write(tmp_path, TOML), env=env)
    assert cfg.hsm.max_attempts == 5
    assert cfg.nats.servers == ["nats://b:1", "nats://c:2"]
    assert cfg.hsm_nodes[0].region == "hk"


@pytest.mark.parametrize(
    ("text", "env", "needle"),
    [
        (TOML + "\n[policy]\nclock_skew_ms = 'soon'\n", {}, "$.policy.clock_skew_ms"),
        (TOML + "\n[hsm]\n", {}, "not valid TOML"),
        (TOML + "\n[policy]\nbogus = 1\n", {}, "bogus"),
        (TOML, {"LANTAU__HSM__TIMEOUT_MS": "-3"}, "$.hsm.timeout_ms"),
        (TOML, {"LANTAU__HSM_NODES__7__REGION": "x"}, "no list item"),
    ],
)
def test_errors_name_the_field(tmp_path, text, env, needle):
    with pytest.raises(ConfigError) as e:
        config.load(write(tmp_path, text), env=env)
    assert needle in str(e.value)


def test_missing_file_is_a_clear_error(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        config.load(tmp_path / "nope.toml", env={})


def test_pin_from_file_and_env_and_never_in_errors(tmp_path):
    pin_file = tmp_path / "pin"
    pin_file.write_text("s3cret-pin\n")
    node = config.HsmNodeConfig(id="h", token_label="t", pin_file=str(pin_file))
    assert config.read_pin(node, env={}) == "s3cret-pin"
    node_env = config.HsmNodeConfig(id="h", token_label="t", pin_env="MY_PIN")
    assert config.read_pin(node_env, env={"MY_PIN": "x1"}) == "x1"
    with pytest.raises(ConfigError) as e:
        config.read_pin(node_env, env={})
    assert "MY_PIN" in str(e.value)
    os.chmod(pin_file, 0)
    if os.geteuid() != 0:  # root reads anything
        with pytest.raises(ConfigError) as e2:
            config.read_pin(node, env={})
        assert "s3cret" not in str(e2.value)


def test_dump_round_trips(tmp_path):
    cfg = config.load(write(tmp_path, TOML), env={})
    again = config.load(write(tmp_path, config.dump(cfg)), env={})
    assert again == cfg
