"""Settings: one DEFAULTS dict, layered under an env file and the environment.

Every key starts with ``CLINICA_``.  The file is the one named by ``CLINICA_ENV_FILE``,
else ``./.env``, else ``/etc/clinica-asterisk/.env``.  Values are validated once into a
frozen :class:`Settings`; an invalid value raises :class:`ConfigError` naming the key and
what is allowed, so a typo stops start-up instead of silently changing behaviour.
"""

from __future__ import annotations

import os
import re
import _thread  # threading.Lock is _thread.allocate_lock; threading costs every hook start-up
# (urllib.parse and ipaddress are imported where they are used: they cost a hook more than
# this whole module, and a hook whose settings come validated from the cache beside the env
# file needs neither.)

from .values import Value

TYPE_CHECKING = False  # typing.TYPE_CHECKING, without importing typing (type checkers read it so)
if TYPE_CHECKING:
    from typing import Any, Dict, Mapping, Optional, Tuple

SYSTEM_ENV_FILE = "/etc/clinica-asterisk/.env"
# Patterns, compiled by re (and kept in its cache) at their first use: a hook whose
# settings come from the cache beside the env file never needs them.
# C0 controls and DEL, but tab, CR and LF (which an env file is made of).
_CONTROL = "[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]"
# In a value, which is one line, none at all.
_CONTROL_IN_VALUE = "[\x00-\x1f\x7f]"
_SURROGATE = "[\ud800-\udfff]"

DEFAULTS: Dict[str, str] = {
    # Push events (PBX -> CRM)
    "CLINICA_CRM_PUSH_URL": "http://127.0.0.1:8580/api/Binotel/Push",
    "CLINICA_PUSH_FORMAT": "form",
    "CLINICA_COMPANY_ID": "",
    "CLINICA_TRANSFER_PAIR": "yes",
    "CLINICA_PUSH_EXTRA_KEYS": "yes",
    "CLINICA_HOOK_DEADLINE_MS": "2000",
    "CLINICA_ANSWER_DEADLINE_MS": "250",
    "CLINICA_DELIVER_TIMEOUT_MS": "10000",
    "CLINICA_DELIVER_MAX_BACKOFF_S": "300",
    # Numbers
    "CLINICA_NUMBER_FORMAT": "national",
    "CLINICA_COUNTRY_CODE": "380",
    "CLINICA_TRUNK_PREFIX": "0",
    "CLINICA_TRUNK_NUMBERS": "",
    # Storage and logs
    "CLINICA_DATA_DIR": "./clinica-data",
    "CLINICA_STORE_URL": "",
    "CLINICA_PBX_ID": "",
    "CLINICA_LOG_LEVEL": "INFO",
    "CLINICA_LOG_FILE": "",
    # FastAGI server
    "CLINICA_FASTAGI_BIND": "127.0.0.1:4574",
    "CLINICA_FASTAGI_POOL": "256",
    "CLINICA_FASTAGI_ENGINE": "loop",
    "CLINICA_FASTAGI_BACKLOG": "512",
    "CLINICA_FASTAGI_SESSION_TIMEOUT_MS": "5000",
    "CLINICA_FASTAGI_ALLOW": "",
    # CRM-facing API
    "CLINICA_API_BIND": "127.0.0.1:8574",
    "CLINICA_API_PUBLIC_URL": "",
    "CLINICA_API_KEYS": "",
    "CLINICA_API_MAX_BODY": "65536",
    "CLINICA_RECORDINGS_DIR": "/var/spool/asterisk/monitor",
    "CLINICA_RECORD_LINK_TTL_S": "900",
    "CLINICA_DIRECTORY_FILE": "",
    # FreePBX's own database: users, User Management, inbound routes
    "CLINICA_FREEPBX_DB": "auto",
    "CLINICA_FREEPBX_CONF": "/etc/freepbx.conf",
    "CLINICA_FREEPBX_REFRESH_S": "60",
    # AMI (click-to-call)
    "CLINICA_AMI_HOST": "127.0.0.1",
    "CLINICA_AMI_PORT": "5038",
    "CLINICA_AMI_USER": "",
    "CLINICA_AMI_SECRET": "",
    "CLINICA_AMI_TIMEOUT_MS": "5000",
    "CLINICA_ORIGINATE_CONTEXT": "from-internal",
    "CLINICA_ORIGINATE_CHANNEL_CONTEXT": "originate-skipvm",
    "CLINICA_ORIGINATE_TIMEOUT_S": "30",
    # Calls that ended without a hang-up hook (reconcile.py)
    "CLINICA_RECONCILE_S": "60",
    "CLINICA_ONLINE_MAX_S": "14400",
}

# Never written to a log or shown by `doctor`.  (CLINICA_FREEPBX_DB and CLINICA_STORE_URL
# hold a password when they are mysql:// URLs.)
SECRET_KEYS = frozenset({"CLINICA_API_KEYS", "CLINICA_AMI_SECRET", "CLINICA_FREEPBX_DB", "CLINICA_STORE_URL"})
FREEPBX_DB_URL_SCHEMES = ("mysql", "mariadb")


class ConfigError(ValueError):
    """A setting has a value that is not allowed; the message names the key."""


# --- the shared store's URL (CLINICA_STORE_URL) ------------------------------------------

STORE_URL_SCHEMES = ("mysql", "mariadb")
SSL_OPTIONS = ("ssl_ca", "ssl_cert", "ssl_key", "ssl_verify_cert", "ssl_verify_identity")
URL_OPTIONS = (*SSL_OPTIONS, "unix_socket")


class StoreUrlError(ValueError):
    """``CLINICA_STORE_URL`` is not one this program can use; the text never quotes it."""


class StoreUrl(Value):
    """Where the shared store is, parsed from its URL.  Pure."""

    # Fields, in order, and their types:
    # user: str; password: str; host: str; port: int; database: str; options: Tuple[Tuple[str, str], ...]
    __slots__ = ("user", "password", "host", "port", "database", "options")
    _defaults = {"options": ()}
    _hidden = frozenset({"password"})  # secrets: not in repr

    @property
    def unix_socket(self) -> str:
        return dict(self.options).get("unix_socket", "")

    @property
    def location(self) -> str:
        """The URL without its password: what the store is known by in this program (in
        logs, ``doctor``, and to the processes that record an attempt's outcome)."""
        from urllib.parse import quote

        query = "&".join(f"{k}={quote(v, safe='/')}" for k, v in self.options)
        return (f"mysql://{quote(self.user, safe='')}@{self.host}:{self.port}/{self.database}"
                + (f"?{query}" if query else ""))

    @property
    def shown(self) -> str:
        """For people: engine, host and database; no user, password or options."""
        where = f"socket {self.unix_socket}" if self.unix_socket else f"{self.host}:{self.port}"
        tls = ", TLS" if any(k.startswith("ssl_") for k, _ in self.options) else ""
        return f"MariaDB {where}, database {self.database}{tls}"

    def connect_args(self) -> Dict[str, Any]:
        options = dict(self.options)
        args: Dict[str, Any] = {"user": self.user, "password": self.password, "database": self.database}
        if options.get("unix_socket"):
            args["unix_socket"] = options["unix_socket"]
        else:
            args.update(host=self.host, port=self.port)
        # PyMySQL's ssl dict, never its ssl_verify_* arguments: given those, it drops the
        # dict's CA.  With a CA the server's certificate is checked, and that it names the
        # URL's host, unless the URL says otherwise.
        ssl: Dict[str, Any] = {}
        for key in ("ssl_ca", "ssl_cert", "ssl_key"):
            if options.get(key):
                ssl[key[4:]] = options[key]
        if ssl or any(key.startswith("ssl_verify") for key in options):
            checked = "ca" in ssl
            ssl["verify_mode"] = _yes(options.get("ssl_verify_cert"), checked)
            ssl["check_hostname"] = ssl["verify_mode"] and _yes(options.get("ssl_verify_identity"), checked)
            args["ssl"] = ssl
        return args


def _yes(value: Optional[str], default: bool) -> bool:
    return default if value is None else value in ("yes", "true", "1")


def is_mysql_url(location: str) -> bool:
    return location.split(":", 1)[0].lower() in STORE_URL_SCHEMES and "://" in location


def parse_store_url(url: str) -> StoreUrl:
    """``mysql://user:password@host[:port]/database[?options]``.  Pure; the error names
    what is wrong, never the URL (it holds a password)."""
    from urllib.parse import parse_qsl, unquote, urlsplit

    try:
        parts = urlsplit(url.strip())
        port = parts.port
    except ValueError:
        raise StoreUrlError("the port is not a number from 1 to 65535 (or a bracket is not closed)") from None
    if parts.scheme.lower() not in STORE_URL_SCHEMES:
        raise StoreUrlError("it must start with mysql:// (or mariadb://)")
    if not parts.hostname or not parts.username:
        raise StoreUrlError("it must name a user and a host: mysql://user:password@host[:port]/database")
    database = unquote(parts.path.strip("/"))
    if not database or "/" in database or not all(ch.isalnum() or ch in "_$" for ch in database):
        raise StoreUrlError("it must name one database (letters, digits, _): …/database")
    if parts.fragment or port == 0:
        raise StoreUrlError("no #fragment, and a port from 1 to 65535")
    options = []
    for key, value in parse_qsl(parts.query, keep_blank_values=True):
        if key not in URL_OPTIONS:
            raise StoreUrlError(f"unknown option {key!r} (known: {', '.join(URL_OPTIONS)})")
        if key.startswith("ssl_verify") and value not in ("yes", "no", "true", "false", "1", "0"):
            raise StoreUrlError(f"{key} must be yes or no")
        options.append((key, value))
    return StoreUrl(unquote(parts.username), unquote(parts.password or ""), parts.hostname, port or 3306,
                    database, tuple(options))


# Passwords of the shared stores this process was configured with, by location (the URL
# without its password): a store opened by its location finds its password here.
_STORE_PASSWORDS: Dict[str, str] = {}
_STORE_PASSWORDS_GUARD = _thread.allocate_lock()


def remember_store_password(target: "StoreUrl") -> None:
    with _STORE_PASSWORDS_GUARD:
        _STORE_PASSWORDS[target.location] = target.password


def known_store_password(location: str) -> Optional[str]:
    with _STORE_PASSWORDS_GUARD:
        return _STORE_PASSWORDS.get(location)


class Settings(Value):
    """Every setting, validated (:func:`build_settings`)."""

    # Fields, in order, and their types:
    # crm_push_url: str; push_format: str; company_id: str; transfer_pair: bool; push_extra_keys: bool;
    # hook_deadline_s: float; answer_deadline_s: float; deliver_timeout_s: float;
    # deliver_max_backoff_s: float; number_format: str; country_code: str; trunk_prefix: str;
    # trunk_numbers: Mapping[str, str]; data_dir: str; store_url: str; pbx_id: str; log_level: str;
    # log_file: str; fastagi_bind: Tuple[str, int]; fastagi_pool: int; fastagi_backlog: int;
    # fastagi_session_timeout_s: float; fastagi_allow: Tuple[object, ...]; fastagi_engine: str;
    # api_bind: Tuple[str, int]; api_public_url: str; api_keys: Mapping[str, str]; api_max_body: int;
    # recordings_dir: str; record_link_ttl_s: int; directory_file: str; freepbx_db: str; freepbx_conf: str;
    # freepbx_refresh_s: int; ami_host: str; ami_port: int; ami_user: str; ami_secret: str;
    # ami_timeout_s: float; originate_context: str; originate_channel_context: str; originate_timeout_s: int;
    # reconcile_s: int; online_max_s: int; source: str
    __slots__ = ("crm_push_url", "push_format", "company_id", "transfer_pair", "push_extra_keys",
                 "hook_deadline_s", "answer_deadline_s", "deliver_timeout_s", "deliver_max_backoff_s",
                 "number_format", "country_code", "trunk_prefix", "trunk_numbers", "data_dir", "store_url",
                 "pbx_id", "log_level", "log_file", "fastagi_bind", "fastagi_pool", "fastagi_backlog",
                 "fastagi_session_timeout_s", "fastagi_allow", "fastagi_engine", "api_bind",
                 "api_public_url", "api_keys", "api_max_body", "recordings_dir", "record_link_ttl_s",
                 "directory_file", "freepbx_db", "freepbx_conf", "freepbx_refresh_s", "ami_host", "ami_port",
                 "ami_user", "ami_secret", "ami_timeout_s", "originate_context", "originate_channel_context",
                 "originate_timeout_s", "reconcile_s", "online_max_s", "source")
    _defaults = {"source": ""}
    _hidden = frozenset({"store_url", "api_keys", "freepbx_db", "ami_secret"})  # secrets: not in repr

    def deadline_for(self, stage: str) -> float:
        """How long a hook of ``stage`` may hold its call, in seconds.  The answer hook runs
        while the two parties already hear nothing of each other (Dial's U() routine runs
        before the bridge): its own, short deadline; what it could not send in that time
        is sent right after, without the call waiting."""
        return self.answer_deadline_s if stage == "answer" else self.hook_deadline_s

    @property
    def db_path(self) -> str:
        """The SQLite call store in the data directory (without CLINICA_STORE_URL)."""
        return os.path.join(self.data_dir, "clinica.sqlite3")

    @property
    def store_location(self) -> str:
        """Where the call store is, as :class:`~clinica_asterisk.store.database.Store`
        opens it: the SQLite file, or the shared store's URL *without* its password (the
        store takes it from this configuration), so that the location can be logged and
        handed to another process."""
        if not self.store_url:
            return self.db_path
        target = parse_store_url(self.store_url)
        remember_store_password(target)  # the store opened by this location finds it
        return target.location

    @property
    def spool_path(self) -> Optional[str]:
        """With a shared store: the local SQLite spool of the hooks that cannot reach it."""
        return os.path.join(self.data_dir, "spool.sqlite3") if self.store_url else None


def find_env_file(environ: Mapping[str, str]) -> Optional[str]:
    named = environ.get("CLINICA_ENV_FILE")
    if named:
        if not os.path.isfile(named):
            raise ConfigError(f"CLINICA_ENV_FILE: no such file: {named}")
        return named
    for candidate in (os.path.abspath(".env"), SYSTEM_ENV_FILE):
        if os.path.isfile(candidate):
            return candidate
    return None


# An env file is a few dozen lines; anything much larger is not one.
MAX_ENV_FILE_BYTES = 1 << 20


def env_file_text(path: str, raw: bytes) -> str:
    """The text of an env file, or :class:`ConfigError` naming the file and the line: it
    must be UTF-8 (a byte order mark is allowed) without control characters.  Pure."""
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw[:exc.start].count(b"\n") + 1
        raise ConfigError(f"{path}: line {line} is not UTF-8 text (byte 0x{raw[exc.start]:02x}); "
                          "save the file as UTF-8") from None
    bad = re.search(_CONTROL, text)
    if bad:
        line = text[:bad.start()].count("\n") + 1
        raise ConfigError(f"{path}: line {line} holds a control character (U+{ord(bad.group()):04X})")
    return text


def read_env_file(path: str) -> Dict[str, str]:
    import io

    from dotenv import dotenv_values  # imported here: only start-up needs it

    try:
        with open(path, "rb") as f:
            raw = f.read(MAX_ENV_FILE_BYTES + 1)
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read configuration file: {exc.strerror}") from exc
    if len(raw) > MAX_ENV_FILE_BYTES:
        raise ConfigError(f"{path}: larger than {MAX_ENV_FILE_BYTES} bytes: not a configuration file")
    values = dotenv_values(stream=io.StringIO(env_file_text(path, raw)))
    return {k: v for k, v in values.items() if k.startswith("CLINICA_") and v is not None}


# --- the cache beside the env file, for the AGI script ----------------------------------------
# Every hook process loads the settings, and the inputs change rarely.  Parsing the file
# takes python-dotenv, validating the values urllib.parse and ipaddress: together about as
# much as Python's own start-up.  So every load leaves in ``<env file>.parsed`` beside the
# file, 0600 (it holds what the file holds, secrets too):
#
# * what python-dotenv made of the file (the output of read_env_file), valid while the file
#   is the same (device, inode, size, modification and change times);
# * the settings validated from it, valid while the rest of their inputs are the same
#   too: the CLINICA_* environment, the env file's name, the working directory (relative
#   paths) and this module's own file (another version may validate otherwise).  Values
#   that the environment gives are kept there as well, so settings are not kept when the
#   environment gives a secret (:data:`ENV_SECRETS`): a secret handed over that way stays
#   out of files.  Settings that are not valid are never kept: they are validated, and
#   refused, on every load.
#
# A cache that cannot be read, belongs to another user, is readable by others, is not
# what this module writes or was made for other inputs is ignored (and replaced).

def parse_cache_path(path: str) -> str:
    return os.path.abspath(path) + ".parsed"


def _file_state(st: os.stat_result) -> str:
    return f"{st.st_dev}:{st.st_ino}:{st.st_size}:{st.st_mtime_ns}:{st.st_ctime_ns}"


def _read_cache(cache: str, state: str) -> Optional[Dict[str, Any]]:
    """The cache of the env file in ``state``: ``values`` (a str -> str dict) and maybe
    ``settings``; None if there is none that may be trusted."""
    import json

    try:
        fd = os.open(cache, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError:
        return None
    try:
        st = os.fstat(fd)
        if st.st_uid != os.geteuid() or st.st_mode & 0o077 or st.st_size > MAX_ENV_FILE_BYTES * 4:
            return None
        data = json.loads(os.read(fd, st.st_size + 1).decode("utf-8"))
    except (OSError, ValueError):
        return None
    finally:
        os.close(fd)
    if not isinstance(data, dict) or data.get("state") != state:
        return None
    values = data.get("values")
    if not isinstance(values, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in values.items()):
        return None
    return data


def _write_cache(cache: str, data: Mapping[str, Any]) -> None:
    """Best effort: a new file renamed over it, else (a directory the hooks' user may not
    write, such as /etc/clinica-asterisk) in place, if it exists, is ours and is 0600."""
    import json

    text = json.dumps(data, ensure_ascii=False).encode("utf-8")
    temporary: Optional[str] = f"{cache}.{os.getpid()}.tmp"
    try:
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    except OSError:
        temporary = None
        try:
            fd = os.open(cache, os.O_WRONLY | os.O_NOFOLLOW)
        except OSError:
            return
    try:
        if temporary is None:
            st = os.fstat(fd)
            if st.st_uid != os.geteuid() or st.st_mode & 0o077:
                return
            os.ftruncate(fd, 0)
        written = os.write(fd, text) == len(text)
    except OSError:
        written = False
    finally:
        os.close(fd)
    if temporary is not None:
        try:
            if written:
                os.rename(temporary, cache)
            else:
                os.unlink(temporary)
        except OSError:
            pass


# What may hold a secret: the secrets, and the push URL (it may carry credentials).
ENV_SECRETS = SECRET_KEYS | {"CLINICA_CRM_PUSH_URL"}


def _settings_inputs(path: str, environ: Mapping[str, str]) -> Optional[Dict[str, Any]]:
    """Besides the env file, all that validated settings are made of (see above); None
    when they are not to be kept (the environment gives a secret) or it cannot be told
    (no working directory)."""
    if not ENV_SECRETS.isdisjoint(environ):
        return None
    try:
        return {"environ": {k: v for k, v in environ.items() if k.startswith("CLINICA_")}, "source": path,
                "cwd": os.getcwd(), "code": _file_state(os.stat(__file__))}
    except OSError:
        return None


def _settings_to_cache(settings: Settings) -> Dict[str, Any]:
    """The fields as JSON holds them (bind addresses as lists, networks as text)."""
    fields = {name: getattr(settings, name) for name in Settings._fields}
    fields["fastagi_allow"] = [str(network) for network in settings.fastagi_allow]
    return fields


def _settings_from_cache(entry: object, inputs: Optional[Dict[str, Any]]) -> Optional[Settings]:
    """What :func:`_settings_to_cache` wrote for these ``inputs``, or None."""
    if inputs is None or not isinstance(entry, dict) or entry.get("inputs") != inputs:
        return None
    fields = entry.get("fields")
    if not isinstance(fields, dict) or set(fields) != Settings._field_set:
        return None
    try:
        networks = ()
        if fields["fastagi_allow"]:
            import ipaddress

            networks = tuple(ipaddress.ip_network(text) for text in fields["fastagi_allow"])
        return Settings(**dict(fields, fastagi_bind=tuple(fields["fastagi_bind"]), api_bind=tuple(fields["api_bind"]),
                               fastagi_allow=networks))
    except (TypeError, ValueError):
        return None


def _layered(file_values: Mapping[str, str], environ: Mapping[str, str], source: str) -> Settings:
    """DEFAULTS, then the env file's values, then the environment; validated."""
    layered = dict(DEFAULTS)
    layered.update(file_values)
    layered.update({k: v for k, v in environ.items() if k.startswith("CLINICA_")})
    return build_settings(layered, source=source)


def load_settings(environ: Optional[Mapping[str, str]] = None) -> Settings:
    """DEFAULTS, then the env file, then the environment; validated (through the cache
    beside the env file)."""
    environ = os.environ if environ is None else environ
    path = find_env_file(environ)
    if not path:
        return _layered({}, environ, "")
    try:
        state = _file_state(os.stat(path))
    except OSError:
        return _layered(read_env_file(path), environ, path)  # says why it cannot be read
    cache = parse_cache_path(path)
    data = _read_cache(cache, state)
    changed = data is None
    if data is None:
        data = {"state": state, "values": read_env_file(path)}
    inputs = _settings_inputs(path, environ)
    settings = _settings_from_cache(data.get("settings"), inputs)
    if settings is not None:
        return settings
    try:
        settings = _layered(data["values"], environ, path)
        if inputs is not None:
            data["settings"] = {"inputs": inputs, "fields": _settings_to_cache(settings)}
            changed = True
    finally:  # what python-dotenv made of the file is kept even when it is not valid
        if changed:
            _write_cache(cache, data)
    return settings


# --- validation: small pure parsers, each naming the key it checks -------------------

def _choice(values, key, allowed):
    value = values[key].strip().lower()
    if value not in allowed:
        raise ConfigError(f"{key}: must be one of {', '.join(allowed)}; got {values[key]!r}")
    return value


def _int(values, key, low, high):
    raw = values[key].strip()
    try:
        number = int(raw)
    except ValueError:
        raise ConfigError(f"{key}: must be a whole number from {low} to {high}; got {raw!r}") from None
    if not low <= number <= high:
        raise ConfigError(f"{key}: must be a whole number from {low} to {high}; got {raw!r}")
    return number


def _digits(values, key, min_len, max_len, allow_empty=False):
    raw = values[key].strip()
    if allow_empty and raw == "":
        return raw
    if not (raw.isdigit() and raw.isascii() and min_len <= len(raw) <= max_len):
        raise ConfigError(f"{key}: must be {min_len} to {max_len} digits; got {raw!r}")
    return raw


def url_problem(url: str) -> Optional[str]:
    """Why an HTTP client could not use ``url``, or None.  Pure.  The answer never quotes
    the URL: it may hold a password or a token."""
    if not url.isascii():
        return "it holds characters that are not ASCII (percent-encode them; a host name in its xn-- form)"
    if any(ch.isspace() or ord(ch) < 32 or ord(ch) == 127 for ch in url):
        return "it holds a space or a control character (percent-encode a space as %20)"
    from urllib.parse import urlsplit

    try:
        parts = urlsplit(url)
    except ValueError:
        return "it is not a URL (a bracketed IPv6 address not closed?)"
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return "it must start with http:// or https:// and name a host"
    try:
        port = parts.port
    except ValueError:
        port = 0
    if port == 0:
        return "the port is not a number from 1 to 65535"
    return None


def _url(values, key, allow_empty=False):
    raw = values[key].strip()
    if allow_empty and raw == "":
        return raw
    problem = url_problem(raw)
    if problem:
        raise ConfigError(f"{key}: must be an http:// or https:// URL; {problem}")
    return raw


def parse_bind(text: str, name: str) -> Tuple[str, int]:
    """``ADDRESS:PORT`` as the settings and the command line take it: an IP address (an
    IPv6 one may be in brackets) and a port from 0 to 65535 (0: any free port, for a
    listener).  ``name`` (the key or the option) leads the error.  Pure."""
    import ipaddress

    raw = text.strip()
    host, sep, port = raw.rpartition(":")
    host = host.strip("[]")
    try:
        ipaddress.ip_address(host)
        if not (sep and port.isdigit() and port.isascii() and int(port) <= 65535):
            raise ValueError
    except ValueError:
        raise ConfigError(f"{name}: must be ADDRESS:PORT with an IP address and a port from 0 to 65535, "
                          f"e.g. 127.0.0.1:4574; got {raw!r}") from None
    return host, int(port)


def _bind(values, key):
    return parse_bind(values[key], key)


def _networks(values, key):
    raw = values[key].strip()
    if not raw:
        return ()
    import ipaddress

    networks = []
    for item in raw.split(","):
        try:
            networks.append(ipaddress.ip_network(item.strip(), strict=False))
        except ValueError:
            raise ConfigError(f"{key}: must be a comma-separated list of addresses or networks (10.0.0.0/24); got {item.strip()!r}") from None
    return tuple(networks)


def _api_keys(values, key):
    raw = values[key].strip()
    keys = {}
    for item in filter(None, (part.strip() for part in raw.split(","))):
        name, sep, secret = item.partition(":")
        if not sep or not name or not secret:
            # Never echo the value: it holds secrets.
            raise ConfigError(f"{key}: must be a comma-separated list of key:secret pairs")
        keys[name] = secret
    return keys


def _freepbx_db(values, key):
    """``auto``, ``off`` or ``mysql://user:password@host[:port]/dbname`` (checked here, never
    echoed: it holds a password)."""
    raw = values[key].strip()
    if raw.lower() in ("auto", "off"):
        return raw.lower()
    allowed = f"{key}: must be auto, off or mysql://user:password@host[:port]/dbname"
    from urllib.parse import urlsplit

    parts = urlsplit(raw)
    try:
        port = parts.port
    except ValueError:
        raise ConfigError(f"{allowed} (the port is not a number from 1 to 65535)") from None
    if parts.scheme.lower() not in FREEPBX_DB_URL_SCHEMES or not parts.hostname or not parts.username:
        raise ConfigError(allowed)
    if port == 0 or not parts.path.strip("/") or "/" in parts.path.strip("/") or parts.query or parts.fragment:
        raise ConfigError(allowed)
    return raw


def _store_url(values, key):
    """Empty (SQLite in CLINICA_DATA_DIR) or ``mysql://user:password@host[:port]/database``
    with optional ``?ssl_ca=…&unix_socket=…`` (checked here, never echoed)."""
    raw = values[key].strip()
    if not raw:
        return ""
    try:
        target = parse_store_url(raw)
    except StoreUrlError as exc:
        raise ConfigError(f"{key}: must be empty (SQLite in CLINICA_DATA_DIR) or "
                          f"mysql://user:password@host[:port]/database[?ssl_ca=…]; {exc}") from None
    if not target.password and not target.unix_socket:
        raise ConfigError(f"{key}: a password is needed (mysql://user:password@host/database), "
                          "unless the server is reached by ?unix_socket=…")
    return raw


def _trunk_numbers(values, key):
    """``trunk id:number`` pairs, comma-separated (``1:0443334000,2:+380443334001``): the
    number each FreePBX trunk presents, for ``trunkNumber``."""
    raw = values[key].strip()
    numbers = {}
    for item in filter(None, (part.strip() for part in raw.split(","))):
        trunk, sep, number = (p.strip() for p in item.partition(":"))
        if not (sep and trunk.isascii() and trunk.isdigit() and len(trunk) <= 6
                and re.fullmatch(r"\+?[0-9]{3,15}", number)):
            raise ConfigError(f"{key}: must be a comma-separated list of trunk-id:number pairs "
                              f"(1:0443334000,2:+380443334001); got {item!r}")
        numbers[trunk] = number
    return numbers


def _level(values, key):
    value = values[key].strip().upper()
    allowed = ("DEBUG", "INFO", "WARNING", "ERROR")
    if value not in allowed:
        raise ConfigError(f"{key}: must be one of {', '.join(allowed)}; got {values[key]!r}")
    return value


def _check_text(values: Mapping[str, str]) -> None:
    """Every value is text a file name, a header or a log line can hold (not echoed: it
    may be a secret).  The environment may hand over bytes that are not UTF-8."""
    for key in sorted(values):
        value = values[key]
        if not isinstance(value, str) or re.search(_CONTROL_IN_VALUE, value) or re.search(_SURROGATE, value):
            raise ConfigError(f"{key}: must be UTF-8 text without control characters")


def build_settings(values: Mapping[str, str], source: str = "") -> Settings:
    unknown = sorted(k for k in values if k.startswith("CLINICA_") and k not in DEFAULTS and k != "CLINICA_ENV_FILE")
    if unknown:
        raise ConfigError(f"{unknown[0]}: unknown setting (known: see .env.example)")
    _check_text({k: v for k, v in values.items() if k.startswith("CLINICA_")})
    return Settings(
        crm_push_url=_url(values, "CLINICA_CRM_PUSH_URL"),
        push_format=_choice(values, "CLINICA_PUSH_FORMAT", ("form", "json")),
        company_id=_digits(values, "CLINICA_COMPANY_ID", 1, 18, allow_empty=True),
        transfer_pair=_choice(values, "CLINICA_TRANSFER_PAIR", ("yes", "no")) == "yes",
        push_extra_keys=_choice(values, "CLINICA_PUSH_EXTRA_KEYS", ("yes", "no")) == "yes",
        hook_deadline_s=_int(values, "CLINICA_HOOK_DEADLINE_MS", 100, 30000) / 1000.0,
        answer_deadline_s=_int(values, "CLINICA_ANSWER_DEADLINE_MS", 50, 30000) / 1000.0,
        deliver_timeout_s=_int(values, "CLINICA_DELIVER_TIMEOUT_MS", 100, 120000) / 1000.0,
        deliver_max_backoff_s=float(_int(values, "CLINICA_DELIVER_MAX_BACKOFF_S", 1, 86400)),
        number_format=_choice(values, "CLINICA_NUMBER_FORMAT", ("national", "e164", "raw")),
        country_code=_digits(values, "CLINICA_COUNTRY_CODE", 1, 3),
        trunk_prefix=_digits(values, "CLINICA_TRUNK_PREFIX", 0, 2, allow_empty=True),
        trunk_numbers=_trunk_numbers(values, "CLINICA_TRUNK_NUMBERS"),
        data_dir=os.path.abspath(values["CLINICA_DATA_DIR"].strip() or "."),
        store_url=_store_url(values, "CLINICA_STORE_URL"),
        pbx_id=values["CLINICA_PBX_ID"].strip(),
        log_level=_level(values, "CLINICA_LOG_LEVEL"),
        log_file=values["CLINICA_LOG_FILE"].strip(),
        fastagi_bind=_bind(values, "CLINICA_FASTAGI_BIND"),
        fastagi_pool=_int(values, "CLINICA_FASTAGI_POOL", 1, 4096),
        fastagi_backlog=_int(values, "CLINICA_FASTAGI_BACKLOG", 5, 65535),
        fastagi_session_timeout_s=_int(values, "CLINICA_FASTAGI_SESSION_TIMEOUT_MS", 100, 600000) / 1000.0,
        fastagi_allow=_networks(values, "CLINICA_FASTAGI_ALLOW"),
        fastagi_engine=_choice(values, "CLINICA_FASTAGI_ENGINE", ("loop", "threads")),
        api_bind=_bind(values, "CLINICA_API_BIND"),
        api_public_url=_url(values, "CLINICA_API_PUBLIC_URL", allow_empty=True).rstrip("/"),
        api_keys=_api_keys(values, "CLINICA_API_KEYS"),
        api_max_body=_int(values, "CLINICA_API_MAX_BODY", 1024, 10 * 1024 * 1024),
        recordings_dir=os.path.abspath(values["CLINICA_RECORDINGS_DIR"].strip() or "."),
        record_link_ttl_s=_int(values, "CLINICA_RECORD_LINK_TTL_S", 10, 86400),
        directory_file=values["CLINICA_DIRECTORY_FILE"].strip(),
        freepbx_db=_freepbx_db(values, "CLINICA_FREEPBX_DB"),
        freepbx_conf=values["CLINICA_FREEPBX_CONF"].strip(),
        freepbx_refresh_s=_int(values, "CLINICA_FREEPBX_REFRESH_S", 1, 86400),
        ami_host=values["CLINICA_AMI_HOST"].strip(),
        ami_port=_int(values, "CLINICA_AMI_PORT", 1, 65535),
        ami_user=values["CLINICA_AMI_USER"].strip(),
        ami_secret=values["CLINICA_AMI_SECRET"],
        ami_timeout_s=_int(values, "CLINICA_AMI_TIMEOUT_MS", 100, 60000) / 1000.0,
        originate_context=values["CLINICA_ORIGINATE_CONTEXT"].strip(),
        originate_channel_context=values["CLINICA_ORIGINATE_CHANNEL_CONTEXT"].strip(),
        originate_timeout_s=_int(values, "CLINICA_ORIGINATE_TIMEOUT_S", 5, 300),
        reconcile_s=_int(values, "CLINICA_RECONCILE_S", 0, 86400),
        online_max_s=_int(values, "CLINICA_ONLINE_MAX_S", 0, 30 * 86400),
        source=source,
    )
