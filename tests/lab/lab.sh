#!/bin/bash
# A private Asterisk instance for tests.
#   lab.sh start DIR CONFDIR [FILE...]   base/ + CONFDIR/ + FILEs become DIR/etc; starts Asterisk
#   lab.sh stop DIR | lab.sh cli DIR "command"
# DIR, CONFDIR and FILEs are best given as absolute paths; a CONFDIR that is a bare name
# (world, pbx17, pbx16) is taken from this directory, whatever the current directory.
# Needs an Asterisk installed under the prefix $AST; Asterisk itself is not part of any repo.
set -u
AST=${AST:?set AST to the prefix of an Asterisk install}
here=$(cd "$(dirname "$0")" && pwd)
export LD_LIBRARY_PATH=$AST/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
cmd=$1 lab=$2
case $lab in /*) ;; *) lab=$(pwd)/$lab ;; esac
ast() { "$AST/sbin/asterisk" -C "$lab/etc/asterisk.conf" "$@"; }
abs() {  # an absolute path for a config dir or file
  case $1 in
    /*) printf '%s\n' "$1" ;;
    *) if [ -e "$here/$1" ] && [ ! -e "$1" ]; then printf '%s\n' "$here/$1"; else printf '%s\n' "$(pwd)/$1"; fi ;;
  esac
}
# Silent prompts (the build has no sound packages): 0xff is silence in u-law, 8000 bytes a
# second. The transfer features abort without theirs; VoiceMail and the IVR play the rest.
# name:bytes; vm-intro lasts 2 s so that a caller can hang up before the beep.
PROMPTS="pbx-transfer:1600 pbx-invalid:1600 beep:1600 vm-intro:16000 vm-theperson:1600
 vm-isunavail:1600 vm-isonphone:1600 vm-goodbye:1600 vm-msgsaved:1600 vm-review:1600
 vm-saved:1600 vm-mailboxfull:1600 goodbye:1600 im-sorry:1600 an-error-has-occured:1600
 sorry-youre-having-problems:1600 silence/1:8000 digits/0:1600 digits/1:1600 digits/2:1600
 digits/3:1600 digits/4:1600 digits/5:1600 digits/6:1600 digits/7:1600 digits/8:1600
 digits/9:1600 line-busy-transfer-menu:1600 number-not-answering:1600 ss-noservice:1600
 cannot-complete-as-dialed:1600 check-number-dial-again:1600 all-circuits-busy-now:1600
 please-try-call-later:1600"
case $cmd in
start)
  [ -x "$AST/sbin/asterisk" ] || { echo "no Asterisk at $AST"; exit 3; }
  conf=${3:-}; shift 3 2>/dev/null || shift $#
  [ -n "$conf" ] && conf=$(abs "$conf")
  mkdir -p "$lab"/{etc,var/lib,var/spool,run,log/cdr-csv,agi-bin,monitor,data}
  # A data directory of its own (astdatadir): the prefix's entries by symlink, but its own
  # sounds/, so that nothing is written into the prefix (which may be shared or read-only).
  for entry in "$AST"/var/lib/asterisk/*; do
    name=$(basename "$entry")
    [ "$name" = sounds ] || [ -e "$lab/data/$name" ] || ln -s "$entry" "$lab/data/$name"
  done
  snd=$lab/data/sounds/en; mkdir -p "$snd/digits" "$snd/silence"
  for p in $PROMPTS; do
    name=${p%%:*} size=${p##*:}
    [ -f "$snd/$name.ulaw" ] || head -c "$size" /dev/zero | tr '\0' '\377' > "$snd/$name.ulaw"
  done
  cp "$here"/base/*.conf "$lab/etc/"
  [ -n "$conf" ] && cp "$conf"/* "$lab/etc/"
  for f in "$@"; do cp "$(abs "$f")" "$lab/etc/"; done
  sed "s#@LAB@#$lab#g; s#@AST@#$AST#g; s#@USER@#$(id -un)#g; s#@GROUP@#$(id -gn)#g" "$here/base/asterisk.conf.in" > "$lab/etc/asterisk.conf"
  sed -i "s#@LAB@#$lab#g" "$lab"/etc/*.conf
  [ -f "$lab/etc/extensions.conf" ] || printf '[general]\n' > "$lab/etc/extensions.conf"
  (setsid "$AST/sbin/asterisk" -C "$lab/etc/asterisk.conf" -f > "$lab/log/console.log" 2>&1 &)
  for _ in $(seq 100); do ast -rx "core waitfullybooted" >/dev/null 2>&1 && exit 0; sleep 0.2; done
  echo "Asterisk did not start: $(tail -3 "$lab/log/console.log")"; exit 1 ;;
stop) ast -rx "core stop now" >/dev/null 2>&1; sleep 0.5 ;;
cli) # the remote console says this on stdout whatever asterisk.conf's entityid is
  ast -rx "$3" | grep -v '^No ethernet interface found for seeding global EID'
  exit "${PIPESTATUS[0]}" ;;
esac
