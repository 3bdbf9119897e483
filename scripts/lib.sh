# Sourced by the scripts in scripts/: which venv they run, and the list of the
# programs they need (scripts/programs.txt).

# The venv to use, printed on stdout. $PROCNETMON_VENV chooses what root
# executes, so under sudo (whose invoker may be allowed only this script) it is
# ignored, and otherwise it is refused unless only root can change it.
procnetmon_venv() {
    local root=$1
    if [ -z "${PROCNETMON_VENV:-}" ] || [ -n "${SUDO_UID:-}" ]; then
        echo "$root/.venv"
        return
    fi
    local venv="$PROCNETMON_VENV" why
    if [ "${venv#/}" = "$venv" ]; then
        venv="$PWD/$venv"
    fi
    if ! why="$(/usr/bin/python3 -I "$root/scripts/trusted-path" "$venv" "$venv/bin" "$venv/bin/python" "$venv/bin/procnetmon")"; then
        echo "procnetmon: refusing PROCNETMON_VENV=$PROCNETMON_VENV: $why" >&2
        return 1
    fi
    echo "$venv"
}

# The packages of the groups named, one a line ("run" is always included).
packages_of() {
    local root=$1; shift
    awk -v want="run $*" '
        BEGIN { n = split(want, w, " "); for (i = 1; i <= n; i++) g[w[i]] = 1 }
        /^[ \t]*(#|$)/ { next }
        { m = split($3, has, ","); for (i = 1; i <= m; i++) if (has[i] in g) { print $2; next } }
    ' "$root/scripts/programs.txt" | sort -u
}

# The programs of the groups named, one a line.
programs_of() {
    local root=$1; shift
    awk -v want="run $*" '
        BEGIN { n = split(want, w, " "); for (i = 1; i <= n; i++) g[w[i]] = 1 }
        /^[ \t]*(#|$)/ { next }
        $1 == "-" { next }
        { m = split($3, has, ","); for (i = 1; i <= m; i++) if (has[i] in g) { print $1; next } }
    ' "$root/scripts/programs.txt" | sort -u
}

# The groups known to scripts/programs.txt.
known_group() {
    awk '/^[ \t]*(#|$)/ { next } { print $3 }' "$1/scripts/programs.txt" | tr ',' '\n' | grep -qx "$2"
}
