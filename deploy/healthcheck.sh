#!/bin/bash
# The image's HEALTHCHECK: `dais-healthcheck [PATH]` GETs PATH (default /healthz) from the local dais
# over bash's /dev/tcp (the slim image has no curl) and exits 0 on HTTP 200. The port comes from
# DAIS_HTTP_ADDR (default 8080); dais must listen on 0.0.0.0 or 127.0.0.1 at that port.
set -u
addr=${DAIS_HTTP_ADDR:-0.0.0.0:8080}
port=${addr##*:}
exec 3<>"/dev/tcp/127.0.0.1/${port}" || exit 1
printf 'GET %s HTTP/1.0\r\nHost: localhost\r\n\r\n' "${1:-/healthz}" >&3
IFS=' ' read -r -t 4 _version status _rest <&3 || exit 1
[ "${status}" = 200 ]
