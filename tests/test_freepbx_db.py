"""FreePBX's database as the API reads it: /etc/freepbx.conf and the URL, which inbound route
names a DID, and a real MariaDB server with FreePBX's tables behind call-details and
click-to-call over HTTP: names from User Management and core, the directory file over them,
a row changed, the database going away or never answering."""

import json
import logging
import socket
import time

import pytest
import requests
from support.api import CALLS, T0, Clock, api_settings, base_url, play, running_server, signed_body
from support.binotel_shapes import check
from support.fake_ami import FakeAmi
from support.mariadb import FREEPBX_PASSWORD, FREEPBX_USER, RO_PASSWORD, TcpRelay, free_port

from clinica_asterisk.api.app import build_context
from clinica_asterisk.api.directory import Employee
from clinica_asterisk.api.errors import Code
from clinica_asterisk.api.freepbx_db import (
    DbTarget,
    FreePbxError,
    FreePbxSource,
    employees_from_rows,
    parse_freepbx_conf,
    read_freepbx,
    resolve_target,
    source_for,
    target_from_conf,
    target_from_url,
)
from clinica_asterisk.api.inbound_routes import InboundRoute, route_name
from clinica_asterisk.api.names import MergedEmployees
from clinica_asterisk.config import DEFAULTS, ConfigError, build_settings
from clinica_asterisk.delivery.sender import PushSender
from clinica_asterisk.hooks.stages import HookServices
from clinica_asterisk.store.database import Store

# --- /etc/freepbx.conf ------------------------------------------------------------------

FREEPBX_CONF = """<?php
// This file was generated at 2025-11-30T14:08:27+00:00
$amp_conf["AMPDBUSER"] = "freepbxuser";
$amp_conf["AMPDBPASS"] = "mZzDpAGKTmPJ";
$amp_conf["AMPDBHOST"] = "localhost";
$amp_conf["AMPDBNAME"] = "asterisk";
$amp_conf["AMPDBENGINE"] = "mysql";
$amp_conf["datasource"] = ""; //for sqlite3

require_once('/var/www/html/admin/bootstrap.php');
?>
"""


@pytest.mark.parametrize("line, expected", [
    ('$amp_conf["AMPDBUSER"] = "freepbxuser";', {"AMPDBUSER": "freepbxuser"}),
    ("$amp_conf['AMPDBUSER'] = 'freepbxuser';", {"AMPDBUSER": "freepbxuser"}),
    ("$amp_conf['AMPDBNAME'] = \"asterisk\";", {"AMPDBNAME": "asterisk"}),
    ('  $amp_conf [ "AMPDBHOST" ]   =   "10.0.0.5"  ;  // the database VM', {"AMPDBHOST": "10.0.0.5"}),
    ('\t$amp_conf["AMPDBHOST"]="db";', {"AMPDBHOST": "db"}),
    ('$amp_conf["AMPDBPORT"] = 3307;', {"AMPDBPORT": "3307"}),
    ('$amp_conf["AMPDBPASS"] = "";', {"AMPDBPASS": ""}),
    ('$amp_conf["AMPDBPASS"] = "a;b = c // d";', {"AMPDBPASS": "a;b = c // d"}),
    ('$amp_conf["AMPDBPASS"] = "q\\"uote \\$x \\\\ y";', {"AMPDBPASS": 'q"uote $x \\ y'}),
    ("$amp_conf['AMPDBPASS'] = 'it\\'s \\\\ \\n';", {"AMPDBPASS": "it's \\ \\n"}),
    ('$amp_conf["AMPDBPASS"] = "Пароль";', {"AMPDBPASS": "Пароль"}),
    ('// $amp_conf["AMPDBUSER"] = "old";', {}),
    ('# $amp_conf["AMPDBUSER"] = "old";', {}),
    ('$amp_conf["AMPDBUSER"] = getenv("DBUSER");', {}),
    ('$amp_conf["AMPDBUSER"] = "unterminated;', {}),
    ('$amp_conf[AMPDBUSER] = "bare key";', {}),
    ('$amppath[0] = "/var/www/html";', {}),
    ("require_once('/var/www/html/admin/bootstrap.php');", {}),
    ("<?php", {}),
    ("?>", {}),
    ("", {}),
])
def test_freepbx_conf_lines(line, expected):
    assert parse_freepbx_conf(line) == expected


def test_freepbx_conf_as_freepbx_writes_it_with_comments_and_a_second_assignment():
    text = FREEPBX_CONF + '/* an older database:\n$amp_conf["AMPDBHOST"] = "old-db";\n*/\n' \
                          '$amp_conf["AMPDBHOST"] = "127.0.0.1";\n$amp_conf["AMPDBPORT"] = "3307";\n'
    values = parse_freepbx_conf(text)
    assert values == {"AMPDBUSER": "freepbxuser", "AMPDBPASS": "mZzDpAGKTmPJ", "AMPDBHOST": "127.0.0.1",
                      "AMPDBNAME": "asterisk", "AMPDBENGINE": "mysql", "datasource": "", "AMPDBPORT": "3307"}
    assert target_from_conf(values, "/etc/freepbx.conf") == DbTarget(
        "127.0.0.1", 3307, "freepbxuser", "mZzDpAGKTmPJ", "asterisk", "", "/etc/freepbx.conf")


@pytest.mark.parametrize("values, expected", [
    ({"AMPDBUSER": "u"}, ("localhost", 3306, "u", "", "asterisk", "")),
    ({"AMPDBUSER": "u", "AMPDBPASS": "p", "AMPDBSOCK": "/run/mysqld/mysqld.sock", "AMPDBNAME": "pbx"},
     ("localhost", 3306, "u", "p", "pbx", "/run/mysqld/mysqld.sock")),
    ({"AMPDBUSER": "u", "AMPDBPORT": "not a port", "AMPDBHOST": " db "}, ("db", 3306, "u", "", "asterisk", "")),
    ({"AMPDBUSER": "u", "AMPDBENGINE": "mariadb"}, ("localhost", 3306, "u", "", "asterisk", "")),
])
def test_what_freepbx_conf_names(values, expected):
    t = target_from_conf(values, "f")
    assert (t.host, t.port, t.user, t.password, t.database, t.unix_socket) == expected


@pytest.mark.parametrize("values, words", [
    ({"AMPDBPASS": "p"}, "no AMPDBUSER"),
    ({"AMPDBUSER": "u", "AMPDBENGINE": "sqlite3"}, "not a MySQL/MariaDB database"),
])
def test_freepbx_conf_that_names_no_database(values, words):
    with pytest.raises(FreePbxError, match=words):
        target_from_conf(values, "/etc/freepbx.conf")


def test_auto_without_the_file_or_unreadable_is_no_database(tmp_path):
    assert resolve_target("auto", str(tmp_path / "freepbx.conf")) == (
        None, f"auto: no {tmp_path / 'freepbx.conf'} (not a FreePBX machine?)")
    target, why_not = resolve_target("auto", str(tmp_path))  # a directory: cannot be read as a file
    assert target is None and "cannot be read by this user" in why_not
    assert resolve_target("off", "/etc/freepbx.conf") == (None, "off (CLINICA_FREEPBX_DB=off)")


# --- the setting ------------------------------------------------------------------------

def settings(**values):
    return build_settings({**DEFAULTS, **values})


@pytest.mark.parametrize("value, target", [
    ("mysql://clinica:r0%3Ap%40ss%2Fw%25rd@10.0.0.5:3307/asterisk",
     ("10.0.0.5", 3307, "clinica", "r0:p@ss/w%rd", "asterisk")),
    ("mysql://clinica@db.example/asterisk", ("db.example", 3306, "clinica", "", "asterisk")),
    ("mariadb://c:pw-9@[::1]:3306/pbx", ("::1", 3306, "c", "pw-9", "pbx")),
])
def test_a_database_url(value, target):
    s = settings(CLINICA_FREEPBX_DB=value)
    t = target_from_url(s.freepbx_db)
    assert (t.host, t.port, t.user, t.password, t.database) == target
    assert t.shown() == {"10.0.0.5": "clinica@10.0.0.5:3307/asterisk", "db.example": "clinica@db.example:3306/asterisk",
                         "::1": "c@[::1]:3306/pbx"}[t.host]
    assert "r0:p@ss" not in repr(s) and "r0%3Ap" not in repr(s) and "r0:p@ss" not in repr(t)


@pytest.mark.parametrize("value, expected", [(" AUTO ", "auto"), ("off", "off"), ("Off", "off")])
def test_auto_and_off(value, expected):
    assert settings(CLINICA_FREEPBX_DB=value).freepbx_db == expected


@pytest.mark.parametrize("key, value, words", [
    ("CLINICA_FREEPBX_DB", "yes", "auto, off or mysql://"),
    ("CLINICA_FREEPBX_DB", "postgres://u:SECRETPW@h/asterisk", "auto, off or mysql://"),
    ("CLINICA_FREEPBX_DB", "mysql://u:SECRETPW@h", "auto, off or mysql://"),
    ("CLINICA_FREEPBX_DB", "mysql://u:SECRETPW@h/", "auto, off or mysql://"),
    ("CLINICA_FREEPBX_DB", "mysql://:SECRETPW@h/asterisk", "auto, off or mysql://"),
    ("CLINICA_FREEPBX_DB", "mysql://u:SECRETPW@/asterisk", "auto, off or mysql://"),
    ("CLINICA_FREEPBX_DB", "mysql://u:SECRETPW@h/asterisk/users", "auto, off or mysql://"),
    ("CLINICA_FREEPBX_DB", "mysql://u:SECRETPW@h/asterisk?ssl=1", "auto, off or mysql://"),
    ("CLINICA_FREEPBX_DB", "mysql://u:SECRETPW@h:99999/asterisk", "port is not a number from 1 to 65535"),
    ("CLINICA_FREEPBX_DB", "mysql://u:SECRETPW@h:port/asterisk", "port is not a number from 1 to 65535"),
    ("CLINICA_FREEPBX_REFRESH_S", "0", "whole number from 1 to 86400"),
    ("CLINICA_FREEPBX_REFRESH_S", "soon", "whole number from 1 to 86400"),
])
def test_a_bad_value_names_the_key_and_never_the_password(key, value, words):
    with pytest.raises(ConfigError) as error:
        settings(**{key: value})
    assert str(error.value).startswith(f"{key}:") and words in str(error.value)
    assert "SECRETPW" not in str(error.value)


# --- which route names a DID (pure) --------------------------------------------------------

ROUTES = [
    InboundRoute("+380443334000", "", "Головна лінія"),
    InboundRoute("0443334001", "0670219425", "Постійний пацієнт"),  # listed first: the empty cidnum wins anyway
    InboundRoute("0443334001", "", "Запис до лікаря"),
    InboundRoute("380443334002", "0679999999", "Тільки для одного абонента"),
    InboundRoute("_04433340XX", "", "Усі номери 0443334 0XX"),
    InboundRoute("_044333400[34]", "", "Філія"),
    InboundRoute("_0443334.", "", "Будь-що з 0443334"),
    InboundRoute("0445550000", "0671111111", "Лише для одного"),
    InboundRoute("", "0672222222", "Один абонент, будь-який номер"),
    InboundRoute("", "", "Інші номери"),
]


@pytest.mark.parametrize("did, caller, expected", [
    ("0443334000", "0670219424", "Головна лінія"),         # the route is written +380…, the call 0…
    ("+380443334000", "0670219424", "Головна лінія"),
    ("380443334000", "0670219424", "Головна лінія"),
    ("00380443334000", "0670219424", "Головна лінія"),
    ("0443334001", "0670219424", "Запис до лікаря"),
    ("0443334001", "0670219425", "Запис до лікаря"),       # any-caller route before the caller's own
    ("0443334002", "0670219426", "Усі номери 0443334 0XX"),  # the one exact route is for another caller
    ("0443334002", "+380679999999", "Тільки для одного абонента"),
    ("0443334003", "0670219427", "Філія"),                 # the most specific pattern
    ("+380443334004", "0670219428", "Філія"),
    ("0443334005", "0670219428", "Усі номери 0443334 0XX"),
    ("0443334123", "0670219428", "Будь-що з 0443334"),
    ("0445550000", "0670000000", "Інші номери"),           # only a route for another caller: the catch-all
    ("0445550000", "0671111111", "Лише для одного"),
    ("4001", "0670219424", "Інші номери"),
    ("4001", "0672222222", "Інші номери"),                 # catch-all for any caller before the caller's own
    ("", "0670219424", ""),                                # no DID, no name
])
def test_the_route_that_names_a_did(did, caller, expected):
    assert route_name(ROUTES, did, caller) == expected


def test_without_a_catch_all_an_unknown_did_has_no_name():
    assert route_name(ROUTES[:-2], "0445556666", "0670219424") == ""
    assert route_name([], "0443334000", "0670219424") == ""
    assert route_name([InboundRoute("_[", "", "broken pattern")], "0443334000", "") == ""


def test_a_caller_limited_route_names_the_number_when_it_is_the_only_one_that_applies():
    routes = [InboundRoute("_0Z.", "_067XXXXXXX", "Київстар на будь-який номер")]
    assert route_name(routes, "0443334000", "+380670219424") == "Київстар на будь-який номер"
    assert route_name(routes, "0443334000", "0500219424") == ""


# --- names per extension (pure) ----------------------------------------------------------

def test_names_from_user_management_else_the_extension():
    users = [("801", "Наталія С."), ("802", "Олег"), ("803", "Реєстратура"), ("804", None), (b"805", "Bytes")]
    userman = [("801", "Наталія Сторожук", "Наталія", "Сторожук", "n@clinic.example"),
               ("802", "", "Олег", "Петренко", None),
               ("804", None, None, None, "kasa@clinic.example"),
               ("801", "A later user of 801", "", "", "later@clinic.example"),
               ("999", "Not an extension", "", "", "x@clinic.example")]
    employees, named = employees_from_rows(users, userman)
    assert employees == {"801": Employee("Наталія Сторожук", "n@clinic.example"),
                         "802": Employee("Олег Петренко", ""), "803": Employee("Реєстратура", ""),
                         "804": Employee("", "kasa@clinic.example"), "805": Employee("Bytes", "")}
    assert named == 2


def test_the_directory_file_wins_field_by_field():
    merged = MergedEmployees({"801": Employee("From the file", ""), "802": Employee("", "file@x"),
                              "900": Employee("Only in the file", "")},
                             {"801": Employee("From FreePBX", "fpbx@x"), "802": Employee("FreePBX 802", "fpbx802@x"),
                              "803": Employee("Only in FreePBX", "")})
    assert dict(merged) == {"801": Employee("From the file", "fpbx@x"), "802": Employee("FreePBX 802", "file@x"),
                            "900": Employee("Only in the file", ""), "803": Employee("Only in FreePBX", "")}
    assert len(merged) == 4 and merged.get("804") is None


# --- a real MariaDB with FreePBX's tables --------------------------------------------------

EXPECTED_EMPLOYEES = {
    "801": Employee("Наталія Сторожук", "nataliiastorozhuk@medakadem.com"),  # User Management's display name
    "802": Employee("Олег Петренко", ""),                                    # first and last name, no e-mail
    "803": Employee("Реєстратура", ""),                                      # no User Management user
    "804": Employee("Каса", "kasa@clinic.example"),                          # a user without a name
    "904": Employee("Стійка", ""),
}


def test_the_tables_are_read_as_the_read_only_user_the_docs_create(freepbx_db):
    data = read_freepbx(target_from_url(freepbx_db.url()))
    assert dict(data.employees) == EXPECTED_EMPLOYEES
    assert data.named_by_userman == 2
    assert len(data.routes) == 6 and InboundRoute("_044333400[34]", "", "Філія") in data.routes
    assert InboundRoute("", "", "Інші номери") in data.routes


def test_each_trunk_s_number_is_its_outbound_caller_id(freepbx_db):
    data = read_freepbx(target_from_url(freepbx_db.url()))
    assert dict(data.trunks) == {"1": "+380443334000", "2": "0443334001"}  # trunk 3 presents none


def test_a_user_granted_the_three_older_tables_still_reads_them_without_trunks(freepbx_db):
    freepbx_db.execute("CREATE USER IF NOT EXISTS 'older'@'127.0.0.1' IDENTIFIED BY 'pw'",
                       *[f"GRANT SELECT ON asterisk.{t} TO 'older'@'127.0.0.1'"
                         for t in ("users", "userman_users", "incoming")], database=None)
    data = read_freepbx(target_from_url(freepbx_db.url(user="older", password="pw")))
    assert dict(data.employees) == EXPECTED_EMPLOYEES and len(data.routes) == 6
    assert dict(data.trunks) == {}


def test_without_user_management_the_extensions_name_themselves(freepbx_db):
    freepbx_db.execute("RENAME TABLE userman_users TO userman_users_away")
    try:
        data = read_freepbx(target_from_url(freepbx_db.url(user=FREEPBX_USER, password=FREEPBX_PASSWORD)))
    finally:
        freepbx_db.execute("RENAME TABLE userman_users_away TO userman_users")
    assert dict(data.employees) == {"801": Employee("Наталія С.", ""), "802": Employee("Олег", ""),
                                    "803": Employee("Реєстратура", ""), "804": Employee("Каса", ""),
                                    "904": Employee("Стійка", "")}
    assert (data.named_by_userman, len(data.routes)) == (0, 6)


def test_the_read_only_user_may_read_nothing_more(freepbx_db):
    import pymysql

    conn = pymysql.connect(host="127.0.0.1", port=freepbx_db.port, user="clinica", password=RO_PASSWORD,
                           database="asterisk")
    try:
        with conn.cursor() as cursor, pytest.raises(pymysql.err.OperationalError):
            cursor.execute("UPDATE users SET name = 'x'")
    finally:
        conn.close()


def write_freepbx_conf(path, **values):
    lines = ["<?php"] + [f'$amp_conf["{k}"] = "{v}";' for k, v in values.items()]
    lines.append("require_once('/var/www/html/admin/bootstrap.php');")
    path.write_text("\n".join(lines) + "\n")
    return str(path)


@pytest.mark.parametrize("over", ["socket", "tcp"])
def test_auto_uses_freepbx_s_own_credentials(freepbx_db, tmp_path, over):
    where = ({"AMPDBSOCK": freepbx_db.socket} if over == "socket"
             else {"AMPDBHOST": "127.0.0.1", "AMPDBPORT": freepbx_db.port})
    conf = write_freepbx_conf(tmp_path / "freepbx.conf", AMPDBUSER=FREEPBX_USER, AMPDBPASS=FREEPBX_PASSWORD,
                              AMPDBNAME="asterisk", AMPDBENGINE="mysql", **where)
    s = api_settings(tmp_path, freepbx_db="auto", freepbx_conf=conf)
    source = source_for(s.freepbx_db, s.freepbx_conf, s.freepbx_refresh_s)
    shown = f"unix:{freepbx_db.socket}" if over == "socket" else f"127.0.0.1:{freepbx_db.port}"
    assert (source.target.shown(), source.target.origin) == (f"freepbxuser@{shown}/asterisk", conf)
    assert dict(source.current().employees) == EXPECTED_EMPLOYEES


class Monotonic:
    """The source's clock, moved by the test."""

    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


class Api:
    """The API over real HTTP (waitress), its FreePBX source on a clock the test moves, and
    the recorded FreePBX calls played through the real hooks."""

    def __init__(self, tmp_path, crm_url, db_url, directory=None, timeouts_s=3.0, ami_port=None):
        values = {"crm_push_url": crm_url, "freepbx_db": db_url}
        if directory is not None:
            (tmp_path / "directory.csv").write_text(directory, encoding="utf-8")
            values["directory_file"] = str(tmp_path / "directory.csv")
        if ami_port is not None:
            values.update(ami_user="clinica", ami_secret="ami-secret", ami_port=ami_port, ami_timeout_ms=300)
        self.settings = api_settings(tmp_path, **values)
        self.monotonic = Monotonic()
        self.source = source_for(self.settings.freepbx_db, self.settings.freepbx_conf, 60,
                                 connect_timeout_s=timeouts_s, read_timeout_s=timeouts_s, clock=self.monotonic)
        self.clock = Clock(T0)
        self.context = build_context(self.settings, clock=self.clock, freepbx=self.source)
        self.services = HookServices(self.settings, Store(self.settings.db_path, clock=self.clock),
                                     PushSender(crm_url), "pbx1", clock=self.clock)

    def play(self, name):
        return play(self.services, self.clock, CALLS[name])

    def post(self, server, method, params):
        response = requests.post(f"{base_url(server)}/{method}.json", data=json.dumps(signed_body(params)),
                                 headers={"Content-Type": "application/json"}, timeout=30)
        assert response.status_code == 200
        return response.json()

    def names(self, server, ids):
        """(employeeName, employeeEmail, didName) by scenario."""
        answer = self.post(server, "stats/call-details", {"generalCallID": list(ids.values())})
        assert answer["status"] == "success", answer
        found = answer["callDetails"]
        return {name: (found[str(i)]["employeeName"], found[str(i)]["employeeEmail"], found[str(i)]["didName"])
                for name, i in ids.items()}


@pytest.fixture
def api(freepbx_db, tmp_path, crm):
    def make(db_url=None, **kwargs):
        return Api(tmp_path, crm.url, db_url or freepbx_db.url(), **kwargs)
    return make


SCENARIOS = ("in-801", "in-group", "in-queue", "in-miss", "in-busy", "out-answer")


def test_call_details_name_employees_and_dids_from_freepbx(api):
    a = api()
    ids = {name: a.play(name) for name in SCENARIOS}
    with running_server(a.settings, a.context) as server:
        assert a.names(server, ids) == {
            "in-801": ("Наталія Сторожук", "nataliiastorozhuk@medakadem.com", "Головна лінія"),  # DID +380… in FreePBX
            "in-group": ("Олег Петренко", "", "Запис до лікаря"),  # 802 answered; any-caller route first
            "in-queue": ("Олег Петренко", "", "Філія"),            # a DID pattern
            "in-miss": ("Реєстратура", "", "Інші номери"),          # the route for 0443334002 is for another caller
            "in-busy": ("Каса", "kasa@clinic.example", "Філія"),
            "out-answer": ("Стійка", "", ""),                       # outgoing: no didName
        }


def test_trunk_number_is_the_trunk_s_outbound_caller_id_unless_the_setting_names_it(api):
    a = api()
    out_answer, out_failover = a.play("out-answer"), a.play("out-failover")  # trunks 1 and 2
    with running_server(a.settings, a.context) as server:
        found = a.post(server, "stats/call-details", {"generalCallID": [out_answer, out_failover]})["callDetails"]
    assert (found[str(out_answer)]["trunkNumber"], found[str(out_failover)]["trunkNumber"]) == \
        ("0443334000", "0443334001")  # "Clinic" <+380443334000> in the API's national format


def test_the_employees_are_freepbx_s_extensions_with_user_management_s_names(api):
    a = api(directory="extension,name,email\n805,Новенька,new@clinic.example\n")
    with running_server(a.settings, a.context) as server:
        answer = a.post(server, "settings/list-of-employees", {})
    check(answer, "EmployeesAnswer")
    assert {e: (v["name"], v["email"]) for e, v in answer["listOfEmployees"].items()} == {
        "801": ("Наталія Сторожук", "nataliiastorozhuk@medakadem.com"), "802": ("Олег Петренко", ""),
        "803": ("Реєстратура", ""), "804": ("Каса", "kasa@clinic.example"), "805": ("Новенька", "new@clinic.example"),
        "904": ("Стійка", "")}


def test_the_directory_file_overrides_freepbx_field_by_field(api):
    a = api(directory="extension,name,email\n801,Н. Сторожук (файл),\n802,,oleg@file.example\n")
    ids = {name: a.play(name) for name in ("in-801", "in-group", "in-miss")}
    with running_server(a.settings, a.context) as server:
        assert a.names(server, ids) == {
            "in-801": ("Н. Сторожук (файл)", "nataliiastorozhuk@medakadem.com", "Головна лінія"),
            "in-group": ("Олег Петренко", "oleg@file.example", "Запис до лікаря"),
            "in-miss": ("Реєстратура", "", "Інші номери"),
        }


def test_a_changed_row_shows_once_the_refresh_period_has_passed(api, freepbx_db):
    a = api()
    ids = {"in-801": a.play("in-801")}
    before = {"in-801": ("Наталія Сторожук", "nataliiastorozhuk@medakadem.com", "Головна лінія")}
    after = {"in-801": ("Наталія Коваль", "n.koval@clinic.example", "Приймальня")}
    with running_server(a.settings, a.context) as server:
        assert a.names(server, ids) == before
        freepbx_db.execute("UPDATE userman_users SET displayname = 'Наталія Коваль', email = 'n.koval@clinic.example' "
                           "WHERE username = 'nstorozhuk'",
                           "UPDATE incoming SET description = 'Приймальня' WHERE extension = '+380443334000'")
        a.monotonic.now += 59
        assert a.names(server, ids) == before  # within the period: not read again
        a.monotonic.now += 1
        a.names(server, ids)  # due: read again in the background, this answer from what was known
        assert a.source.wait_idle(10)
        assert a.names(server, ids) == after


def test_when_the_database_goes_away_the_last_data_is_kept_with_one_warning(api, freepbx_db, caplog):
    relay = TcpRelay(freepbx_db.port)  # the clients' way to the server, which the test cuts
    a = api(db_url=freepbx_db.url(port=relay.port), timeouts_s=1.0)
    ids = {name: a.play(name) for name in ("in-801", "in-miss")}
    known = {"in-801": ("Наталія Сторожук", "nataliiastorozhuk@medakadem.com", "Головна лінія"),
             "in-miss": ("Реєстратура", "", "Інші номери")}
    caplog.set_level(logging.DEBUG, logger="clinica_asterisk.api.freepbx_db")
    with running_server(a.settings, a.context) as server:
        assert a.names(server, ids) == known
        relay.close()
        for _ in range(3):  # three refresh periods without the database
            a.monotonic.now += 60
            started = time.monotonic()
            assert a.names(server, ids) == known
            assert time.monotonic() - started < a.source.first_wait_s  # never waits for the read
            assert a.source.wait_idle(10)
            assert a.names(server, ids) == known
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1, [r.getMessage() for r in warnings]
    message = warnings[0].getMessage()
    assert f"clinica@127.0.0.1:{relay.port}/asterisk" in message and "keeping the data read before" in message
    assert RO_PASSWORD not in caplog.text and "r0%3Ap" not in caplog.text


def test_a_database_that_is_down_from_the_start_leaves_the_directory_file(api):
    a = api(db_url=f"mysql://clinica:x@127.0.0.1:{free_port()}/asterisk",
            directory="801,Наталія (файл),n@file.example\n")
    ids = {name: a.play(name) for name in ("in-801", "in-miss")}
    with running_server(a.settings, a.context) as server:
        assert a.names(server, ids) == {"in-801": ("Наталія (файл)", "n@file.example", ""),
                                        "in-miss": ("", "", "")}
    assert "Can't connect" in a.source.last_error


def test_a_database_that_never_answers_holds_the_first_request_no_longer_than_its_time_limits(api):
    silent = socket.socket()  # takes connections and never says a word
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)
    try:
        a = api(db_url=f"mysql://clinica:x@127.0.0.1:{silent.getsockname()[1]}/asterisk",
                directory="801,Наталія (файл),\n", timeouts_s=0.3)
        ids = {"in-801": a.play("in-801")}
        with running_server(a.settings, a.context) as server:
            started = time.monotonic()
            assert a.names(server, ids) == {"in-801": ("Наталія (файл)", "", "")}
            assert time.monotonic() - started < a.source.first_wait_s + 1.0
        assert "timed out" in a.source.last_error or "Lost connection" in a.source.last_error
    finally:
        silent.close()


# --- click-to-call ----------------------------------------------------------------------------

@pytest.fixture
def ami():
    fake = FakeAmi().start()
    yield fake
    fake.stop()


def test_click_to_call_takes_only_freepbx_s_extensions(api, ami):
    # The file lists 905, which FreePBX does not have, and not 803, which it has: FreePBX decides.
    a = api(ami_port=ami.port, directory="801,Наталія,\n905,Old extension,\n")
    with running_server(a.settings, a.context) as server:
        for ext in ("805", "905"):
            answer = a.post(server, "calls/ext-to-phone", {"ext_number": ext, "phone_number": "0639798793"})
            assert (answer["status"], answer["code"], answer["message"]) == ("error", Code.UNKNOWN_EXTENSION,
                                                                             "unknown extension")
        assert ami.connections == 0
        answer = a.post(server, "calls/ext-to-phone", {"ext_number": "803", "phone_number": "0639798793"})
        assert answer["status"] == "success"
    assert len(ami.originates()) == 1


def test_click_to_call_falls_back_to_the_directory_file_while_freepbx_cannot_be_read(api, ami):
    a = api(db_url=f"mysql://clinica:x@127.0.0.1:{free_port()}/asterisk", ami_port=ami.port,
            directory="905,Old extension,\n")
    with running_server(a.settings, a.context) as server:
        answer = a.post(server, "calls/ext-to-phone", {"ext_number": "803", "phone_number": "0639798793"})
        assert answer["code"] == Code.UNKNOWN_EXTENSION
        answer = a.post(server, "calls/ext-to-phone", {"ext_number": "905", "phone_number": "0639798793"})
        assert answer["status"] == "success"


def test_a_source_reads_in_the_background_and_only_once_at_a_time(freepbx_db):
    clock = Monotonic()
    reads = []

    def reader(target, connect_s, read_s):
        reads.append(target.shown())
        return read_freepbx(target, connect_s, read_s)

    source = FreePbxSource(target_from_url(freepbx_db.url()), 60, clock=clock, reader=reader)
    assert source.data is None
    assert dict(source.current().employees) == EXPECTED_EMPLOYEES
    assert not source.refresh_in_background()  # not due
    clock.now += 60
    assert source.refresh_in_background()
    assert not source.refresh_in_background(force=True)  # one read at a time
    assert source.wait_idle(10)
    assert len(reads) == 2
