"""node/config.py: defaults, the TOML file, typed overrides, and refusals by name."""

from __future__ import annotations

from pathlib import Path

import pytest

from node.config import (
    DEFAULT_PORT,
    Capacity,
    Config,
    ConfigError,
    DhtConfig,
    load_config,
    parse_hostport,
    render_config,
)
from node.errors import UserError
from overlay import ROLES


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.toml"
    path.write_text(text, encoding="utf-8")
    return path


def refused(tmp_path: Path, text: str) -> str:
    """Load ``text`` as config.toml, expect a ConfigError, return its message."""
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert "\n" not in message
    assert str(path) in message  # the admin is told which file to fix
    return message


# -- defaults and round trip ---------------------------------------------------


def test_defaults_load_without_a_file() -> None:
    cfg = load_config(None)
    assert cfg == Config()
    assert cfg.listen == f"127.0.0.1:{DEFAULT_PORT}"
    assert cfg.listen_address == ("127.0.0.1", DEFAULT_PORT)
    assert cfg.bootstrap == () and cfg.bootstrap_addresses == []
    assert cfg.roles == ROLES
    assert cfg.log_level == "info"
    assert cfg.dht == DhtConfig() and cfg.capacity == Capacity()


def test_a_missing_file_means_defaults(tmp_path: Path) -> None:
    assert load_config(tmp_path / "absent.toml") == Config()


def test_an_empty_file_means_defaults(tmp_path: Path) -> None:
    assert load_config(write(tmp_path, "")) == Config()


def test_config_error_is_a_user_error() -> None:
    assert issubclass(ConfigError, UserError)


def test_rendered_defaults_load_back(tmp_path: Path) -> None:
    assert load_config(write(tmp_path, render_config(Config()))) == Config()


def test_rendered_config_round_trips(tmp_path: Path) -> None:
    cfg = Config(
        listen="[::1]:7411",
        bootstrap=("192.0.2.10:7400", "[2001:db8::1]:7400"),
        advertise=("198.51.100.7:7411",),
        roles=("queue", "compute"),
        log_level="debug",
        refresh_interval=2.5,
        record_refresh=30.0,
        record_ttl=90,
        capacity=Capacity(cores=3, memory_mb=2048, disk_gb=0),
        dht=DhtConfig(ksize=8, alpha=2),
    )
    text = render_config(cfg)
    assert text.startswith("#")
    loaded = load_config(write(tmp_path, text))
    assert loaded == cfg
    assert render_config(loaded) == text
    assert loaded.listen_address == ("::1", 7411)
    assert loaded.bootstrap_addresses == [("192.0.2.10", 7400), ("2001:db8::1", 7400)]


def test_file_values_override_defaults(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, 'listen = "10.0.0.1:1"\n[dht]\nalpha = 5\n'))
    assert cfg.listen == "10.0.0.1:1"
    assert cfg.dht == DhtConfig(ksize=20, alpha=5)  # the rest of the table keeps defaults
    assert cfg.log_level == "info"


def test_integers_are_accepted_for_float_keys(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, "refresh_interval = 3\n"))
    assert cfg.refresh_interval == 3.0 and isinstance(cfg.refresh_interval, float)


# -- unknown keys ---------------------------------------------------------------


@pytest.mark.parametrize(("text", "name"), [
    ('lisen = "127.0.0.1:1"\n', "'lisen'"),
    ("[capacity]\ncpus = 4\n", "'capacity.cpus'"),
    ("[dht]\nk = 4\n", "'dht.k'"),
    ("[peers]\nx = 1\n", "'peers'"),
])
def test_unknown_keys_are_refused_by_name(tmp_path: Path, text: str, name: str) -> None:
    message = refused(tmp_path, text)
    assert "unknown config key" in message
    assert name in message


def test_unknown_key_message_lists_the_known_keys(tmp_path: Path) -> None:
    message = refused(tmp_path, "[capacity]\ncpus = 4\n")
    assert "capacity.cores" in message


# -- wrong types and values -------------------------------------------------------


@pytest.mark.parametrize(("text", "needle"), [
    ("listen = 5\n", "'listen'"),
    ('bootstrap = "x"\n', "'bootstrap'"),
    ("bootstrap = [1]\n", "'bootstrap'"),
    ('roles = "queue"\n', "'roles'"),
    ('roles = ["nope"]\n', "'nope'"),
    ('roles = ["queue", "queue"]\n', "repeat"),
    ('log_level = "loud"\n', "log_level"),
    ("log_level = 1\n", "'log_level'"),
    ('refresh_interval = "fast"\n', "'refresh_interval'"),
    ("refresh_interval = nan\n", "'refresh_interval'"),
    ("record_refresh = inf\n", "'record_refresh'"),
    ("record_ttl = 1.5\n", "'record_ttl'"),
    ("record_ttl = true\n", "'record_ttl'"),
    ("refresh_interval = 0\n", "refresh_interval"),
    ("refresh_interval = -1.0\n", "'refresh_interval'"),
    ("record_ttl = -5\n", "'record_ttl'"),
    ("record_ttl = 30\n", "record_ttl"),  # not longer than record_refresh (60)
    ("capacity = 4\n", "'capacity'"),
    ("[capacity]\ncores = -1\n", "'capacity.cores'"),
    ("[capacity]\nmemory_mb = -1024\n", "'capacity.memory_mb'"),
    ('[capacity]\ndisk_gb = "10"\n', "'capacity.disk_gb'"),
    ("[capacity]\ncores = true\n", "'capacity.cores'"),
    ("[dht]\nksize = 0\n", "dht.ksize"),
    ("[dht]\nksize = 65\n", "dht.ksize"),
    ("[dht]\nksize = -3\n", "'dht.ksize'"),
    ("[dht]\nalpha = 0\n", "dht.alpha"),
    ("[dht]\nksize = 4\nalpha = 5\n", "dht.alpha"),
    ("[replication]\nwindow = -3\n", "'replication.window'"),
    ("[replication]\nwindow = 1\n", "replication.window must be 2-1000"),
    ("[replication]\nbucket_seconds = 0\n", "replication.bucket_seconds"),
    ("[replication]\nalpha = 1.5\n", "replication.alpha"),
    ("[replication]\nbeta = 0\n", "replication.beta"),
    ("[replication]\nreads_per_replica = 0\n", "replication.reads_per_replica"),
    ("[replication]\nsite_add_reads = 0\n", "replication.site_add_reads"),
    ("[replication]\nsite_keep_reads = 2.0\n", "replication.site_keep_reads"),  # not below add
    ("[replication]\nsite_keep_reads = 0\n", "replication.site_keep_reads"),
    ("[replication]\nmax_load = 2.0\n", "replication.max_load"),
    ("[replication]\nheadroom = 1.0\n", "replication.headroom"),
    ("[replication]\nmax_adds = 0\n", "replication.max_adds"),
    ("[replication]\ninterval = 0\n", "replication.interval"),
    ("[replication]\ngrace = 30.0\n", "storage.announce_interval"),
    ("[replication]\nsurprise = 1\n", "surprise"),
])
def test_wrong_types_and_values_are_refused(tmp_path: Path, text: str, needle: str) -> None:
    assert needle in refused(tmp_path, text)


# -- HOST:PORT ------------------------------------------------------------------


BAD_ADDRESSES = [
    "foo:1",          # not an IP address
    "localhost:7400",
    "1.2.3.4:99999",  # port out of range
    "1.2.3.4:-1",
    "1.2.3.4:x",
    "1.2.3.4:",
    ":7400",
    "",
    "1.2.3.4:7400:1",
    " 1.2.3.4:7400",
    "::1:7400",          # IPv6 without brackets is ambiguous
    "[::1:7400",         # unbalanced brackets
    "::1]:7400",
    "[1.2.3.4]:7400",    # brackets are for IPv6
    "[::1]x7400",
    "1.2.3.4:\u0664\u0660",  # non-ASCII digits
]


@pytest.mark.parametrize("bad", [*BAD_ADDRESSES, "1.2.3.4", "[::1]"])
def test_malformed_listen_is_refused(tmp_path: Path, bad: str) -> None:
    assert "listen" in refused(tmp_path, f'listen = "{bad}"\n')


@pytest.mark.parametrize("bad", BAD_ADDRESSES)
def test_malformed_bootstrap_is_refused(tmp_path: Path, bad: str) -> None:
    assert "bootstrap" in refused(tmp_path, f'bootstrap = ["192.0.2.1:7400", "{bad}"]\n')


@pytest.mark.parametrize("bad", ["foo:1", "1.2.3.4:99999", "::1:7400"])
def test_malformed_advertise_is_refused(tmp_path: Path, bad: str) -> None:
    assert "advertise" in refused(tmp_path, f'advertise = ["{bad}"]\n')


@pytest.mark.parametrize(("text", "address"), [
    ("127.0.0.1:0", ("127.0.0.1", 0)),
    ("0.0.0.0:7400", ("0.0.0.0", 7400)),
    ("192.0.2.10:65535", ("192.0.2.10", 65535)),
    ("[::1]:7400", ("::1", 7400)),
    ("[::]:1", ("::", 1)),
    ("[2001:db8::1]:7401", ("2001:db8::1", 7401)),
])
def test_well_formed_addresses_are_accepted(tmp_path: Path, text: str,
                                            address: tuple[str, int]) -> None:
    cfg = load_config(write(tmp_path, f'listen = "{text}"\nbootstrap = ["{text}"]\n'))
    assert cfg.listen_address == address
    assert cfg.bootstrap_addresses == [address]


@pytest.mark.parametrize(("text", "address"), [
    ("192.0.2.10", ("192.0.2.10", DEFAULT_PORT)),
    ("[2001:db8::1]", ("2001:db8::1", DEFAULT_PORT)),
])
def test_bootstrap_without_a_port_uses_the_default_port(tmp_path: Path, text: str,
                                                        address: tuple[str, int]) -> None:
    cfg = load_config(write(tmp_path, f'bootstrap = ["{text}"]\n'))
    assert cfg.bootstrap_addresses == [address]


def test_parse_hostport_refuses_non_strings() -> None:
    with pytest.raises(ConfigError, match="must be a string"):
        parse_hostport(7400, "listen")  # type: ignore[arg-type]


# -- overrides ----------------------------------------------------------------------


def test_typed_overrides_win_over_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, 'listen = "10.0.0.1:1"\nbootstrap = ["10.0.0.2:2"]\n'
                           'log_level = "warning"\n')
    cfg = load_config(path, {"listen": "127.0.0.1:0", "bootstrap": ["192.0.2.1:7400"],
                             "log_level": "debug", "roles": ("queue",)})
    assert cfg.listen == "127.0.0.1:0"
    assert cfg.bootstrap == ("192.0.2.1:7400",)  # a list from argparse becomes a tuple
    assert cfg.log_level == "debug"
    assert cfg.roles == ("queue",)


def test_none_overrides_do_not_win(tmp_path: Path) -> None:
    path = write(tmp_path, 'listen = "10.0.0.1:1"\nbootstrap = ["10.0.0.2:2"]\n'
                           'log_level = "warning"\n')
    cfg = load_config(path, {"listen": None, "bootstrap": None, "log_level": None,
                             "roles": None})
    assert cfg.listen == "10.0.0.1:1"
    assert cfg.bootstrap == ("10.0.0.2:2",)
    assert cfg.log_level == "warning"
    assert cfg.roles == ROLES


def test_overrides_apply_without_a_file() -> None:
    cfg = load_config(None, {"listen": "127.0.0.1:0", "bootstrap": None})
    assert cfg.listen_address == ("127.0.0.1", 0)
    assert cfg.bootstrap == ()


def test_an_override_fixes_a_bad_file_value(tmp_path: Path) -> None:
    path = write(tmp_path, 'listen = "nohost"\n')
    assert load_config(path, {"listen": "127.0.0.1:0"}).listen == "127.0.0.1:0"


def test_a_bad_override_is_refused_and_not_blamed_on_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, render_config(Config()))
    with pytest.raises(ConfigError) as info:
        load_config(path, {"listen": "1.2.3.4:99999"})
    message = str(info.value)
    assert "'1.2.3.4:99999'" in message
    assert str(path) not in message
    assert "command line" in message


def test_an_unknown_override_key_is_refused() -> None:
    with pytest.raises(ConfigError, match="'lisen'"):
        load_config(None, {"lisen": "127.0.0.1:0"})


# -- unreadable files -----------------------------------------------------------------


@pytest.mark.parametrize("text", [
    "listen = \n",
    'listen = "127.0.0.1:1\n',
    "[dht\nksize = 3\n",
    'listen = "a"\nlisten = "b"\n',
])
def test_invalid_toml_names_the_file(tmp_path: Path, text: str) -> None:
    message = refused(tmp_path, text)
    assert "not valid TOML" in message


def test_non_utf8_file_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_bytes(b'listen = "\xff\xfe"\n')
    with pytest.raises(ConfigError, match="not valid TOML") as info:
        load_config(path)
    assert str(path) in str(info.value)


def test_a_directory_as_config_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read config file") as info:
        load_config(tmp_path)
    assert str(tmp_path) in str(info.value)
