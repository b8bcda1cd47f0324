# Sourced by the benchmark scripts: `need COMMAND PACKAGE...` installs the Debian packages
# when COMMAND is missing (CI and a newcomer start from a clean machine), with one
# `apt-get update` per script run, time-boxed.
need() {
    local command=$1
    shift
    command -v "$command" >/dev/null && return 0
    local sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    printf '%s installing %s\n' "$(date +%H:%M:%S)" "$*" >&2
    if [ -z "${NEED_APT_UPDATED:-}" ]; then
        timeout 600 $sudo apt-get update -qq
        NEED_APT_UPDATED=1
    fi
    DEBIAN_FRONTEND=noninteractive timeout 900 $sudo apt-get install -y -qq "$@" >/dev/null
}
