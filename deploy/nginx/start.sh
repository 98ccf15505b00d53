#!/bin/sh
# The lb container's command: point nginx's resolver at this container's DNS server (Docker's
# 127.0.0.11, podman's network gateway), then run nginx in the foreground.
set -eu
dns=$(awk '$1 == "nameserver" { print $2; exit }' /etc/resolv.conf)
case "$dns" in *:*) dns="[$dns]" ;; esac  # an IPv6 server needs brackets
echo "resolver ${dns:-127.0.0.11} valid=2s ipv6=off;" > /etc/nginx/resolver.conf
exec nginx -g 'daemon off;'
