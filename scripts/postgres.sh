#!/usr/bin/env bash
# A throwaway local PostgreSQL cluster for development and tests.
#
#   scripts/postgres.sh start DIR PORT   initialise DIR if needed, start on 127.0.0.1:PORT, print the DSN
#   scripts/postgres.sh stop DIR         stop the cluster in DIR (no-op when it is not running)
#   scripts/postgres.sh status DIR       print "running <port> <dsn>" (exit 0) or "stopped" (exit 3)
#
# Installs Debian's `postgresql` package when no initdb/pg_ctl can be found. The cluster's data is in
# DIR/data, its unix socket in DIR/run and its log in DIR/postgres.log; it is owned and run by the
# `postgres` user when this script runs as root (initdb and postgres refuse to run as root).
# A second `start` is fast: the cluster is reused, and if it is already running (on whichever port)
# its DSN is printed. Durability is off (fsync=off): this is a test cluster, never a real one.
set -euo pipefail

ROLE=registrar
PASSWORD=registrar
DATABASE=registrar

die() {
    echo "postgres.sh: $*" >&2
    exit 1
}

usage() {
    die "usage: $0 start DIR PORT | stop DIR | status DIR"
}

# The directory holding initdb/pg_ctl/postgres: the newest Debian version first (Debian does not put
# them on PATH), else whatever is on PATH.
find_bindir() {
    local dir candidates=(/usr/lib/postgresql/*/bin)
    dir=$(printf '%s\n' "${candidates[@]}" | sort -V | tail -n 1)
    if [[ -n "$dir" && -x "$dir/initdb" && -x "$dir/pg_ctl" ]]; then
        echo "$dir"
    elif command -v initdb >/dev/null && command -v pg_ctl >/dev/null; then
        dirname "$(readlink -f "$(command -v pg_ctl)")"
    fi
}

ensure_installed() {
    BINDIR=$(find_bindir)
    [[ -n "$BINDIR" ]] && return 0
    [[ $EUID -eq 0 ]] || die "PostgreSQL is not installed and installing it needs root"
    echo "postgres.sh: installing PostgreSQL (apt-get)..." >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >"$DIR/apt.log" 2>&1 || die "apt-get update failed; see $DIR/apt.log"
    apt-get install -y -qq --no-install-recommends postgresql >>"$DIR/apt.log" 2>&1 ||
        die "apt-get install postgresql failed; see $DIR/apt.log"
    BINDIR=$(find_bindir)
    [[ -n "$BINDIR" ]] || die "installed postgresql but found no initdb/pg_ctl"
}

# Run a PostgreSQL program as the cluster's owner (never root).
as_owner() {
    if [[ $EUID -eq 0 ]]; then
        runuser -u postgres -- "$@"
    else
        "$@"
    fi
}

set_paths() {
    [[ -n "${1:-}" ]] || usage
    mkdir -p "$1" || die "cannot create $1"
    DIR=$(cd "$1" && pwd -P)
    DATA="$DIR/data"
    SOCKDIR="$DIR/run"
    LOG="$DIR/postgres.log"
    # The unix socket path (DIR/run/.s.PGSQL.NNNNN) must fit in sockaddr_un (107 bytes).
    ((${#SOCKDIR} <= 85)) || die "DIR path too long for a unix socket: $DIR"
}

# The port of the running postmaster (line 4 of postmaster.pid), or nothing.
running_port() {
    if [[ -f "$DATA/postmaster.pid" ]] && as_owner "$BINDIR/pg_ctl" -D "$DATA" status >/dev/null 2>&1; then
        sed -n 4p "$DATA/postmaster.pid"
    fi
}

dsn() {
    echo "postgresql://$ROLE:$PASSWORD@127.0.0.1:$1/$DATABASE"
}

psql_admin() {
    as_owner "$BINDIR/psql" -X -q -v ON_ERROR_STOP=1 -h "$SOCKDIR" -p "$1" -U postgres -d postgres -tA "${@:2}"
}

cmd_start() {
    local port=$1 current
    [[ "$port" =~ ^[0-9]+$ ]] || die "PORT must be a number, got '$port'"
    ensure_installed
    if [[ $EUID -eq 0 ]]; then
        id postgres >/dev/null 2>&1 || die "running as root needs the 'postgres' user, which does not exist"
        chown postgres: "$DIR"
        as_owner test -x "$DIR" || die "user postgres cannot reach $DIR (a parent directory is not traversable)"
    fi
    cd "$DIR" # the owner may not be allowed into the caller's working directory

    if [[ ! -f "$DATA/PG_VERSION" ]]; then
        rm -rf "$DATA"
        as_owner mkdir -p "$SOCKDIR"
        as_owner "$BINDIR/initdb" -D "$DATA" -U postgres -E UTF8 --no-locale \
            --auth-local=trust --auth-host=scram-sha-256 >"$DIR/initdb.log" 2>&1 ||
            die "initdb failed; see $DIR/initdb.log"
    fi

    current=$(running_port)
    if [[ -n "$current" ]]; then
        [[ "$current" == "$port" ]] || echo "postgres.sh: already running on port $current; reusing it" >&2
        port=$current
    else
        # 9>&-: the server must not inherit (and so hold forever) the lock taken below.
        as_owner "$BINDIR/pg_ctl" -D "$DATA" -l "$LOG" -w -t 60 -s start -o \
            "-c listen_addresses=127.0.0.1 -c port=$port -c unix_socket_directories='$SOCKDIR' -c fsync=off -c full_page_writes=off -c synchronous_commit=off" \
            >/dev/null 2>&1 9>&- || die "could not start PostgreSQL on port $port; see $LOG"
    fi

    psql_admin "$port" <<SQL >/dev/null || die "could not create role/database $DATABASE; see $LOG"
SELECT format('CREATE ROLE %I LOGIN PASSWORD %L', '$ROLE', '$PASSWORD')
WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '$ROLE') \gexec
SELECT format('ALTER ROLE %I CREATEDB', '$ROLE') \gexec
SELECT format('CREATE DATABASE %I OWNER %I', '$DATABASE', '$ROLE')
WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = '$DATABASE') \gexec
SQL
    dsn "$port"
}

cmd_stop() {
    BINDIR=$(find_bindir)
    [[ -n "$BINDIR" && -f "$DATA/PG_VERSION" ]] || return 0
    cd "$DIR"
    [[ -n "$(running_port)" ]] || return 0
    as_owner "$BINDIR/pg_ctl" -D "$DATA" -w -t 60 -s stop -m fast >/dev/null || die "could not stop PostgreSQL in $DIR"
}

cmd_status() {
    local port
    BINDIR=$(find_bindir)
    port=""
    if [[ -n "$BINDIR" && -f "$DATA/PG_VERSION" ]]; then
        cd "$DIR"
        port=$(running_port)
    fi
    if [[ -n "$port" ]]; then
        echo "running $port $(dsn "$port")"
    else
        echo "stopped"
        exit 3
    fi
}

command=${1:-}
case "$command" in
start)
    [[ $# -eq 3 ]] || usage
    set_paths "$2"
    # Serialise concurrent starts of the same cluster (two test sessions at once).
    exec 9>"$DIR/.lock"
    flock 9
    cmd_start "$3"
    ;;
stop)
    [[ $# -eq 2 ]] || usage
    set_paths "$2"
    exec 9>"$DIR/.lock"
    flock 9
    cmd_stop
    ;;
status)
    [[ $# -eq 2 ]] || usage
    set_paths "$2"
    cmd_status
    ;;
*) usage ;;
esac
