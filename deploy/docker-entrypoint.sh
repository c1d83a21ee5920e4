#!/bin/sh
# Entrypoint of the task-processor image. It only chooses the command and then replaces itself
# with it (exec), so the chosen program becomes PID 1 and receives `docker stop`'s SIGTERM.
#
#   (no arguments)             run-task-processor
#   --numthreads 5 ...         run-task-processor --numthreads 5 ...
#   run-task-processor ...     run-task-processor ...
#   run-api --bind ...         the HTTP API
#   check-health               this container's processor health (exit 0 or 1)
#   task-processor status ...  the admin command
#   anything else              run as given (e.g. sh, python)
set -eu

if [ "$#" -eq 0 ]; then
    exec run-task-processor
fi

case "$1" in
    -*) exec run-task-processor "$@" ;;
    *) exec "$@" ;;
esac
