#!/bin/sh
# Install Sluice from this checkout on a systemd host (Debian 12+, Ubuntu 24.04+):
#
#   sudo systemd/install.sh [PREFIX]          # PREFIX defaults to /opt/sluice
#
# 1. a virtualenv at PREFIX with Sluice built from this checkout (and uvloop);
# 2. the unit, with its ExecStart pointing at PREFIX/bin/sluice, the sysusers.d and
#    tmpfiles.d entries, and PREFIX/bin/sluice linked as /usr/local/bin/sluice;
# 3. /etc/sluice/config.yaml from config.example.yaml, unless it exists already.
# As root on a running systemd it then creates the sluice user and directories and
# reloads systemd; starting the service is left to you (edit the config first).
#
# DESTDIR=DIR puts the files of 2 and 3 under DIR instead of / (the venv stays at
# PREFIX, since a venv cannot move); tests/ops/test_install.py runs it that way.
# PYTHON picks the interpreter (default python3; Sluice needs 3.11 or later).
set -eu

PREFIX=${1:-/opt/sluice}
DESTDIR=${DESTDIR:-}
PYTHON=${PYTHON:-python3}
SRC=$(cd "$(dirname "$0")/.." && pwd)

case $PREFIX in
/*) ;;
*) echo "install.sh: PREFIX must be an absolute path, not $PREFIX" >&2; exit 64 ;;
esac
case $PREFIX in
*[!A-Za-z0-9/._-]*) echo "install.sh: PREFIX may hold only A-Z a-z 0-9 / . _ -" >&2; exit 64 ;;
esac
if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
    echo "install.sh: Sluice needs Python 3.11 or later ($PYTHON is older)" >&2
    exit 69
fi
if ! "$PYTHON" -c 'import ensurepip' 2>/dev/null; then
    echo "install.sh: $PYTHON cannot make a venv; on Debian/Ubuntu: apt-get install python3-venv" >&2
    exit 69
fi

echo "== the program: a venv at $PREFIX"
"$PYTHON" -m venv "$PREFIX"
"$PREFIX/bin/python" -m pip install -q --disable-pip-version-check "$SRC[fast]"
install -m 644 "$SRC/README.md" "$PREFIX/README.md"
install -d "$PREFIX/docs"
install -m 644 "$SRC"/docs/*.md "$PREFIX/docs/"

echo "== the unit, the user and the directories${DESTDIR:+ (under $DESTDIR)}"
install -d "$DESTDIR/etc/systemd/system" "$DESTDIR/usr/lib/sysusers.d" \
    "$DESTDIR/usr/lib/tmpfiles.d" "$DESTDIR/usr/local/bin"
sed "/^#/!s|/opt/sluice|$PREFIX|g" "$SRC/systemd/sluice.service" > "$DESTDIR/etc/systemd/system/sluice.service"
chmod 644 "$DESTDIR/etc/systemd/system/sluice.service"
install -m 644 "$SRC/systemd/sluice.sysusers" "$DESTDIR/usr/lib/sysusers.d/sluice.conf"
install -m 644 "$SRC/systemd/sluice.tmpfiles" "$DESTDIR/usr/lib/tmpfiles.d/sluice.conf"
ln -sfn "$PREFIX/bin/sluice" "$DESTDIR/usr/local/bin/sluice"
live=no
if [ -z "$DESTDIR" ] && [ "$(id -u)" = 0 ] && [ -d /run/systemd/system ]; then
    live=yes
    systemd-sysusers /usr/lib/sysusers.d/sluice.conf
    systemd-tmpfiles --create /usr/lib/tmpfiles.d/sluice.conf
fi

echo "== the config"
config="$DESTDIR/etc/sluice/config.yaml"
install -d -m 750 "$DESTDIR/etc/sluice"
if [ -e "$config" ]; then
    echo "kept $config"
else
    install -m 640 "$SRC/config.example.yaml" "$config"
    # The daemon's group reads it; it holds no secrets (those go in credentials).
    if getent group sluice >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
        chgrp sluice "$DESTDIR/etc/sluice" "$config"
    fi
    echo "wrote $config (from config.example.yaml)"
fi
if [ "$live" = yes ]; then
    systemctl daemon-reload
fi

cat <<NEXT
Installed. Next:
  \$EDITOR /etc/sluice/config.yaml && $PREFIX/bin/sluice check -c /etc/sluice/config.yaml
  systemctl enable --now sluice && systemctl status sluice
NEXT
