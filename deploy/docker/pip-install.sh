#!/bin/sh
# pip install "$@" inside a Docker build, with the build secrets when the build was given them:
# pip_ca (a CA bundle, for a proxy that re-signs TLS) and pip_conf (a pip.conf naming the index).
# Secrets are mounted for one RUN and never land in a layer; without them pip uses its defaults.
set -eu
if [ -s /run/secrets/pip_ca ]; then
    export PIP_CERT=/run/secrets/pip_ca
fi
if [ -s /run/secrets/pip_conf ]; then
    export PIP_CONFIG_FILE=/run/secrets/pip_conf
fi
exec pip install "$@"
