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
# PYTHON picks the interpreter (default: the system's /usr/bin/python3, else python3 on
# PATH; Sluice needs 3.11 or later). The venv runs on it as the service user, so an
# interpreter that user cannot execute is refused before anything is installed: root's
# pyenv, asdf or conda Python lives under root's home, which is closed to other users
# (and hidden by the unit's ProtectHome=yes). SLUICE_USER names the service user
# (default sluice, the sysusers.d entry; until that user exists, nobody stands in).
set -eu

PREFIX=${1:-/opt/sluice}
DESTDIR=${DESTDIR:-}
if [ -z "${PYTHON:-}" ]; then
    if [ -x /usr/bin/python3 ]; then PYTHON=/usr/bin/python3; else PYTHON=python3; fi
fi
SLUICE_USER=${SLUICE_USER:-sluice}
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

# The interpreter the venv links to (a venv's own python names its base), and its file.
base=$("$PYTHON" -c 'import sys; print(getattr(sys, "_base_executable", "") or sys.executable)')
real=$(readlink -f "$base")
fix="use the system interpreter (PYTHON=/usr/bin/python3; on Debian/Ubuntu: apt-get install \
python3 python3-venv), or one installed outside any home directory (/usr/local, /opt)"
for path in "$base" "$real"; do
    case $path in
    /root/* | /home/* | /run/user/*)
        echo "install.sh: $PYTHON runs $path, under a home directory: the service's" \
            "ProtectHome=yes hides it, so the venv could not start; $fix" >&2
        exit 69 ;;
    esac
done
if [ "$(id -u)" = 0 ] && command -v runuser >/dev/null 2>&1; then
    as=$SLUICE_USER
    if ! id "$as" >/dev/null 2>&1; then as=nobody; fi  # sluice is made below: same rights
    if id "$as" >/dev/null 2>&1; then
        for path in "$base" "$real"; do
            if ! runuser -u "$as" -- test -x "$path"; then
                echo "install.sh: the service user ($as) cannot execute $path ($PYTHON):" \
                    "a directory on its path is closed to it (pyenv, asdf and conda install" \
                    "under a home directory), so the service would fail with Permission" \
                    "denied; $fix" >&2
                exit 69
            fi
        done
    fi
else
    echo "install.sh: note: not checked that the service user can execute $real" \
        "(that needs root and runuser)" >&2
fi

echo "== the program: a venv at $PREFIX (on $real)"
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
# 770/660 with the group sluice: the admin's config edits write the file back
# (a temp file and a rename in this directory; the unit's ReadWritePaths=).
install -d -m 770 "$DESTDIR/etc/sluice"
# Where the provider passwords go (LoadCredential=): root's alone, systemd reads them.
install -d -m 700 "$DESTDIR/etc/sluice/credentials"
if [ -e "$config" ]; then
    echo "kept $config"
else
    install -m 660 "$SRC/config.example.yaml" "$config"
    # The daemon's group reads it and, for the admin's config edits, writes it; it holds
    # no secrets (those go in credentials, or in /var/lib/sluice/secrets).
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
