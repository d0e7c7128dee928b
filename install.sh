#!/usr/bin/env bash
# Install clinica-asterisk from this checkout: on a FreePBX host (script or FastAGI mode)
# or on a separate VM.  ./install.sh --help says how; docs/install.md says what each mode
# changes on the system.
#
# Every change is printed as it is made.  A second run changes nothing, so the same
# command upgrades.  What the installer added is recorded in
# /etc/clinica-asterisk/install.state, which is how --uninstall removes exactly that and
# nothing else.
# Run by sh (dash on Debian)?  It needs bash.
if [ -z "${BASH_VERSION:-}" ]; then exec bash "$0" "$@"; fi
set -eu

PROG=install.sh
REPO=$(cd "$(dirname "$0")" && pwd -P)

usage() {
    cat <<'EOF'
Usage: ./install.sh --mode script|fastagi|vm [options]
       ./install.sh --uninstall [--purge] [options]

Modes:
  script    FreePBX host: Asterisk runs the hook as an AGI script
            (agi-bin/clinica-agi); a small worker service sends what could not be
            sent during the call.
  fastagi   FreePBX host: the clinica-asterisk service runs the hooks over FastAGI
            on 127.0.0.1:4574 and serves the API for the CRM.
  vm        a separate machine: the service only; prints the lines to add on the PBX.

Options:
  --mode MODE      one of the modes above (an upgrade keeps the installed mode)
  --prefix DIR     where to install (default /opt/clinica-asterisk; the virtualenv
                   is DIR/venv); an upgrade or --uninstall finds it by itself
  --root DIR       install into DIR laid out like / (tests, packaging): every path
                   touched is under DIR; services are enabled, not started
  --ami            create the AMI user "clinica" for click-to-call and for closing the
                   calls Asterisk no longer has (random secret, written to the
                   configuration file; run again to update an older user's rights)
  --pbx ADDRESS    vm mode: the PBX's address, the only one allowed to connect
  --store HOST[:PORT]
                   vm mode: keep calls and events in the MariaDB on HOST, shared by
                   several VMs or PBXs: sets CLINICA_STORE_URL (user clinica, a random
                   password of this VM's own, database clinica) and prints the SQL to
                   run on the database server (docs/install.md)
  --store-ca FILE  with --store: the database server's CA certificate; the connection
                   is then TLS, checked against it (copied to /etc/clinica-asterisk)
  --use-venv DIR   use an existing virtualenv that already has clinica-asterisk
                   instead of creating one (packaging, tests)
  --dry-run        print what would be done, change nothing
  --uninstall      remove what the installer added; configuration and data stay
  --purge          with --uninstall: also remove configuration, data and the
                   service user
  -h, --help       this text

Environment: PYTHON names the interpreter to build the virtualenv with (default: the
first of python3, python3.13 ... python3.9 that is 3.9 or newer).
EOF
}

say() { printf '%s\n' "$*"; }
warn() { printf 'WARNING: %s\n' "$*" >&2; }
die() { printf '%s: %s\n' "$PROG" "$*" >&2; exit 1; }

MODE= ROOT=/ PREFIX= DRY_RUN=0 UNINSTALL=0 PURGE=0 AMI=0 USE_VENV= PBX= STORE= STORE_CA=

need_value() { [ $# -ge 2 ] || die "$1 needs a value (see --help)"; }
while [ $# -gt 0 ]; do
    case $1 in
        --mode) need_value "$@"; MODE=$2; shift 2 ;;
        --mode=*) MODE=${1#*=}; shift ;;
        --root) need_value "$@"; ROOT=$2; shift 2 ;;
        --root=*) ROOT=${1#*=}; shift ;;
        --prefix) need_value "$@"; PREFIX=$2; shift 2 ;;
        --prefix=*) PREFIX=${1#*=}; shift ;;
        --use-venv) need_value "$@"; USE_VENV=$2; shift 2 ;;
        --use-venv=*) USE_VENV=${1#*=}; shift ;;
        --pbx) need_value "$@"; PBX=$2; shift 2 ;;
        --pbx=*) PBX=${1#*=}; shift ;;
        --store) need_value "$@"; STORE=$2; shift 2 ;;
        --store=*) STORE=${1#*=}; shift ;;
        --store-ca) need_value "$@"; STORE_CA=$2; shift 2 ;;
        --store-ca=*) STORE_CA=${1#*=}; shift ;;
        --ami) AMI=1; shift ;;
        --dry-run) DRY_RUN=1; shift ;;
        --uninstall) UNINSTALL=1; shift ;;
        --purge) PURGE=1; shift ;;
        -h|--help) usage; exit 0 ;;
        *) die "unknown option: $1 (see --help)" ;;
    esac
done

case $MODE in ''|script|fastagi|vm) ;; *) die "--mode must be script, fastagi or vm; got '$MODE'" ;; esac
[ "$PURGE" = 0 ] || [ "$UNINSTALL" = 1 ] || die "--purge goes with --uninstall"
[ -d "$ROOT" ] || die "--root: no such directory: $ROOT"
ROOT=$(cd "$ROOT" && pwd -P)
R=${ROOT%/}   # empty for the real root: R/etc/... is then /etc/...
# The prefix and data directory are written into unit files and sed expressions.
case $PREFIX in
    ''|/*) ;;
    *) die "--prefix must be an absolute path; got '$PREFIX'" ;;
esac
case $PREFIX in *[!A-Za-z0-9._/-]*) die "--prefix may hold only letters, digits and . _ / -" ;; esac
case $PREFIX in /|//*) die "--prefix cannot be /" ;; esac
PREFIX=${PREFIX%/}
if [ -n "$USE_VENV" ]; then
    [ -d "$USE_VENV" ] || die "--use-venv: no such directory: $USE_VENV"
    USE_VENV=$(cd "$USE_VENV" && pwd -P)
fi
case $PBX in *[!0-9A-Fa-f.:/,]*) die "--pbx takes an IP address or network; got '$PBX'" ;; esac
case $STORE in *[!A-Za-z0-9.:-]*|:*) die "--store takes HOST or HOST:PORT; got '$STORE'" ;; esac
[ -z "$STORE" ] || [ "$MODE" = vm ] || die "--store goes with --mode vm"
[ -z "$STORE_CA" ] || [ -n "$STORE" ] || die "--store-ca goes with --store"
[ -z "$STORE_CA" ] || [ -f "$STORE_CA" ] || die "--store-ca: no such file: $STORE_CA"

# --- where things go (system paths under R) -----------------------------------------------
SERVICE_USER_OWN=clinica-asterisk     # the services' own user (fastagi, vm)
ASTERISK_USER=asterisk
ETC_DIR=$R/etc/clinica-asterisk
ENV_FILE=$ETC_DIR/.env
STATE=$ETC_DIR/install.state
AST_DIR=$R/etc/asterisk
AGI_LINK=$R/var/lib/asterisk/agi-bin/clinica-agi
UNIT_DIR=$R/etc/systemd/system
LOGROTATE_FILE=$R/etc/logrotate.d/clinica-asterisk
BIN_LINK=$R/usr/local/bin/clinica-asterisk
SERVE_UNIT=clinica-asterisk.service
DELIVER_UNIT=clinica-asterisk-deliver.service
FASTAGI_PORT=4574
BEGIN_MARK="; clinica-asterisk: begin (added by install.sh; install.sh --uninstall removes it)"
END_MARK="; clinica-asterisk: end"

# --- doing things (every change goes through these; --dry-run only prints) ----------------

CHANGES=0
change() {
    CHANGES=$((CHANGES + 1))
    if [ "$DRY_RUN" = 1 ]; then say "  would $*"; else say "  $*"; fi
}

show_cmd() {
    local out= arg
    for arg in "$@"; do
        case $arg in *[[:space:]]*|'') arg="\"$arg\"" ;; esac
        out="$out $arg"
    done
    printf '%s' "${out# }"
}

# The one way a system command is run (useradd, systemctl, chown, asterisk, fwconsole,
# pip): printed first, and only printed under --dry-run.
run_cmd() {
    CHANGES=$((CHANGES + 1))
    if [ "$DRY_RUN" = 1 ]; then
        say "  would run: $(show_cmd "$@")"
        return 0
    fi
    say "  run: $(show_cmd "$@")"
    "$@"
}

state_get() {
    if [ -f "$STATE" ]; then sed -n "s/^$1=//p" "$STATE" | tail -n 1; fi
    return 0
}

state_set() {
    [ "$(state_get "$1")" != "$2" ] || return 0
    [ "$DRY_RUN" = 0 ] || return 0
    { if [ -f "$STATE" ]; then grep -v "^$1=" "$STATE" || true; fi
      printf '%s=%s\n' "$1" "$2"; } > "$STATE.new"
    mv -f "$STATE.new" "$STATE"
}

state_del() {
    [ -f "$STATE" ] && [ "$DRY_RUN" = 0 ] || return 0
    grep -q "^$1=" "$STATE" || return 0
    { grep -v "^$1=" "$STATE" || true; } > "$STATE.new"
    mv -f "$STATE.new" "$STATE"
}

key_of() { basename "$1" | tr -c 'A-Za-z0-9\n' '_'; }

# write_file PATH MODE CONTENT: the file holds CONTENT plus a final newline.  An existing
# file is rewritten in place (it keeps its owner).  Sets FILE_CHANGED.
write_file() {
    local path=$1 mode=$2 content=$3
    FILE_CHANGED=0
    if [ -f "$path" ] && [ ! -L "$path" ] && printf '%s\n' "$content" | cmp -s - "$path"; then
        if [ "$(stat -c %a "$path")" != "$mode" ]; then
            change "chmod $mode $path"
            [ "$DRY_RUN" = 1 ] || chmod "$mode" "$path"
        fi
        return 0
    fi
    FILE_CHANGED=1
    if [ -e "$path" ] || [ -L "$path" ]; then change "update $path"; else change "create $path"; fi
    [ "$DRY_RUN" = 0 ] || return 0
    if [ -L "$path" ]; then rm -f "$path"; fi
    if [ -f "$path" ]; then
        printf '%s\n' "$content" > "$path"
    else
        (umask 077 && printf '%s\n' "$content" > "$path")
    fi
    chmod "$mode" "$path"
}

remove_file() {
    if [ -e "$1" ] || [ -L "$1" ]; then
        change "remove $1"
        [ "$DRY_RUN" = 1 ] || rm -f "$1"
    fi
}

ensure_dir() {
    local dir=$1 mode=$2
    if [ -d "$dir" ]; then
        if [ "$(stat -c %a "$dir")" != "$mode" ]; then
            change "chmod $mode $dir"
            [ "$DRY_RUN" = 1 ] || chmod "$mode" "$dir"
        fi
        return 0
    fi
    change "create directory $dir"
    [ "$DRY_RUN" = 1 ] || { mkdir -p "$dir" && chmod "$mode" "$dir"; }
}

# ensure_link TARGET LINK: LINK is a symbolic link to TARGET (a path as the running system
# sees it).  Never replaces a file that is not a link.
ensure_link() {
    local target=$1 link=$2
    if [ -L "$link" ] && [ "$(readlink "$link")" = "$target" ]; then return 0; fi
    if [ -e "$link" ] && [ ! -L "$link" ]; then
        die "$link exists and is not a link; move it away and run again"
    fi
    change "link $link -> $target"
    [ "$DRY_RUN" = 1 ] || ln -sfn "$target" "$link"
}

# remove_our_link LINK TARGET: remove LINK only while it still points at TARGET.
remove_our_link() {
    if [ -L "$1" ] && [ "$(readlink "$1")" = "$2" ]; then
        change "remove $1"
        [ "$DRY_RUN" = 1 ] || rm -f "$1"
    fi
}

# --- our blocks in other people's files ---------------------------------------------------

block_body() {
    [ -f "$1" ] || return 0
    BEGIN_MARK=$BEGIN_MARK END_MARK=$END_MARK awk '
        $0 == ENVIRON["END_MARK"] { inside = 0 }
        inside { print }
        $0 == ENVIRON["BEGIN_MARK"] { inside = 1 }' "$1"
}

has_block() { [ -f "$1" ] && grep -qxF "$BEGIN_MARK" "$1"; }

# Lines of FILE outside our block, with our block left out (or, given BODY, put in its
# place).
rewrite_block() {
    BEGIN_MARK=$BEGIN_MARK END_MARK=$END_MARK BODY=${2-} REPLACE=${2+1} awk '
        $0 == ENVIRON["BEGIN_MARK"] {
            inside = 1
            if (ENVIRON["REPLACE"] == "1")
                print ENVIRON["BEGIN_MARK"] "\n" ENVIRON["BODY"] "\n" ENVIRON["END_MARK"]
            next
        }
        inside && $0 == ENVIRON["END_MARK"] { inside = 0; next }
        !inside { print }' "$1"
}

# ensure_block FILE BODY: FILE ends with (or holds) our block with BODY.  Records whether
# the file was created and whether a missing final newline was added, so that removing
# the block gives back the file byte for byte.  Sets FILE_CHANGED.
ensure_block() {
    local file=$1 body=$2 key
    key=$(key_of "$file")
    FILE_CHANGED=0
    if has_block "$file"; then
        [ "$(block_body "$file")" != "$body" ] || return 0
        FILE_CHANGED=1
        change "update our lines in $file"
        [ "$DRY_RUN" = 1 ] && return 0
        rewrite_block "$file" "$body" > "$file.clinica-new"
        cat "$file.clinica-new" > "$file"
        rm -f "$file.clinica-new"
        return 0
    fi
    FILE_CHANGED=1
    if [ -e "$file" ]; then
        change "add to $file: $(printf '%s\n' "$body" | head -n 1)"
    else
        change "create $file: $(printf '%s\n' "$body" | head -n 1)"
        state_set "created_$key" 1
    fi
    [ "$DRY_RUN" = 1 ] && return 0
    if [ -s "$file" ] && [ "$(tail -c 1 "$file" | od -An -c | tr -d ' ')" != '\n' ]; then
        printf '\n' >> "$file"
        state_set "newline_$key" 1
    fi
    printf '%s\n%s\n%s\n' "$BEGIN_MARK" "$body" "$END_MARK" >> "$file"
}

# remove_block FILE: takes our block out; removes the file if we created it and nothing
# else is left in it.  Sets FILE_CHANGED.
remove_block() {
    local file=$1 key
    key=$(key_of "$file")
    FILE_CHANGED=0
    has_block "$file" || return 0
    FILE_CHANGED=1
    if [ "$(state_get "created_$key")" = 1 ] && [ -z "$(rewrite_block "$file" | tr -d '\n')" ]; then
        remove_file "$file"
    else
        change "remove our lines from $file"
        if [ "$DRY_RUN" = 0 ]; then
            rewrite_block "$file" > "$file.clinica-new"
            cat "$file.clinica-new" > "$file"
            rm -f "$file.clinica-new"
            if [ "$(state_get "newline_$key")" = 1 ] && [ -s "$file" ]; then truncate -s -1 "$file"; fi
        fi
    fi
    state_del "created_$key"
    state_del "newline_$key"
}

# --- the configuration file ---------------------------------------------------------------

env_get() {
    [ -f "$ENV_FILE" ] || return 0
    sed -n "s/^$1=//p" "$ENV_FILE" | tail -n 1 | sed "s/^[\"']\(.*\)[\"']\$/\1/"
}

# env_set KEY VALUE: set KEY in the existing configuration file, in place of its line (or
# of its commented-out example), else at the end.  Other lines stay as they are.
env_set() {
    local key=$1 value=$2
    [ "$(env_get "$key")" != "$value" ] || return 0
    change "set $key in $ENV_FILE"
    [ "$DRY_RUN" = 0 ] && [ -f "$ENV_FILE" ] || return 0
    KEY=$key VALUE=$value awk '
        BEGIN { line = ENVIRON["KEY"] "=" ENVIRON["VALUE"] }
        { lines[NR] = $0 }
        !set_at && index($0, ENVIRON["KEY"] "=") == 1 { set_at = NR }
        !example_at && index($0, "#" ENVIRON["KEY"] "=") == 1 { example_at = NR }
        END {
            at = set_at ? set_at : example_at
            for (i = 1; i <= NR; i++) print (i == at ? line : lines[i])
            if (!at) print line
        }' "$ENV_FILE" > "$ENV_FILE.clinica-new"
    cat "$ENV_FILE.clinica-new" > "$ENV_FILE"
    rm -f "$ENV_FILE.clinica-new"
}

# --- users and owners ---------------------------------------------------------------------

# uid:gid of a user as the target system knows it (R/etc/passwd: true for / and --root).
ids_of() {
    [ -f "$R/etc/passwd" ] || return 0
    awk -F: -v u="$1" '$1 == u { print $3 ":" $4; exit }' "$R/etc/passwd"
}

group_exists() { [ -f "$R/etc/group" ] && grep -q "^$1:" "$R/etc/group"; }

# The user made by the installer is known by its comment (--purge removes only that one).
USER_COMMENT="clinica-asterisk service (install.sh)"
made_by_us() {
    [ -f "$R/etc/passwd" ] && awk -F: -v u="$1" -v c="$USER_COMMENT" '$1 == u && $5 == c { found = 1 } END { exit !found }' "$R/etc/passwd"
}

# own USER PATH [-R]: PATH belongs to USER (and its group).  Numeric ids, read from the
# target's passwd, so that --root never depends on this machine's users.
own() {
    local user=$1 path=$2 ids
    ids=$(ids_of "$user")
    if [ -z "$ids" ]; then
        [ "$DRY_RUN" = 0 ] || say "  would run: chown $user: $path"
        return 0
    fi
    if [ -e "$path" ] && [ "$(stat -c %u:%g "$path")" = "$ids" ]; then return 0; fi
    if [ "${3-}" = -R ]; then run_cmd chown -R "$ids" "$path"; else run_cmd chown "$ids" "$path"; fi
}

# Under --root, user commands change DIR's /etc files, not this machine's.
user_cmd() {
    local cmd=$1
    shift
    if [ -n "$R" ]; then run_cmd "$cmd" --prefix "$R" "$@"; else run_cmd "$cmd" "$@"; fi
}

ensure_service_user() {
    [ -z "$(ids_of "$SERVICE_USER_OWN")" ] || return 0
    # On a FreePBX host the service reads the recordings, which belong to asterisk.
    if [ "$MODE" = fastagi ] && group_exists "$ASTERISK_USER"; then
        user_cmd useradd --system --user-group --groups "$ASTERISK_USER" --home-dir "$DATA_DIR" \
            --no-create-home --shell /usr/sbin/nologin --comment "$USER_COMMENT" "$SERVICE_USER_OWN"
    else
        user_cmd useradd --system --user-group --home-dir "$DATA_DIR" \
            --no-create-home --shell /usr/sbin/nologin --comment "$USER_COMMENT" "$SERVICE_USER_OWN"
    fi
}

# --- systemd ------------------------------------------------------------------------------

UNITS_RELOAD=0

render_unit() {
    # The repository's units name the default prefix and data directory (a unit that
    # takes the prefix for the virtualenv itself gets the virtualenv's bin too).
    sed -e "s#/opt/clinica-asterisk/venv/bin/#$BIN/#g" -e "s#/opt/clinica-asterisk/bin/#$BIN/#g" \
        -e "s#/opt/clinica-asterisk#$PREFIX#g" -e "s#/var/lib/clinica-asterisk#$DATA_DIR#g" "$REPO/systemd/$1"
}

install_unit() {
    local unit=$1
    write_file "$UNIT_DIR/$unit" 644 "$(render_unit "$unit")"
    state_set "unit_$unit" 1
    if [ "$FILE_CHANGED" = 1 ]; then UNITS_RELOAD=1; RESTART="$RESTART $unit"; fi
}

start_units() {
    local unit
    if [ -z "$R" ] && [ "$UNITS_RELOAD" = 1 ]; then run_cmd systemctl daemon-reload; fi
    for unit in "$@"; do
        if [ "$(state_get "enabled_$unit")" != 1 ]; then
            if [ -n "$R" ]; then run_cmd systemctl --root="$R" enable "$unit"; else run_cmd systemctl enable "$unit"; fi
            state_set "enabled_$unit" 1
        fi
        [ -z "$R" ] || continue   # a tree under --root has nothing running
        case " $RESTART " in
            *" $unit "*) run_cmd systemctl restart "$unit" || warn "$unit did not start: journalctl -u $unit" ;;
            *) systemctl is-active --quiet "$unit" || run_cmd systemctl start "$unit" ||
                   warn "$unit did not start: journalctl -u $unit" ;;
        esac
    done
}

remove_unit() {
    local unit=$1
    [ "$(state_get "unit_$unit")" = 1 ] || return 0
    if [ "$(state_get "enabled_$unit")" = 1 ]; then
        if [ -n "$R" ]; then run_cmd systemctl --root="$R" disable "$unit"; else run_cmd systemctl disable --now "$unit"; fi
        state_del "enabled_$unit"
    fi
    if [ -e "$UNIT_DIR/$unit" ]; then remove_file "$UNIT_DIR/$unit"; UNITS_RELOAD=1; fi
    state_del "unit_$unit"
}

# --- Asterisk -----------------------------------------------------------------------------

reload_dialplan() {
    if command -v fwconsole >/dev/null 2>&1; then
        run_cmd fwconsole reload || warn "fwconsole reload failed: run it yourself"
    elif command -v asterisk >/dev/null 2>&1; then
        run_cmd asterisk -rx "dialplan reload" || warn "the dialplan reload failed: run asterisk -rx \"dialplan reload\""
    else
        warn "neither fwconsole nor asterisk found: reload the dialplan yourself (fwconsole reload)"
    fi
}

reload_manager() {
    if command -v asterisk >/dev/null 2>&1; then
        run_cmd asterisk -rx "manager reload" || warn "the AMI reload failed: run asterisk -rx \"manager reload\""
    else
        warn "asterisk not found: run asterisk -rx \"manager reload\" yourself"
    fi
}

agi_target() {
    local bind host port
    case $1 in
        script) printf 'clinica-agi' ;;
        fastagi)
            # Where the service listens, as configured (an IP address: Asterisk gives a
            # FastAGI host 2 s per address it resolves to).
            bind=$(env_get CLINICA_FASTAGI_BIND)
            host=${bind%:*} port=${bind##*:}
            case $host in ''|0.0.0.0|'[::]'|'::') host=127.0.0.1 ;; esac
            case $port in ''|*[!0-9]*) port=$FASTAGI_PORT ;; esac
            printf 'agi://%s:%s/clinica-agi' "$host" "$port"
            ;;
    esac
}

# --- checks before anything is changed ----------------------------------------------------

PY=
python_ok() { "$1" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 9) else 1)' >/dev/null 2>&1; }

find_python() {
    local candidate version found=
    if [ -n "${PYTHON:-}" ]; then
        set -- "$PYTHON"
    else
        set -- python3 python3.13 python3.12 python3.11 python3.10 python3.9
    fi
    for candidate in "$@"; do
        if ! command -v "$candidate" >/dev/null 2>&1; then
            if [ -n "${PYTHON:-}" ]; then
                PROBLEMS="$PROBLEMS
- PYTHON=$PYTHON: no such command"
                return 0
            fi
            continue
        fi
        if python_ok "$candidate"; then PY=$candidate; return 0; fi
        version=$("$candidate" -c 'import sys; print("%d.%d.%d" % sys.version_info[:3])' 2>/dev/null || echo "?")
        found="$found $candidate ($version)"
    done
    if [ -n "$found" ]; then
        PROBLEMS="$PROBLEMS
- Python 3.9 or newer is needed; found only:$found.
  FreePBX 16 (SNG7) has Python 3.6: install a python3.9+ (then PYTHON=python3.9 ./install.sh ...),
  or run the service on a separate VM (./install.sh --mode vm there) and point this PBX at it."
    else
        PROBLEMS="$PROBLEMS
- no python3 found: install Python 3.9 or newer (Debian: apt-get install python3 python3-venv)"
    fi
}

preflight() {
    PROBLEMS=
    if [ -z "$R" ] && [ "$DRY_RUN" = 0 ] && [ "$(id -u)" != 0 ]; then
        PROBLEMS="$PROBLEMS
- run it as root (it writes to /etc, /opt and /var/lib)"
    fi
    [ -d "$(dirname "$PREFIX_DIR")" ] || PROBLEMS="$PROBLEMS
- no $(dirname "$PREFIX_DIR") for --prefix $PREFIX: make it, or choose another prefix"
    if [ -n "$USE_VENV" ]; then
        if ! [ -x "$USE_VENV/bin/python" ] || ! python_ok "$USE_VENV/bin/python"; then
            PROBLEMS="$PROBLEMS
- --use-venv $USE_VENV: no Python 3.9 or newer in it ($USE_VENV/bin/python)"
        elif ! [ -x "$USE_VENV/bin/clinica-agi" ] || ! [ -x "$USE_VENV/bin/clinica-asterisk" ]; then
            PROBLEMS="$PROBLEMS
- --use-venv $USE_VENV: clinica-asterisk is not installed in it (no bin/clinica-agi)"
        fi
    else
        if [ -d "$VENV" ] && [ ! -L "$VENV" ] && [ ! -f "$VENV/pyvenv.cfg" ] && [ -n "$(ls -A "$VENV")" ]; then
            PROBLEMS="$PROBLEMS
- $VENV exists and is not a virtualenv: move it away, or choose another --prefix"
        fi
        find_python
        if [ -n "$PY" ] && ! "$PY" -c 'import venv, ensurepip' >/dev/null 2>&1; then
            PROBLEMS="$PROBLEMS
- $PY has no working venv module: install it (Debian: apt-get install python3-venv)"
        fi
    fi
    if [ "$MODE" != vm ]; then
        if [ ! -d "$AST_DIR" ]; then
            PROBLEMS="$PROBLEMS
- no $AST_DIR: Asterisk is not installed here. On a machine without Asterisk use --mode vm."
        elif [ ! -f "$R/etc/freepbx.conf" ] && [ ! -f "$R/etc/amportal.conf" ]; then
            warn "no /etc/freepbx.conf: on a plain Asterisk, #include extensions_custom.conf from extensions.conf yourself"
        fi
        [ -f "$REPO/dialplan/extensions_clinica.conf" ] || PROBLEMS="$PROBLEMS
- this checkout has no dialplan/extensions_clinica.conf"
    fi
    if [ "$MODE" = script ]; then
        [ -d "$(dirname "$AGI_LINK")" ] || PROBLEMS="$PROBLEMS
- no $(dirname "$AGI_LINK"): where is Asterisk's agi-bin?"
        [ -n "$(ids_of "$ASTERISK_USER")" ] || PROBLEMS="$PROBLEMS
- no user $ASTERISK_USER: script mode runs the hook as the user Asterisk runs as"
        [ -f "$REPO/systemd/$DELIVER_UNIT" ] || PROBLEMS="$PROBLEMS
- this checkout has no systemd/$DELIVER_UNIT"
        [ -f "$REPO/packaging/logrotate/clinica-asterisk" ] || PROBLEMS="$PROBLEMS
- this checkout has no packaging/logrotate/clinica-asterisk"
    else
        [ -f "$REPO/systemd/$SERVE_UNIT" ] || PROBLEMS="$PROBLEMS
- this checkout has no systemd/$SERVE_UNIT"
    fi
    [ -d "$UNIT_DIR" ] || PROBLEMS="$PROBLEMS
- no $UNIT_DIR: the services need systemd"
    [ -f "$REPO/.env.example" ] || PROBLEMS="$PROBLEMS
- this checkout has no .env.example"
    [ -z "$PROBLEMS" ] || die "cannot install:$PROBLEMS"
}

# --- install ------------------------------------------------------------------------------

source_digest() {
    (cd "$REPO" && find agi setup.cfg pyproject.toml -type f ! -name '*.pyc' \
        ! -path '*/__pycache__/*' ! -path '*.egg-info/*' | LC_ALL=C sort | xargs -d '\n' sha256sum) |
        sha256sum | cut -c 1-64
}

remove_venv() {
    if [ -L "$VENV" ]; then
        remove_file "$VENV"
    elif [ "$(state_get venv)" = made ] && [ -f "$VENV/pyvenv.cfg" ]; then
        change "remove $VENV"
        [ "$DRY_RUN" = 1 ] || rm -rf "$VENV"
    fi
    state_del venv
    state_del source_digest
}

install_package() {
    if [ ! -d "$PREFIX_DIR" ]; then
        ensure_dir "$PREFIX_DIR" 755
        state_set prefix_made 1
    fi
    if [ -n "$USE_VENV" ]; then
        [ -L "$VENV" ] || remove_venv
        ensure_link "$USE_VENV" "$VENV"
        state_set venv linked
        return 0
    fi
    [ ! -L "$VENV" ] || remove_venv
    local digest
    if [ ! -x "$VENV/bin/python" ]; then
        run_cmd "$PY" -m venv "$VENV"
    fi
    state_set venv made
    digest=$(source_digest)
    if [ "$(state_get source_digest)" != "$digest" ] || [ ! -x "$VENV/bin/clinica-agi" ]; then
        # A local directory is always reinstalled, so a changed checkout is an upgrade.
        run_cmd "$VENV/bin/pip" install --quiet "$REPO"
        state_set source_digest "$digest"
        PACKAGE_CHANGED=1
    fi
}

new_env_file() {
    local edits=(-e "s#^\#\?CLINICA_DATA_DIR=.*#CLINICA_DATA_DIR=$DATA_DIR#")
    # On a VM the PBX must reach the FastAGI server: every address, narrowed down by
    # CLINICA_FASTAGI_ALLOW (see .env.example).
    [ "$MODE" != vm ] || edits+=(-e "s#^\#\?CLINICA_FASTAGI_BIND=.*#CLINICA_FASTAGI_BIND=0.0.0.0:$FASTAGI_PORT#")
    sed "${edits[@]}" "$REPO/.env.example"
}

install_config() {
    if [ -f "$ENV_FILE" ]; then
        # Never rewritten: only its mode and owner are kept right (it holds secrets).
        if [ "$(stat -c %a "$ENV_FILE")" != 600 ]; then
            change "chmod 600 $ENV_FILE"
            [ "$DRY_RUN" = 1 ] || chmod 600 "$ENV_FILE"
        fi
    else
        write_file "$ENV_FILE" 600 "$(new_env_file)"
        state_set created_env 1
    fi
    own "$SERVICE_USER" "$ENV_FILE"
    # The settings' parse cache: the hooks rewrite it in place, since they may not write
    # this directory (docs/reliability.md, "Script mode: the hook stores, the worker sends").
    [ -f "$ENV_FILE.parsed" ] || write_file "$ENV_FILE.parsed" 600 ""
    own "$SERVICE_USER" "$ENV_FILE.parsed"
    ensure_dir "$DATA_DIR_PATH" 750
    # -R: after a change of mode the call store changes hands too.
    own "$SERVICE_USER" "$DATA_DIR_PATH" -R
}

install_dialplan() {
    local changed=0
    write_file "$AST_DIR/extensions_clinica.conf" 644 "$(cat "$REPO/dialplan/extensions_clinica.conf")"
    changed=$((changed + FILE_CHANGED))
    state_set dialplan 1
    if [ -f "$AST_DIR/extensions_custom.conf" ] &&
       rewrite_block "$AST_DIR/extensions_custom.conf" |
       grep -Eq '^[[:space:]]*#include[[:space:]]+"?(/etc/asterisk/)?extensions_clinica\.conf"?[[:space:]]*$'; then
        say "  extensions_custom.conf already includes extensions_clinica.conf: left as it is"
    else
        ensure_block "$AST_DIR/extensions_custom.conf" "#include extensions_clinica.conf"
        changed=$((changed + FILE_CHANGED))
    fi
    local target
    target=$(agi_target "$MODE")
    if [ -f "$AST_DIR/globals_custom.conf" ] &&
       rewrite_block "$AST_DIR/globals_custom.conf" | grep -Eq '^[[:space:]]*CLINICA_AGI[[:space:]]*='; then
        warn "globals_custom.conf sets CLINICA_AGI itself: left as it is; for $MODE mode it must be $target"
    else
        ensure_block "$AST_DIR/globals_custom.conf" "CLINICA_AGI = $target"
        changed=$((changed + FILE_CHANGED))
    fi
    [ "$changed" = 0 ] || DIALPLAN_RELOAD=1
}

remove_dialplan() {
    [ "$(state_get dialplan)" = 1 ] || return 0
    remove_block "$AST_DIR/extensions_custom.conf"
    remove_block "$AST_DIR/globals_custom.conf"
    remove_file "$AST_DIR/extensions_clinica.conf"
    state_del dialplan
    DIALPLAN_RELOAD=1
}

install_script_hook() {
    ensure_link "$BIN/clinica-agi" "$AGI_LINK"
    state_set agi_link 1
    local rotate
    rotate=$(sed -e "s#/var/lib/clinica-asterisk#$DATA_DIR#g" "$REPO/packaging/logrotate/clinica-asterisk")
    if [ -d "$(dirname "$LOGROTATE_FILE")" ]; then
        write_file "$LOGROTATE_FILE" 644 "$rotate"
        state_set logrotate 1
    else
        warn "no /etc/logrotate.d: rotate $DATA_DIR/clinica-agi.log yourself"
    fi
}

remove_script_hook() {
    if [ "$(state_get agi_link)" = 1 ]; then
        remove_our_link "$AGI_LINK" "$BIN/clinica-agi"
        state_del agi_link
    fi
    if [ "$(state_get logrotate)" = 1 ]; then
        remove_file "$LOGROTATE_FILE"
        state_del logrotate
    fi
}

ami_secret() {
    local secret
    secret=$(block_body "$AST_DIR/manager_custom.conf" | sed -n 's/^secret=//p')
    if [ -z "$secret" ] && [ "$(env_get CLINICA_AMI_USER)" = clinica ]; then
        secret=$(env_get CLINICA_AMI_SECRET)
        [ "$secret" != change-me ] || secret=
    fi
    [ -n "$secret" ] || secret=$(od -An -N24 -tx1 /dev/urandom | tr -d ' \n')
    printf '%s' "$secret"
}

install_ami() {
    local file=$AST_DIR/manager_custom.conf secret
    if [ -f "$file" ] && rewrite_block "$file" | grep -q '^\[clinica\]'; then
        warn "$file already has a [clinica] AMI user not made by install.sh: left as it is; put its secret in $ENV_FILE yourself"
        return 0
    fi
    secret=$(ami_secret)
    ensure_block "$file" "[clinica]
secret=$secret
deny=0.0.0.0/0.0.0.0
permit=127.0.0.1/255.255.255.255
read=call
write=originate,reporting,call"
    [ "$FILE_CHANGED" = 0 ] || AMI_RELOAD=1
    state_set ami 1
    env_set CLINICA_AMI_USER clinica
    env_set CLINICA_AMI_SECRET "$secret"
}

vm_address() {
    local address
    address=$(hostname -I 2>/dev/null | awk '{ print $1 }') || true
    printf '%s' "${address:-THIS-VM-ADDRESS}"
}

# The shared store: CLINICA_STORE_URL (its password kept when it has one), the CA file.
install_store() {
    local host=${STORE%%:*} port=3306 url password query=
    case $STORE in *:*) port=${STORE##*:} ;; esac
    case $port in ''|*[!0-9]*) die "--store: the port must be a number; got '$port'" ;; esac
    if [ -n "$STORE_CA" ]; then
        write_file "$ETC_DIR/db-ca.pem" 644 "$(cat "$STORE_CA")"
        query="?ssl_ca=${ETC_DIR#"$R"}/db-ca.pem"
    fi
    url=$(env_get CLINICA_STORE_URL)
    password=$(printf '%s' "$url" | sed -n 's#^mysql://[^:]*:\([^@]*\)@.*#\1#p')
    [ -n "$password" ] || password=$(od -An -N18 -tx1 /dev/urandom | tr -d ' \n')
    env_set CLINICA_STORE_URL "mysql://clinica:$password@$host:$port/clinica$query"
}

print_store_instructions() {
    local address
    address=$(vm_address)
    cat <<END

On the database server (MariaDB 10.6 or newer), as root: the database once, and a user
for each VM (this one: $address), each with a password of its own:
  CREATE DATABASE IF NOT EXISTS clinica CHARACTER SET utf8mb4 COLLATE utf8mb4_bin;
  CREATE USER 'clinica'@'$address' IDENTIFIED BY '<the password in CLINICA_STORE_URL of ${ENV_FILE#"$R"}>'${STORE_CA:+ REQUIRE SSL};
  GRANT SELECT, INSERT, UPDATE, DELETE, CREATE, ALTER, INDEX ON clinica.* TO 'clinica'@'$address';
Then on this VM: systemctl restart clinica-asterisk, and clinica-asterisk doctor (its
"store" line). The service creates and migrates the tables itself.
END
}

print_vm_instructions() {
    local address
    address=$(vm_address)
    cat <<EOF

On the PBX (FreePBX 16 or 17), as root:
  1. copy dialplan/extensions_clinica.conf of this checkout to /etc/asterisk/extensions_clinica.conf
  2. add this line to /etc/asterisk/extensions_custom.conf:
       #include extensions_clinica.conf
  3. add this line to /etc/asterisk/globals_custom.conf:
       CLINICA_AGI = agi://$address:$FASTAGI_PORT/clinica-agi
  4. fwconsole reload
EOF
    if [ -z "$PBX" ]; then
        cat <<EOF
Anyone who can reach port $FASTAGI_PORT of this machine can send calls to the CRM: set
CLINICA_FASTAGI_ALLOW in $ENV_FILE to the PBX's address (or run again with --pbx).
EOF
    fi
    if [ "$AMI" = 1 ]; then
        cat <<EOF
For click-to-call, add to /etc/asterisk/manager_custom.conf on the PBX, then run
asterisk -rx "manager reload" there:
  [clinica]
  secret=<the value of CLINICA_AMI_SECRET in $ENV_FILE>
  deny=0.0.0.0/0.0.0.0
  permit=$address/255.255.255.255
  read=call
  write=originate,reporting,call
EOF
        [ -n "$PBX" ] || say "and set CLINICA_AMI_HOST in $ENV_FILE to the PBX's address."
    fi
}

do_install() {
    local old_mode
    old_mode=$(state_get mode)
    if [ -z "$MODE" ]; then
        [ -n "$old_mode" ] || die "choose --mode script, fastagi or vm (see --help)"
        MODE=$old_mode
    fi
    if [ "$MODE" = script ]; then SERVICE_USER=$ASTERISK_USER; else SERVICE_USER=$SERVICE_USER_OWN; fi
    preflight

    if [ "$DRY_RUN" = 1 ]; then say "Dry run: nothing is changed."; fi
    say "Installing clinica-asterisk ($MODE mode) from $REPO into $PREFIX_DIR"
    [ -z "$old_mode" ] || [ "$old_mode" = "$MODE" ] || say "  (was $old_mode mode)"
    ensure_dir "$ETC_DIR" 755
    state_set mode "$MODE"
    state_set prefix "$PREFIX"

    install_package
    if [ -d "$(dirname "$BIN_LINK")" ]; then
        ensure_link "$BIN/clinica-asterisk" "$BIN_LINK"
        state_set bin_link 1
    fi

    [ "$MODE" = script ] || ensure_service_user
    install_config

    # What the previous mode installed and this one does not use.
    if [ "$MODE" != script ]; then remove_script_hook; remove_unit "$DELIVER_UNIT"; fi
    if [ "$MODE" = script ]; then remove_unit "$SERVE_UNIT"; fi
    if [ "$MODE" = vm ]; then remove_dialplan; fi

    case $MODE in
        script)
            install_script_hook
            install_dialplan
            install_unit "$DELIVER_UNIT"
            ;;
        fastagi)
            install_dialplan
            install_unit "$SERVE_UNIT"
            ;;
        vm)
            install_unit "$SERVE_UNIT"
            if [ -n "$PBX" ]; then env_set CLINICA_FASTAGI_ALLOW "$PBX"; fi
            if [ -n "$STORE" ]; then install_store; fi
            ;;
    esac
    if [ "$AMI" = 1 ]; then
        if [ "$MODE" = vm ]; then
            env_set CLINICA_AMI_USER clinica
            [ -n "$(env_get CLINICA_AMI_SECRET)" ] && [ "$(env_get CLINICA_AMI_SECRET)" != change-me ] ||
                env_set CLINICA_AMI_SECRET "$(od -An -N24 -tx1 /dev/urandom | tr -d ' \n')"
            if [ -n "$PBX" ]; then env_set CLINICA_AMI_HOST "${PBX%%[/,]*}"; fi
        else
            install_ami
        fi
    fi

    [ "$DIALPLAN_RELOAD" = 0 ] || reload_dialplan
    [ "$AMI_RELOAD" = 0 ] || reload_manager
    if [ "$PACKAGE_CHANGED" = 1 ]; then
        case $MODE in script) RESTART="$RESTART $DELIVER_UNIT" ;; *) RESTART="$RESTART $SERVE_UNIT" ;; esac
    fi
    case $MODE in
        script) start_units "$DELIVER_UNIT" ;;
        *) start_units "$SERVE_UNIT" ;;
    esac

    if [ "$CHANGES" = 0 ]; then say "Nothing to change: clinica-asterisk is installed and up to date."; fi
    [ "$MODE" != vm ] || print_vm_instructions
    [ -z "$STORE" ] || print_store_instructions
    if [ "$(state_get created_env)" = 1 ] && grep -q '^CLINICA_CRM_PUSH_URL=https://clinic.example.com' "$ENV_FILE" 2>/dev/null; then
        say ""
        say "Next: set CLINICA_CRM_PUSH_URL (and the rest) in ${ENV_FILE#"$R"}, then run: clinica-asterisk doctor"
    fi
}

# --- uninstall ----------------------------------------------------------------------------

do_uninstall() {
    local mode
    mode=$(state_get mode)
    if [ "$DRY_RUN" = 1 ]; then say "Dry run: nothing is changed."; fi
    if [ -z "$R" ] && [ "$DRY_RUN" = 0 ] && [ "$(id -u)" != 0 ]; then die "run it as root"; fi
    if [ -z "$mode" ]; then
        say "No installation found (no ${STATE#"$R"})."
    else
        say "Removing clinica-asterisk ($mode mode) from $PREFIX_DIR"
        # The hooks go first: until the reload, Asterisk still calls them.
        remove_dialplan
        [ "$DIALPLAN_RELOAD" = 0 ] || reload_dialplan
        if [ "$(state_get ami)" = 1 ]; then
            remove_block "$AST_DIR/manager_custom.conf"
            [ "$FILE_CHANGED" = 0 ] || reload_manager
            state_del ami
        fi
        remove_unit "$DELIVER_UNIT"
        remove_unit "$SERVE_UNIT"
        if [ -z "$R" ] && [ "$UNITS_RELOAD" = 1 ]; then run_cmd systemctl daemon-reload; fi
        remove_script_hook
        if [ "$(state_get bin_link)" = 1 ]; then
            remove_our_link "$BIN_LINK" "$BIN/clinica-asterisk"
        fi
        remove_venv
        if [ "$(state_get prefix_made)" = 1 ] && [ -d "$PREFIX_DIR" ] && [ -z "$(ls -A "$PREFIX_DIR")" ]; then
            change "remove directory $PREFIX_DIR"
            [ "$DRY_RUN" = 1 ] || rmdir "$PREFIX_DIR"
        fi
    fi
    local user=
    ! made_by_us "$SERVICE_USER_OWN" || user=$SERVICE_USER_OWN
    if [ "$PURGE" = 1 ]; then
        if [ -e "$ETC_DIR" ]; then change "remove $ETC_DIR"; [ "$DRY_RUN" = 1 ] || rm -rf "$ETC_DIR"; fi
        if [ -e "$DATA_DIR_PATH" ]; then change "remove $DATA_DIR_PATH"; [ "$DRY_RUN" = 1 ] || rm -rf "$DATA_DIR_PATH"; fi
        if [ -n "$user" ]; then user_cmd userdel "$user"; fi
    else
        say "Kept: configuration ${ETC_DIR#"$R"}, data ${DATA_DIR_PATH#"$R"}${user:+, user $user} (--purge removes them)."
    fi
    [ ! -e "$STATE" ] || [ "$PURGE" = 1 ] || remove_file "$STATE"
    [ "$PURGE" = 1 ] || remove_file "$ENV_FILE.parsed"  # a cache (install_config): made again
}

# --- main ---------------------------------------------------------------------------------

INSTALLED_PREFIX=$(state_get prefix)
if [ -z "$PREFIX" ]; then
    PREFIX=${INSTALLED_PREFIX:-/opt/clinica-asterisk}
elif [ -n "$INSTALLED_PREFIX" ] && [ "$PREFIX" != "$INSTALLED_PREFIX" ]; then
    die "installed in $INSTALLED_PREFIX, not $PREFIX: to move it, --uninstall first"
fi
PREFIX_DIR=$R$PREFIX
VENV=$PREFIX_DIR/venv
BIN=$PREFIX/venv/bin   # as the running system sees it: in links and units

DIALPLAN_RELOAD=0 AMI_RELOAD=0 PACKAGE_CHANGED=0 RESTART= SERVICE_USER=
DATA_DIR=$(env_get CLINICA_DATA_DIR)
case $DATA_DIR in /*) ;; *) DATA_DIR=/var/lib/clinica-asterisk ;; esac
case $DATA_DIR in *[!A-Za-z0-9._/-]*) die "CLINICA_DATA_DIR in $ENV_FILE: only letters, digits and . _ / - are supported here" ;; esac
DATA_DIR_PATH=$R$DATA_DIR

if [ "$UNINSTALL" = 1 ]; then do_uninstall; else do_install; fi
